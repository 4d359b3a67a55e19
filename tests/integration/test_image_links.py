"""Image links: a configured lifetime shows in `expires` and is enforced; links survive a restart and work on
every replica that shares `IMAGESERVE_URL_SIGNING_KEY` and the data dir."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.constants import TEST_KEY
from tests.support.held_device import BODY, SIMULATED, bearer, simulated_server
from tests.support.server_harness import server_process
from tests.support.usage_fixtures import FakeClock


def expires_of(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["expires"][0])


def on(base_url: str, url: str) -> str:
    """The same link, fetched from another server."""
    parts = urlsplit(url)
    return f"{base_url}{parts.path}?{parts.query}"


def test_a_configured_link_lifetime_shows_in_expires_and_is_enforced(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESERVE_URL_TTL_SECONDS", "120")
    with simulated_server(tmp_path) as server:
        clock = FakeClock(float(int(time.time())))  # whole seconds, as `expires` is
        server.app.state.store.clock = clock  # the store's injectable clock: no waiting for the link to age
        answer = httpx.post(server.api_url + "/images/generations", json=BODY, headers=bearer(TEST_KEY), timeout=60)
        assert answer.status_code == 200, answer.text
        url = answer.json()["data"][0]["url"]
        assert expires_of(url) == int(clock.now) + 120

        clock.advance(120)  # the last second of its life: still served
        assert httpx.get(url, timeout=30).status_code == 200
        clock.advance(1)
        expired = httpx.get(url, timeout=30)
        assert expired.status_code == 410, expired.text
        assert httpx.get(url, timeout=30).status_code in (404, 410)  # and the file is gone


def test_links_survive_a_restart_and_work_on_every_replica_sharing_the_key_and_data_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared-data"
    config = "\n".join([f"[models.{name}]\n" + "\n".join(f"{key} = {json.dumps(value)}" for key, value in table.items())
                        for name, table in SIMULATED.items()]) + "\n"
    env = {"IMAGESERVE_URL_SIGNING_KEY": "a-shared-signing-key-for-the-replicas", "IMAGESERVE_DATA_DIR": str(shared)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    with server_process(tmp_path / "a", config, env) as first, server_process(tmp_path / "b", config, env) as second:
        answer = httpx.post(first + "/v1/images/generations", json=BODY, timeout=60)
        assert answer.status_code == 200, answer.text
        url = answer.json()["data"][0]["url"]
        image = httpx.get(url, timeout=30)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        other = httpx.get(on(second, url), timeout=30)  # the other replica, at the same time
        assert other.status_code == 200, other.text
        assert other.content == image.content
        forged = httpx.get(on(second, url).replace("sig=", "sig=0"), timeout=30)
        assert forged.status_code == 403  # the key still decides: a changed signature is refused
    with server_process(tmp_path / "c", config, env) as restarted:  # both gone; a new process on the same data
        again = httpx.get(on(restarted, url), timeout=30)
        assert again.status_code == 200, again.text
        assert again.content == image.content

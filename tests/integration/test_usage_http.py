"""Quotas and usage through a real server: bursts, 429s, giving back, isolation, restarts, PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.accounts.database import Database
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger
from server.accounts.setup import database_url
from server.app import create_app
from server.cli.serve import check_exposure
from server.settings import Settings, load_settings
from tests.support.pg_harness import postgres
from tests.support.server_harness import RunningServer, running_server
from tests.support.usage_fixtures import FakeClock

ENV_KEY = "sk-usage-env-key"
TINY = {"prompt": "a lighthouse", "model": "tiny-flux", "size": "256x256", "num_inference_steps": 1}
BROKEN = {"prompt": "a lighthouse", "model": "broken"}  # a model whose backend always fails with 503


def new_key(settings: Settings, tier: str = "free", name: str | None = None, **limits: int | None) -> str:
    database = Database(database_url(settings))
    try:
        key, _ = KeyStore(database).create(tier, name, limits.get("per_minute"), limits.get("per_day"))
    finally:
        database.dispose()
    return key


def generate(server: RunningServer, key: str | None, body: dict[str, Any] | None = None,
             **fields: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.api_url + "/images/generations", json={**(body or TINY), **fields}, headers=headers,
                      timeout=300)


def usage(server: RunningServer, key: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.api_url + "/usage", params=params, headers=headers, timeout=60)


def burst(calls: list[Any]) -> list[httpx.Response]:
    """Run the calls at once from as many threads, released together."""
    barrier = threading.Barrier(len(calls))

    def run(call: Any) -> httpx.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("usage-data")
    with running_server(data_dir=data_dir, model_cache=model_cache, api_keys=f"{ENV_KEY}:free",
                        default_model="tiny-flux",
                        models={"broken": {"kind": "sd3", "source": str(data_dir / "no-weights")}}) as running:
        yield running


def assert_rate_limited(response: httpx.Response, daily: bool = False) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["message"]
    assert isinstance(error["retry_after"], int) and error["retry_after"] >= 1
    assert response.headers["Retry-After"] == str(error["retry_after"])
    assert int(response.headers["retry-after-ms"]) <= error["retry_after"] * 1000
    assert (response.headers.get("x-should-retry") == "false") is daily
    return error


def test_burst_on_a_fresh_free_key_admits_exactly_five_images(server: RunningServer) -> None:
    key = new_key(server.settings, name="burst")
    responses = burst([lambda: generate(server, key)] * 12)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 7, [r.text[:200] for r in responses if r.status_code not in (200, 429)]
    for response in responses:
        if response.status_code == 429:
            error = assert_rate_limited(response)
            assert error["retry_after"] <= 60
    report = usage(server, key).json()
    assert report["total"]["images"] == 5 and report["total"]["requests"] == 12
    assert report["limits"]["used_last_minute"] == 5


def test_burst_with_mixed_n_never_goes_over(server: RunningServer) -> None:
    key = new_key(server.settings, name="burst-mixed")
    responses = burst([lambda: generate(server, key, n=2)] * 3 + [lambda: generate(server, key, n=1)] * 3)
    produced = sum(len(r.json()["data"]) for r in responses if r.status_code == 200)
    assert 4 <= produced <= 5
    assert all(r.status_code in (200, 429) for r in responses)


def test_env_keys_are_limited_too(server: RunningServer) -> None:
    assert generate(server, ENV_KEY, n=4).status_code == 200
    assert generate(server, ENV_KEY, n=1).status_code == 200
    assert_rate_limited(generate(server, ENV_KEY, n=1))


def test_failed_generations_give_their_images_back(server: RunningServer) -> None:
    key = new_key(server.settings, name="unlucky")
    for _ in range(6):  # more than the 5/minute: none of them count, since none produced an image
        response = generate(server, key, BROKEN)
        assert response.status_code == 503, response.text
    ok = generate(server, key, n=4)
    assert ok.status_code == 200 and len(ok.json()["data"]) == 4
    assert generate(server, key, n=1).status_code == 200
    assert_rate_limited(generate(server, key, n=1))
    report = usage(server, key).json()
    assert report["total"]["images"] == 5 and report["total"]["requests"] == 9
    assert {m["model"]: m["images"] for m in report["by_model"]} == {"broken": 0, "tiny-flux": 5}


def test_validation_failures_cost_nothing(server: RunningServer) -> None:
    key = new_key(server.settings, name="sloppy")
    for _ in range(7):
        assert generate(server, key, size="999x1").status_code == 400
    assert generate(server, key, n=4).status_code == 200
    assert usage(server, key).json()["total"] == {"images": 4, "cost_usd": 0.0, "requests": 1}


def test_usage_is_private_to_each_key(server: RunningServer) -> None:
    alice = new_key(server.settings, "pro", name="alice")
    bob = new_key(server.settings, "pro", name="bob")
    assert generate(server, alice, n=2).status_code == 200
    mine, theirs = usage(server, alice).json(), usage(server, bob).json()
    assert mine["key"] == {"name": "alice", "tier": "pro"} and mine["total"]["images"] == 2
    assert theirs["key"] == {"name": "bob", "tier": "pro"}
    assert theirs["total"] == {"images": 0, "cost_usd": 0.0, "requests": 0}
    assert theirs["by_model"] == [] and theirs["by_day"] == []
    assert "alice" not in usage(server, bob).text
    day = mine["by_day"][0]["date"]
    assert usage(server, alice, start=day, end=day).json()["total"]["images"] == 2
    assert usage(server, alice, start="2020-01-01", end="2020-01-31").json()["total"]["images"] == 0
    assert usage(server, None).status_code == 401
    assert usage(server, "isk_not-a-key").status_code == 401


def test_usage_at_the_start_of_the_calendar_is_an_empty_range_not_a_crash(server: RunningServer) -> None:
    for params in ({"end": "0001-01-10"}, {"start": "0001-01-01", "end": "0001-01-01"}):
        response = usage(server, ENV_KEY, **params)
        assert response.status_code == 200, response.text
        assert response.json()["total"]["images"] == 0


@pytest.mark.parametrize(("params", "param"), [
    ({"start": "yesterday"}, "start"),
    ({"end": "2026-13-01"}, "end"),
    ({"start": "2026-11-21", "end": "2026-11-01"}, "start"),
    ({"start": "2020-01-01", "end": "2026-01-01"}, "start"),
    ({"from": "2026-11-01"}, "from"),
    ({"start": "0001-01-02", "end": "0001-01-01"}, "start"),
])
def test_usage_query_validation(server: RunningServer, params: dict[str, str], param: str) -> None:
    response = usage(server, ENV_KEY, **params)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request" and response.json()["error"]["param"] == param


def test_daily_limit_survives_a_restart(tmp_path: Path, model_cache: Path) -> None:
    settings = {"data_dir": tmp_path, "model_cache": model_cache, "default_model": "tiny-flux"}
    with running_server(**settings) as first:
        key = new_key(first.settings, name="daily", per_minute=0, per_day=3)
        assert generate(first, key, n=3).status_code == 200
        assert_rate_limited(generate(first, key, n=1), daily=True)
    with running_server(**settings) as second:
        assert_rate_limited(generate(second, key, n=1), daily=True)
        assert usage(second, key).json()["total"]["images"] == 3


def test_wrong_keys_from_one_address_are_slowed_down(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache, api_keys=ENV_KEY,
                        auth_failures_per_minute=3) as server:
        models = server.api_url + "/models"
        for attempt in range(3):
            response = httpx.get(models, headers={"Authorization": f"Bearer isk_guess{attempt}"})
            assert response.status_code == 401
        blocked = httpx.get(models, headers={"Authorization": "Bearer isk_guess-again"})
        error = blocked.json()["error"]
        assert blocked.status_code == 429 and error["type"] == "rate_limit_exceeded"
        assert 1 <= error["retry_after"] <= 60 and blocked.headers["Retry-After"] == str(error["retry_after"])
        # While blocked, even a right key gets 429: otherwise the 401/200 difference would still leak.
        assert httpx.get(models, headers={"Authorization": f"Bearer {ENV_KEY}"}).status_code == 429


def test_open_only_without_any_key_and_only_on_loopback(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache) as server:
        models = server.api_url + "/models"
        assert httpx.get(models).status_code == 200  # no key anywhere: open on loopback
        key = new_key(server.settings, "pro", name="first")
        assert httpx.get(models).status_code == 401  # a key exists now: closed at once
        assert httpx.get(models, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    exposed = load_settings(host="0.0.0.0", data_dir=tmp_path)
    assert check_exposure(exposed) is None  # the database key counts
    empty = load_settings(host="0.0.0.0", data_dir=tmp_path / "empty")
    assert "refusing" in (check_exposure(empty) or "")


def frozen_ledger_app(clock: FakeClock) -> Any:
    """An app factory whose quota gate reads `clock`: minutes pass only when the test says so, however long
    the servers take to start and stop on a loaded machine."""
    def factory(settings: Settings) -> Any:
        return create_app(settings, usage=UsageLedger(Database(database_url(settings)), settings.tiers, clock=clock))
    return factory


def test_postgres_replicas_share_exact_limits_and_survive_restarts(tmp_path: Path, model_cache: Path) -> None:
    url = postgres().create_database()
    clock = FakeClock(time.time())  # the burst and the restart happen inside one minute of this clock
    common = {"model_cache": model_cache, "default_model": "tiny-flux", "database_url": url,
              "app_factory": frozen_ledger_app(clock)}
    with (running_server(data_dir=tmp_path / "a", **common) as a,
          running_server(data_dir=tmp_path / "b", **common) as b):
        # Two loads of a pipeline at once in one process trip over each other in diffusers (separate
        # processes, as real replicas are, do not): load each replica's model first, one at a time.
        warmup = new_key(a.settings, "enterprise", name="warmup")
        for replica in (a, b):
            assert generate(replica, warmup).status_code == 200
        key = new_key(a.settings, name="shared")
        responses = burst([lambda: generate(a, key), lambda: generate(b, key)] * 6)
        assert sorted(r.status_code for r in responses) == [200] * 5 + [429] * 7
        assert usage(b, key).json()["total"]["images"] == 5
    with running_server(data_dir=tmp_path / "c", **common) as c:
        assert_rate_limited(generate(c, key))
        assert usage(c, key).json()["total"] == {"images": 5, "cost_usd": 0.0, "requests": 13}
        clock.advance(61)  # the minute is over for the shared quota, on every replica's clock alike
        assert generate(c, key).status_code == 200

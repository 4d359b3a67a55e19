"""What a client that leaves is billed, read back from the ledger, with a key whose quota is small enough that a
reservation left behind would show: images reserved by a request whose client disconnects mid-generation come
back; images of an answer that was finished when the client left are billed.

The simulated device's batch is held on the device (`tests.support.held_device`), so "mid-generation" is an
event, not a guess about timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from server.accounts.database import Database, usage_ledger
from server.accounts.keys import KeyStore
from server.accounts.setup import database_url
from server.settings import Settings
from tests.support.held_device import BODY, MODEL, HeldDevice, bearer, hold, simulated_server, wait_until
from tests.support.server_harness import RunningServer

QUOTA = 4  # images per minute of the limited key


def limited_key(settings: Settings, name: str) -> str:
    database = Database(database_url(settings))
    try:
        key, _ = KeyStore(database).create("free", name, QUOTA, None)
    finally:
        database.dispose()
    return key


def usage(server: RunningServer, key: str) -> dict[str, Any]:
    response = httpx.get(server.api_url + "/usage", headers=bearer(key), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def ledger_rows(settings: Settings) -> list[Any]:
    database = Database(database_url(settings))
    try:
        with database.read() as conn:
            return list(conn.execute(select(usage_ledger.c.model, usage_ledger.c.requested, usage_ledger.c.images,
                                            usage_ledger.c.status).where(usage_ledger.c.model == MODEL)))
    finally:
        database.dispose()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with simulated_server(tmp_path) as running:
        yield running


@pytest.fixture
def held(server: RunningServer) -> Iterator[HeldDevice]:
    with hold(server) as device:
        yield device


async def test_a_client_that_disconnects_mid_generation_gets_its_reserved_images_back(
        server: RunningServer, held: HeldDevice) -> None:
    key = limited_key(server.settings, "leaves-early")
    url = server.api_url + "/images/generations"
    async with httpx.AsyncClient(timeout=60) as client:
        request = asyncio.ensure_future(client.post(url, json={**BODY, "n": QUOTA}, headers=bearer(key)))
        on_device = await asyncio.to_thread(held.on_device.wait, 60)
        assert on_device and not request.done(), "the batch should be on the device, the client still waiting"
        assert usage(server, key)["limits"]["used_last_minute"] == QUOTA  # reserved while it runs
        request.cancel()  # the client goes away mid-generation: its connection is closed
        with contextlib.suppress(asyncio.CancelledError):
            await request

    # The server cancels the work and settles the request: the reservation is given back. The batch is still
    # held on the device, so nothing here can have been produced or delivered.
    wait_until(lambda: usage(server, key)["limits"]["used_last_minute"] == 0,
               "the cancelled request's reserved images to be given back")
    held.release()
    report = usage(server, key)
    assert report["total"] == {"images": 0, "cost_usd": 0.0, "requests": 1}
    assert [(row.requested, row.images, row.status) for row in ledger_rows(server.settings)
            if row.requested == QUOTA] == [(QUOTA, 0, "cancelled")]

    # The whole quota is free again: a request for all of it is admitted, and the limit still holds after it.
    again = httpx.post(url, json={**BODY, "n": QUOTA}, headers=bearer(key), timeout=60)
    assert again.status_code == 200, again.text
    assert len(again.json()["data"]) == QUOTA
    assert httpx.post(url, json=BODY, headers=bearer(key), timeout=60).status_code == 429
    assert usage(server, key)["total"]["images"] == QUOTA


def test_a_client_that_leaves_while_its_finished_answer_is_sent_is_billed(server: RunningServer) -> None:
    key = limited_key(server.settings, "leaves-late")
    url = server.api_url + "/images/generations"
    # Four 1024x1024 images as base64: megabytes of JSON, so the client can leave long before the end of it.
    body = {**BODY, "n": QUOTA, "size": "1024x1024", "response_format": "b64_json"}
    with httpx.Client(timeout=60) as client, client.stream("POST", url, json=body, headers=bearer(key)) as response:
        assert response.status_code == 200
        first = next(response.iter_raw(65536))
        assert first.startswith(b"{")
        # Leaving the block closes the connection with almost all of the answer unread.

    def settled() -> bool:
        return all(row.status != "pending" for row in ledger_rows(server.settings) if row.requested == QUOTA)

    wait_until(settled, "the request to be settled")
    assert [(row.requested, row.images, row.status) for row in ledger_rows(server.settings)
            if row.requested == QUOTA] == [(QUOTA, QUOTA, "ok")]
    report = usage(server, key)
    assert report["total"] == {"images": QUOTA, "cost_usd": 0.0, "requests": 1}
    assert report["limits"]["used_last_minute"] == QUOTA
    refused = httpx.post(url, json=BODY, headers=bearer(key), timeout=60)  # the quota really was spent
    assert refused.status_code == 429, refused.text

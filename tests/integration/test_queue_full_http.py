"""A full queue answers 503 with `Retry-After` over HTTP, the bound is exact, and the queued work still runs.

The device is held (`tests.support.held_device`) while requests queue behind it, so the queue's content is
known when the next request arrives; nothing depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from tests.support.constants import TEST_KEY
from tests.support.held_device import BODY, MODEL, bearer, hold, simulated_server, wait_until

MAX_QUEUE = 10  # the smallest the setting allows (the largest n)


def queue_depth(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=30).text
    found = re.search(rf'^imageserve_queue_depth\{{model="{MODEL}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


async def test_a_full_queue_is_a_503_with_retry_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESERVE_MAX_QUEUE_IMAGES", str(MAX_QUEUE))
    with simulated_server(tmp_path) as server, hold(server) as device:
        assert server.settings.max_queue_images == MAX_QUEUE
        url, auth = server.api_url + "/images/generations", bearer(TEST_KEY)
        async with httpx.AsyncClient(timeout=60) as client:
            def post(n: int) -> asyncio.Future[httpx.Response]:
                return asyncio.ensure_future(client.post(url, json={**BODY, "n": n}, headers=auth))

            running = post(1)
            assert await asyncio.to_thread(device.on_device.wait, 60)  # one image on the device, none queued
            queued = [post(4), post(4)]
            await asyncio.to_thread(wait_until, lambda: queue_depth(server.base_url) == 8, "8 images queued")

            refused = await client.post(url, json={**BODY, "n": 4}, headers=auth)  # 8 + 4 > 10
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["message"] and "queue" in error["message"].lower()
            assert int(refused.headers["Retry-After"]) >= 1
            assert queue_depth(server.base_url) == 8  # refused whole: none of its images were queued

            queued.append(post(2))  # 8 + 2 = 10: exactly full is still admitted
            await asyncio.to_thread(wait_until, lambda: queue_depth(server.base_url) == 10, "10 images queued")
            assert (await client.post(url, json=BODY, headers=auth)).status_code == 503  # 10 + 1 > 10

            device.release()
            answers = await asyncio.gather(running, *queued)
        assert [(a.status_code, len(a.json()["data"])) for a in answers] == [(200, 1), (200, 4), (200, 4), (200, 2)]
        assert queue_depth(server.base_url) == 0

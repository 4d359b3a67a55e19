"""The image store's own expiry sweep: it runs between `start()` and `stop()`, and survives disk errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from server.media.links import LinkSigner
from server.media.storage import FileImageStore


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_the_sweep_deletes_expired_images_until_stopped(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = FileImageStore(tmp_path / "images", LinkSigner(b"k" * 32), "http://127.0.0.1:8000", 60,
                           clock=lambda: now[0], sweep_every=0.01)
    store.save(b"png", "png", "req_1")
    await store.start()
    try:
        await asyncio.sleep(0.05)
        assert len(list(store.directory.iterdir())) == 1  # not expired yet
        now[0] += 61
        await _until(lambda: not any(store.directory.iterdir()))
    finally:
        await store.stop()
    store.save(b"png", "png", "req_2")
    now[0] += 61
    await asyncio.sleep(0.05)
    assert len(list(store.directory.iterdir())) == 1  # stopped: nothing sweeps any more
    await store.stop()  # a second stop is harmless


async def test_a_failed_sweep_is_logged_and_the_next_one_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    store = FileImageStore(tmp_path / "images", LinkSigner(b"k" * 32), "http://127.0.0.1:8000", 60, sweep_every=0.01)
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise PermissionError("read-only file system")
        return 0

    monkeypatch.setattr(store, "delete_expired", flaky)
    with caplog.at_level(logging.WARNING, logger="server.media.sweeping"):
        await store.start()
        try:
            await _until(lambda: calls >= 2)
        finally:
            await store.stop()
    assert "could not sweep expired images in files in" in caplog.text and "read-only file system" in caplog.text

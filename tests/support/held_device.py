"""A simulated local model whose batches can be held on the device until the test releases them.

The simulated runner spends the rest of each batch's device time in its injectable `sleep`; `hold(server)`
replaces it on the loaded runner with a wait on an event, so "a batch is on the device" is something a test
waits for, not a guess about timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import RunningServer, running_server

MODEL = "held-sim"
# One step of 0.5 s per batch: making 256x256 pixels takes far less, so every batch reaches `sleep`.
SIMULATED = {MODEL: {"kind": "simulated", "step_seconds_base": 0.5, "step_seconds_per_megapixel": 0.0,
                     "time_scale": 1.0, "default_steps": 1, "max_batch_images": 4, "max_images": 4,
                     "sizes": ["256x256"], "custom_sizes": True, "extra_params": ["seed", "num_inference_steps"]}}
BODY = {"prompt": "a lighthouse", "model": MODEL, "size": "256x256"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for: {what}")
        time.sleep(0.02)


class HeldDevice:
    """Stands in for the simulated runner's `sleep`: each batch stays on the device until `release()`."""

    def __init__(self) -> None:
        self.on_device, self._release = threading.Event(), threading.Event()

    def __call__(self, seconds: float) -> None:
        self.on_device.set()
        self._release.wait(60)

    def release(self) -> None:
        self._release.set()


@contextmanager
def simulated_server(data_dir: Path, **overrides: Any) -> Iterator[RunningServer]:
    """A server with the `held-sim` model, loaded (one request with the unlimited TEST_KEY), so it can be held."""
    with running_server(data_dir=data_dir, model_cache=data_dir / "cache", api_keys=TEST_KEYS, models=SIMULATED,
                        **overrides) as running:
        warm = httpx.post(running.api_url + "/images/generations", json=BODY, headers=bearer(TEST_KEY), timeout=60)
        assert warm.status_code == 200, warm.text
        yield running


@contextmanager
def hold(server: RunningServer) -> Iterator[HeldDevice]:
    device = HeldDevice()
    next(iter(server.app.state.backends[MODEL]._runners.values()))._sleep = device  # the runner's injectable sleep
    try:
        yield device
    finally:
        device.release()

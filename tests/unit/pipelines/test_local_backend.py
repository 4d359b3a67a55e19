"""LocalBackend's loading rules, with a fake device and runner (no torch work)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.backend import LocalBackend
from pipelines.errors import ModelUnavailable
from pipelines.local import DiffusersDevice
from pipelines.scheduler import BatchKey, ImageJobSpec
from pipelines.types import GenerationRequest
from server.backends.factory import local_model_options
from server.registry import build_registry
from server.settings import load_settings
from tests.support.server_harness import running_server


class SlowLoadingRunner:
    def __init__(self, gate: asyncio.Event, fail: bool = False) -> None:
        self.gate = gate
        self.fail = fail
        self.loaded = False
        self.closed = False
        self.optimizations = None
        self.load_started = asyncio.Event()

    async def load(self) -> None:
        self.load_started.set()
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("weights are corrupt")
        self.loaded = True

    async def run_batch(self, key: BatchKey, specs: Sequence[ImageJobSpec]) -> list[Any]:
        return [spec.seed for spec in specs]

    def close(self) -> None:
        self.closed = True


class CountingDevice(DiffusersDevice):
    """The real diffusers device's readiness and description, with a runner that only counts and waits."""

    def __init__(self, *args: Any, fail: bool = False) -> None:
        super().__init__(*args)
        self.gate = asyncio.Event()
        self.runners: list[SlowLoadingRunner] = []
        self.fail = fail

    def create_runner(self, label: str) -> SlowLoadingRunner:
        runner = SlowLoadingRunner(self.gate, self.fail)
        self.runners.append(runner)
        return runner


def _backend(fail: bool = False, **settings: Any) -> LocalBackend:
    loaded = load_settings(**settings)
    spec, options = build_registry(loaded).get("tiny-flux"), local_model_options(loaded, "tiny-flux")
    return LocalBackend(spec, options, CountingDevice(spec, options, fail=fail))


def _request(n: int = 1) -> GenerationRequest:
    return GenerationRequest(request_id="req", model="tiny-flux", prompt="p", n=n, width=256, height=256, seed=5)


async def test_a_client_leaving_during_the_first_load_neither_cancels_nor_repeats_it() -> None:
    backend = _backend()
    first = asyncio.create_task(backend.generate(_request()))
    await asyncio.sleep(0.01)
    assert len(backend.device.runners) == 1
    await backend.device.runners[0].load_started.wait()
    first.cancel()  # the client disconnected while the weights were loading
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(backend.generate(_request(n=2)))
    await asyncio.sleep(0.01)
    backend.device.gate.set()
    result = await second
    assert [image.pixels for image in result.images] == [5, 6]
    runners = backend.device.runners
    assert len(runners) == 1 and runners[0].loaded and not runners[0].closed
    await backend.close()


async def test_concurrent_first_requests_share_one_load() -> None:
    backend = _backend()
    waiting = [asyncio.create_task(backend.generate(_request())) for _ in range(5)]
    await asyncio.sleep(0.01)
    backend.device.gate.set()
    await asyncio.gather(*waiting)
    assert len(backend.device.runners) == 1
    await backend.close()


async def test_a_failed_load_is_reported_and_not_retried_by_every_request() -> None:
    backend = _backend(fail=True)
    backend.device.gate.set()
    for _ in range(3):
        with pytest.raises(ModelUnavailable, match="failed to load"):
            await backend.generate(_request())
    assert len(backend.device.runners) == 1 and backend.device.runners[0].closed
    assert backend.readiness().ready is False and "RuntimeError" in backend.readiness().detail
    backend._retry_load_after = 0.0  # the retry delay has passed
    backend.device.fail = False
    await backend.generate(_request())
    assert len(backend.device.runners) == 2 and backend.readiness().ready
    await backend.close()


def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_present(), reason="checks the behaviour on a machine without CUDA")
def test_device_cuda_without_cuda_is_a_clear_503_and_models_still_list(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache, device="cuda") as server:
        listed = httpx.get(server.api_url + "/models/tiny-flux")
        assert listed.status_code == 200 and listed.json()["device"] == "unavailable"
        response = httpx.post(server.api_url + "/images/generations",
                              json={"prompt": "x", "model": "tiny-flux", "size": "256x256"}, timeout=60)
        assert response.status_code == 503
        assert "sees no CUDA device" in response.json()["error"]["message"]

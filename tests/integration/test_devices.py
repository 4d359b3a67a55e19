"""One model on several devices, through a real server: simulated cards here, `cuda:N` where there are GPUs."""

from __future__ import annotations

import asyncio
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from pydantic import ValidationError

from pipelines import device as device_module
from pipelines.backend import LocalBackend
from pipelines.errors import ModelUnavailable
from pipelines.local import DiffusersDevice
from pipelines.options import DeviceProfile
from pipelines.runner import ModelLoadError
from pipelines.scheduler import BatchKey, ImageJobSpec
from pipelines.simulated import SimulatedDevice, SimulatedRunner
from pipelines.types import GenerationRequest
from server.backends.factory import build_backend, local_model_options
from server.registry import build_registry
from server.settings import load_settings
from tests.support.constants import REPO_ROOT
from tests.support.server_harness import running_server

PROFILE = tomllib.loads((REPO_ROOT / "benchmarks/profiles/flux-dev-sim-h100.toml").read_text())["models"][
    "flux-dev-sim-h100"]


def sim_model(devices: Any, time_scale: float = 0.002) -> dict[str, Any]:
    return {**PROFILE, "time_scale": time_scale, "devices": devices}


async def test_two_simulated_cards_both_take_work_and_are_listed(tmp_path: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=tmp_path / "cache", batch_wait_ms=0,
                        models={"flux-sim": sim_model(["sim0", "sim1"])}) as server:
        client = AsyncOpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
        responses = await asyncio.gather(*(
            client.images.generate(model="flux-sim", prompt=f"p{i}", size="256x256", response_format="b64_json",
                                   extra_body={"seed": i}) for i in range(16)))
        await client.close()
        card = httpx.get(server.api_url + "/models/flux-sim").json()
        metrics = httpx.get(server.base_url + "/metrics").text
    devices = {r.model_extra["perf"]["device"] for r in responses}
    assert devices == {"sim0", "sim1"}  # 16 images, batches of at most 4: both cards ran some
    listed = {entry["device"]: entry for entry in card["devices"]}
    assert set(listed) == {"sim0", "sim1"}
    assert all(entry["state"] == "idle" and entry["batches"] >= 1 for entry in listed.values())
    assert sum(entry["images"] for entry in listed.values()) == 16
    for label in ("sim0", "sim1"):
        assert f'imageserve_device_batches_total{{device="{label}",model="flux-sim"}} ' in metrics


async def test_a_model_on_one_default_device_says_which_in_perf(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache, device="cpu",
                        models={"tiny-flux": {"devices": ["cpu"]}}) as server:
        client = AsyncOpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
        response = await client.images.generate(model="tiny-flux", prompt="a fox", size="256x256",
                                                response_format="b64_json")
        await client.close()
        card = httpx.get(server.api_url + "/models/tiny-flux").json()
    assert response.model_extra["perf"]["device"] == "cpu"
    assert card["device"] == "cpu" and [d["device"] for d in card["devices"]] == ["cpu"]


def test_models_sharing_a_simulated_card_take_turns() -> None:
    """Two runners on the label "shared" never run at once; a model's default card is its own."""
    spans: list[tuple[float, float]] = []
    guard = threading.Lock()

    def recording_sleep(seconds: float) -> None:
        started = time.perf_counter()
        time.sleep(seconds)
        with guard:
            spans.append((started, time.perf_counter()))

    profile = DeviceProfile(0.01, 0.0)  # 3 steps: a 30 ms batch, nearly all of it the recorded sleep
    runners = [SimulatedRunner(name, profile, label="shared", sleep=recording_sleep) for name in ("a", "b")]

    async def both() -> None:
        key = BatchKey("m", 64, 64, steps=3, guidance=0.0)
        await asyncio.gather(*(runner.run_batch(key, [ImageJobSpec("p", 1)]) for runner in runners for _ in range(3)))

    asyncio.run(both())
    for runner in runners:
        runner.close()
    spans.sort()
    assert len(spans) == 6
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:], strict=False))  # no overlap
    own = SimulatedRunner("x", profile)
    assert own.label == "sim-x"
    own.close()


class HalfBrokenDevice(SimulatedDevice):
    """Two simulated cards, one of which cannot load."""

    def create_runner(self, label: str) -> SimulatedRunner:
        runner = super().create_runner(label)
        if label == "broken":
            async def fail() -> None:
                raise ModelLoadError("card fell off the bus")
            runner.load = fail  # type: ignore[method-assign]
        return runner


def _sim_backend(devices: Sequence[str], device_cls: type[SimulatedDevice] = HalfBrokenDevice) -> LocalBackend:
    settings = load_settings(models={"flux-sim": sim_model(list(devices))})
    spec, options = build_registry(settings).get("flux-sim"), local_model_options(settings, "flux-sim",
                                                                                     simulated=True)
    return LocalBackend(spec, options, device_cls(spec, options))


def _request(n: int = 1) -> GenerationRequest:
    return GenerationRequest(request_id="r", model="flux-sim", prompt="p", n=n, width=64, height=64, seed=3)


async def test_a_device_that_fails_to_load_is_reported_and_the_others_serve() -> None:
    backend = _sim_backend(["good", "broken"])
    results = [await backend.generate(_request(2)) for _ in range(3)]
    assert {result.device for result in results} == {"good"}
    devices = {entry["device"]: entry for entry in backend.describe()["devices"]}
    assert devices["broken"]["state"] == "failed" and "fell off the bus" in devices["broken"]["error"]
    assert devices["good"]["state"] == "idle" and devices["good"]["images"] == 6
    assert backend.readiness().ready
    await backend.close()


async def test_a_model_whose_every_device_fails_is_unavailable() -> None:
    backend = _sim_backend(["broken"])
    with pytest.raises(ModelUnavailable, match="failed to load"):
        await backend.generate(_request())
    assert not backend.readiness().ready and "card fell off the bus" in backend.readiness().detail
    assert backend.describe()["devices"] == [{"device": "broken", "state": "failed", "error": "card fell off the bus"}]
    await backend.close()


def test_device_settings_are_checked_when_the_settings_load() -> None:
    with pytest.raises(ValidationError, match="twice"):
        load_settings(models={"m": {"kind": "simulated", "devices": ["sim0", "sim0"]}})
    with pytest.raises(ValidationError, match="at least one"):
        load_settings(models={"m": {"kind": "simulated", "devices": []}})
    with pytest.raises(ValidationError, match="pattern"):
        load_settings(models={"m": {"kind": "simulated", "devices": ["sim 0; rm"]}})
    assert load_settings(models={"m": {"kind": "simulated", "devices": "all"}}).models["m"].devices == "all"


async def test_devices_this_machine_does_not_have_make_the_model_unavailable(tmp_path: Path) -> None:
    settings = load_settings(model_cache=tmp_path, models={
        "sim-all": {"kind": "simulated", "devices": "all"},
        "tiny-flux": {"devices": ["cuda:7"]},
        "tiny-sd3": {"devices": ["tpu0"]},
    })
    registry = build_registry(settings)
    sim = build_backend(registry.get("sim-all"), settings)
    assert not sim.readiness().ready and "simulated cards need labels" in sim.readiness().detail
    with pytest.raises(ModelUnavailable, match="simulated cards need labels"):
        await sim.generate(_request())
    tiny = LocalBackend(registry.get("tiny-flux"), local_model_options(settings, "tiny-flux"),
                        DiffusersDevice(registry.get("tiny-flux"), local_model_options(settings, "tiny-flux")))
    if not device_module.cuda_available():
        assert "device 'cuda:7' does not exist here" in tiny.readiness().detail
    odd = DiffusersDevice(registry.get("tiny-sd3"), local_model_options(settings, "tiny-sd3"))
    with pytest.raises(ValueError, match="not 'cpu', 'cuda' or 'cuda:N'"):
        odd.labels()


def test_all_means_every_cuda_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without GPUs here, torch's answers are replaced: two CUDA devices, and "all" runs on both."""
    import pipelines.local as local_module

    monkeypatch.setattr(device_module, "cuda_available", lambda: True)
    monkeypatch.setattr(device_module, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(local_module, "cuda_device_count", lambda: 2)
    settings = load_settings(model_cache=tmp_path, models={"tiny-flux": {"devices": "all"}})
    options = local_model_options(settings, "tiny-flux")
    device = DiffusersDevice(build_registry(settings).get("tiny-flux"), options)
    assert device.labels() == ("cuda:0", "cuda:1")
    assert [device.placement(label).device for label in device.labels()] == ["cuda:0", "cuda:1"]
    assert device.placement("cuda:1").on_cuda and device.placement("cuda:1").dtype == "bf16"
    with pytest.raises(ValueError, match="torch sees 2 CUDA devices"):
        device_module.choose_placement("cuda:2", "bf16")
    assert device_module.device_lock("cuda") is device_module.device_lock("cuda:0")
    assert device_module.device_lock("cuda:1") is not device_module.device_lock("cuda:0")

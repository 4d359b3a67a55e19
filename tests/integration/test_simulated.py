"""The simulated device: its device-time formula, its images, and batching through a real server."""

from __future__ import annotations

import asyncio
import base64
import io
import tomllib
from pathlib import Path

import numpy as np
import pytest
from openai import AsyncOpenAI
from PIL import Image

from pipelines.backend import LocalBackend
from pipelines.scheduler import BatchKey, ImageJobSpec
from pipelines.simulated import FLUX_DEV_H100, DeviceProfile, SimulatedDevice, SimulatedRunner, synthesize_pixels
from server.backends.factory import build_backend
from server.registry import build_registry
from server.settings import load_settings
from tests.support.constants import REPO_ROOT
from tests.support.server_harness import running_server

PROFILE_TOML = REPO_ROOT / "benchmarks" / "profiles" / "flux-dev-sim-h100.toml"


def test_device_time_formula_uses_total_megapixels_and_time_scale() -> None:
    profile = DeviceProfile(step_seconds_base=0.5, step_seconds_per_megapixel=2.0, time_scale=0.1)
    # 3 images of 1000x500 = 1.5 MP; 10 steps * (0.5 + 2.0 * 1.5) * 0.1
    assert profile.batch_seconds(10, 1000, 500, 3) == pytest.approx(3.5)
    assert profile.images_per_second(10, 1000, 500, 3) == pytest.approx(3 / 3.5)


def test_flux_h100_profile_matches_the_published_numbers() -> None:
    one = FLUX_DEV_H100.batch_seconds(28, 1024, 1024, 1)
    assert one == pytest.approx(6.6, abs=0.02)
    gains = [FLUX_DEV_H100.images_per_second(28, 1024, 1024, b) / (1 / one) for b in (2, 4, 64)]
    assert all(1.05 <= gain <= 1.15 for gain in gains)


def test_profile_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        DeviceProfile(0.1, 0.1, time_scale=0)


def test_runner_sleeps_exactly_the_batch_device_time_and_returns_exact_sizes() -> None:
    slept: list[float] = []
    profile = DeviceProfile(step_seconds_base=0.01, step_seconds_per_megapixel=0.2, time_scale=0.5)
    runner = SimulatedRunner("t", profile, sleep=slept.append, clock=lambda: 100.0)  # frozen clock
    key = BatchKey("sim", 320, 192, steps=7, guidance=0.0)
    images = runner.run_sync(key, [ImageJobSpec("a", seed) for seed in (1, 2, 3)])
    runner.close()
    assert slept == [pytest.approx(7 * (0.01 + 0.2 * 3 * 320 * 192 / 1e6) * 0.5)]
    assert [(image.shape, image.dtype) for image in images] == [((192, 320, 3), np.uint8)] * 3


def test_images_are_deterministic_per_seed() -> None:
    first, again, other = (synthesize_pixels(64, 48, seed).tobytes() for seed in (7, 7, 8))
    assert first == again
    assert first != other


def test_toml_profile_loads_as_a_simulated_local_model() -> None:
    settings = load_settings(PROFILE_TOML)
    spec = build_registry(settings).get("flux-dev-sim-h100")
    assert spec is not None and spec.kind == "simulated" and spec.is_local
    assert spec.default_steps == 28 and "seed" in spec.extra_params
    backend = build_backend(spec, settings)
    assert isinstance(backend, LocalBackend) and isinstance(backend.device, SimulatedDevice)
    assert backend.readiness().ready
    assert backend.device.profile == FLUX_DEV_H100


def _sim_models(time_scale: float) -> dict[str, dict[str, object]]:
    table = tomllib.loads(PROFILE_TOML.read_text())["models"]["flux-dev-sim-h100"]
    return {"flux-sim": {**table, "time_scale": time_scale}}


async def test_server_returns_exact_sizes_and_batches_concurrent_requests(tmp_path: Path) -> None:
    # 1/100 of real time; a long batch wait, so the concurrent requests meet even on a busy machine.
    with running_server(data_dir=tmp_path, model_cache=tmp_path / "cache", models=_sim_models(0.01),
                        batch_wait_ms=1000) as server:
        client = AsyncOpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
        responses = await asyncio.gather(*(
            client.images.generate(model="flux-sim", prompt=f"p{i}", size="256x384", response_format="b64_json",
                                   extra_body={"seed": 100 + i})
            for i in range(8)
        ))
        again = await client.images.generate(model="flux-sim", prompt="p0", size="256x384",
                                             response_format="b64_json", extra_body={"seed": 100})
        await client.close()
    decoded = [base64.b64decode(r.data[0].b64_json) for r in responses]
    assert all(Image.open(io.BytesIO(data)).size == (256, 384) for data in decoded)
    perfs = [r.model_extra["perf"] for r in responses]
    assert max(perf["batch_size"] for perf in perfs) > 1
    assert all(perf["device_ms"] > 0 for perf in perfs)
    assert [r.data[0].model_extra["seed"] for r in responses] == [100 + i for i in range(8)]
    # The same seed gives the same pixels, alone or in a batch.
    assert base64.b64decode(again.data[0].b64_json) == decoded[0]

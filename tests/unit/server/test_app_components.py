"""The app's own components: the model backends (start, preload, close) and their metrics wiring."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pipelines.errors import ModelUnavailable
from pipelines.types import BackendStats, Readiness
from server.app import ModelBackends, build_backends
from server.metrics import Metrics
from server.registry import ModelRegistry, ModelSpec, build_registry
from server.settings import load_settings


class FakeBackend:
    def __init__(self, log: list[str], name: str, fail_preload: bool = False, queued: int = 0) -> None:
        self.log, self.name, self.fail_preload, self.queued = log, name, fail_preload, queued

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def preload(self) -> None:
        if self.fail_preload:
            raise ModelUnavailable("no weights")
        self.log.append(f"preload {self.name}")

    async def close(self) -> None:
        self.log.append(f"close {self.name}")

    def readiness(self) -> Readiness:
        return Readiness(True)

    def describe(self) -> dict[str, Any]:
        return {}

    def stats(self) -> BackendStats:
        return BackendStats(queued_images=self.queued, dropped_jobs=1)

    async def generate(self, request: Any) -> Any:
        raise NotImplementedError


def _spec(model_id: str, provider: str) -> ModelSpec:
    return ModelSpec(id=model_id, provider=provider, kind="x", sizes=("1024x1024",), max_images=1, price_usd=0.0)


REGISTRY = ModelRegistry([_spec("local-a", "local"), _spec("local-b", "local"), _spec("vendor", "openai")])


async def test_backends_start_preload_what_is_configured_and_close(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    backends = {name: FakeBackend(log, name, fail_preload=name == "local-b") for name in REGISTRY.ids()}
    component = ModelBackends(backends, REGISTRY, ["local-a", "local-b", "vendor", "unknown"], warmup=set())
    with caplog.at_level(logging.WARNING):
        await component.start()
    assert log == ["start local-a", "start local-b", "start vendor", "preload local-a"]
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["preload of local-b failed: no weights",
                        "preload: 'vendor' is not a local model; ignored",
                        "preload: 'unknown' is not a local model; ignored"]
    await component.stop()
    assert log[4:] == ["close local-a", "close local-b", "close vendor"]


async def test_warm_up_without_preload_is_warned_about_for_local_models_only(
        caplog: pytest.LogCaptureFixture) -> None:
    backends = {name: FakeBackend([], name) for name in REGISTRY.ids()}
    component = ModelBackends(backends, REGISTRY, ["local-a"], warmup={"local-a", "local-b", "vendor"})
    with caplog.at_level(logging.WARNING):
        await component.start()
    assert [record.getMessage() for record in caplog.records] == [
        "model local-b has warmup_sizes but is not in IMAGESERVE_PRELOAD: its first request will wait for the "
        "load and the warm-up"]


def test_queue_depth_and_dropped_jobs_come_from_each_watched_backends_stats() -> None:
    metrics = Metrics()
    metrics.attach({"local-a": FakeBackend([], "local-a", queued=3)})
    assert metrics.registry.get_sample_value("imageserve_queue_depth", {"model": "local-a"}) == 3
    assert metrics.registry.get_sample_value("imageserve_dropped_jobs_total", {"model": "local-a"}) == 1
    assert metrics.registry.get_sample_value("imageserve_queue_depth", {"model": "vendor"}) is None


async def test_only_local_models_get_batch_and_queue_series(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, model_cache=tmp_path / "cache")
    registry = build_registry(settings)
    metrics = Metrics()
    backends = build_backends(registry, settings, metrics)
    try:
        assert set(backends) == set(registry.ids())
        for spec in registry:
            expected = 0 if spec.is_local else None
            assert metrics.registry.get_sample_value("imageserve_batch_size_count", {"model": spec.id}) == expected
            assert metrics.registry.get_sample_value("imageserve_queue_depth", {"model": spec.id}) == expected
    finally:
        for backend in backends.values():
            await backend.close()

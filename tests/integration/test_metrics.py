"""`GET /metrics`: Prometheus series after real requests, and one registry per app."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.errors import RateLimitExceeded
from server.metrics import Metrics
from tests.support.server_harness import running_server

SIM_MODEL = {"kind": "simulated", "time_scale": 0.005, "default_steps": 4, "custom_sizes": True,
             "max_batch_images": 4, "price_usd": 0.002}


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_expose_requests_latency_queue_batches_device_images_and_cost(tmp_path: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=tmp_path / "cache", models={"sim": SIM_MODEL}) as server:
        with httpx.Client(base_url=server.api_url, timeout=60) as client:
            for n in (1, 3):
                response = client.post("/images/generations",
                                       json={"model": "sim", "prompt": "x", "n": n, "size": "256x256"})
                assert response.status_code == 200, response.text
            too_many = client.post("/images/generations", json={"model": "sim", "prompt": "x", "n": 5})
            assert too_many.status_code == 400
        scrape = httpx.get(server.base_url + "/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    samples = _samples(scrape.text)

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("imageserve_requests_total", model="sim", status="ok") == 2
    # Rejections never reach a model; they are counted by route and error type.
    assert value("imageserve_http_errors_total", route="/v1/images/generations", type="invalid_request") == 1
    assert value("imageserve_dropped_jobs_total", model="sim") == 0
    assert value("imageserve_request_latency_seconds_count", model="sim", status="ok") == 2
    assert value("imageserve_images_total", model="sim") == 4
    assert abs(value("imageserve_cost_usd_total", model="sim") - 0.008) < 1e-9
    assert value("imageserve_batch_size_count", model="sim") == 2
    assert value("imageserve_batch_size_sum", model="sim") == 4
    assert value("imageserve_device_busy_seconds_total", model="sim", device="sim-sim") > 0
    assert value("imageserve_device_batches_total", model="sim", device="sim-sim") == 2
    assert value("imageserve_queue_depth", model="sim") == 0


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    first.batch_observer("m")("cuda:0", 2, 0.5)
    assert first.registry.get_sample_value("imageserve_batch_size_count", {"model": "m"}) == 1
    assert second.registry.get_sample_value("imageserve_batch_size_count", {"model": "m"}) is None


class _RefuseAll:
    """A usage gate that turns every request away, as an exhausted quota would."""

    async def admit(self, principal: object, request: object) -> None:
        raise RateLimitExceeded("quota used up", retry_after=30)

    async def settle(self, outcome: object, reserved: int) -> None:
        return None


def test_requests_turned_away_at_admission_are_counted(tmp_path: Path) -> None:
    with running_server(app_factory=lambda settings: create_app(settings, usage=_RefuseAll()), data_dir=tmp_path,
                        model_cache=tmp_path / "cache", models={"sim": SIM_MODEL}) as server:
        response = httpx.post(server.api_url + "/images/generations", json={"model": "sim", "prompt": "x"})
        assert response.status_code == 429
        text = httpx.get(server.base_url + "/metrics").text
    assert _samples(text)[("imageserve_requests_total",
                           frozenset({"model": "sim", "status": "rate_limit_exceeded"}.items()))] == 1


class _SlowGate:
    """A usage gate still deciding (a database busy with other admissions) when the client gives up."""

    async def admit(self, principal: object, request: object) -> None:
        await asyncio.sleep(30)

    async def settle(self, outcome: object, reserved: int) -> None:
        return None


def test_a_client_that_leaves_during_admission_is_counted_as_cancelled(tmp_path: Path) -> None:
    with running_server(app_factory=lambda settings: create_app(settings, usage=_SlowGate()), data_dir=tmp_path,
                        model_cache=tmp_path / "cache", models={"sim": SIM_MODEL}) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.api_url + "/images/generations", json={"model": "sim", "prompt": "x"}, timeout=0.5)
        cancelled = ("imageserve_requests_total", frozenset({"model": "sim", "status": "cancelled"}.items()))
        for _ in range(100):  # the server notices the disconnect on its own schedule
            if _samples(httpx.get(server.base_url + "/metrics").text).get(cancelled) == 1:
                break
            time.sleep(0.05)
        assert _samples(httpx.get(server.base_url + "/metrics").text).get(cancelled) == 1


def test_gpu_memory_is_reported_where_cuda_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: a stand-in `torch` module shows the collector reads what torch.cuda reports."""
    cuda = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, device_count=lambda: 1,
                           memory_allocated=lambda index: 3e9, memory_reserved=lambda index: 4e9,
                           get_device_properties=lambda index: SimpleNamespace(total_memory=80e9))
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    metrics = Metrics()
    metrics.attach({})
    assert metrics.registry.get_sample_value("imageserve_gpu_memory_allocated_bytes", {"device": "0"}) == 3e9
    assert metrics.registry.get_sample_value("imageserve_gpu_memory_total_bytes", {"device": "0"}) == 80e9
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False)))
    assert metrics.registry.get_sample_value("imageserve_gpu_memory_allocated_bytes", {"device": "0"}) is None

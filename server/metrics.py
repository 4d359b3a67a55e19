"""`GET /metrics` in the Prometheus text format.

Each app gets its own `CollectorRegistry` (never the global default), so several servers in one process
(the tests) do not clash. Counters are fed by two hooks: the service's outcome per request
(`ImageService(on_outcome=...)`) and, per local model, the `batch_observer` its backend is built with; the
per-stage times of each successful image request come from the HTTP edge (`server.api.timing`).
Queue depth and dropped jobs (each backend's `stats()`) and GPU memory are read when scraped.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipelines.types import BatchObserver, ImageBackend

if TYPE_CHECKING:
    from server.accounts.outcome import Outcome

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# From a key lookup (under a millisecond) to a vendor or a big batch on a CPU (minutes).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0, 300.0, 600.0)


class _LiveCollector(Collector):
    """Values read at scrape time: each watched backend's queue, GPU memory where CUDA is in use."""

    def __init__(self, backends: Mapping[str, ImageBackend]) -> None:
        self._backends = backends

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = {model_id: backend.stats() for model_id, backend in self._backends.items()}
        queue = GaugeMetricFamily("imageserve_queue_depth", "Images queued for the device, per local model.",
                                  labels=["model"])
        for model_id, current in stats.items():
            queue.add_metric([model_id], current.queued_images)
        yield queue
        dropped = CounterMetricFamily("imageserve_dropped_jobs", "Queued images dropped before running because "
                                      "their client went away, per local model.", labels=["model"])
        for model_id, current in stats.items():
            dropped.add_metric([model_id], current.dropped_jobs)
        yield dropped
        yield from _gpu_memory()


def _gpu_memory() -> Iterator[GaugeMetricFamily]:
    """Only where this process already uses CUDA: never imports torch, never initialises a device."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return
        allocated = GaugeMetricFamily("imageserve_gpu_memory_allocated_bytes", "Memory held by tensors.",
                                      labels=["device"])
        reserved = GaugeMetricFamily("imageserve_gpu_memory_reserved_bytes", "Memory reserved by the allocator.",
                                     labels=["device"])
        total = GaugeMetricFamily("imageserve_gpu_memory_total_bytes", "Memory of the device.", labels=["device"])
        for index in range(torch.cuda.device_count()):
            label = [str(index)]
            allocated.add_metric(label, torch.cuda.memory_allocated(index))
            reserved.add_metric(label, torch.cuda.memory_reserved(index))
            total.add_metric(label, torch.cuda.get_device_properties(index).total_memory)
    except Exception as exc:  # noqa: BLE001 - a scrape must never fail because of the GPU
        logger.debug("GPU memory metrics unavailable: %s", exc)
        return
    yield from (allocated, reserved, total)


class Metrics:
    """The server's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("imageserve_requests", "Image requests by model and status ('ok' or an error type).",
                                ["model", "status"], registry=r)
        self.latency = Histogram("imageserve_request_latency_seconds", "Server-side latency of image requests.",
                                 ["model", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("imageserve_images", "Images delivered, by model.", ["model"], registry=r)
        self.cost = Counter("imageserve_cost_usd", "Cost of delivered images in USD, by model.", ["model"], registry=r)
        self.batch_size = Histogram("imageserve_batch_size", "Images per device batch, by local model.",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.device_busy = Counter("imageserve_device_busy_seconds", "Seconds each device spent running the "
                                   "model's batches, by local model and device.", ["model", "device"], registry=r)
        self.device_batches = Counter("imageserve_device_batches", "Batches each device ran, by local model and "
                                      "device.", ["model", "device"], registry=r)
        self.errors = Counter("imageserve_http_errors", "Error answers on every route, by route and error type "
                              "(bad input, bad key and the like included, which never reach a model).",
                              ["route", "type"], registry=r)
        self.stages = Histogram("imageserve_stage_seconds", "Where the time of a successful image request went, "
                                "by model and stage (auth, queue, device, upstream, encode, store, total; the "
                                "stages of its Server-Timing header).", ["model", "stage"],
                                buckets=STAGE_BUCKETS, registry=r)

    def attach(self, backends: Mapping[str, ImageBackend]) -> None:
        """Report these backends' queues (their `stats()`) at scrape time: the local models', which have one."""
        self.registry.register(_LiveCollector(backends))

    def batch_observer(self, model_id: str, devices: tuple[str, ...] = ()) -> BatchObserver:
        """What a local model's backend is built with to report each batch it runs (device, images, device
        seconds). Its series (those of `devices`, if known) appear, at zero, as soon as this is asked for."""
        batch_size = self.batch_size.labels(model_id)
        for device in devices:
            self.device_busy.labels(model_id, device)
            self.device_batches.labels(model_id, device)

        def observe(device: str, images: int, device_seconds: float) -> None:
            batch_size.observe(images)
            self.device_busy.labels(model_id, device).inc(device_seconds)
            self.device_batches.labels(model_id, device).inc()

        return observe

    def observe_outcome(self, outcome: Outcome) -> None:
        self.requests.labels(outcome.model, outcome.status).inc()
        self.latency.labels(outcome.model, outcome.status).observe(outcome.latency_ms / 1000)
        if outcome.images:
            self.images.labels(outcome.model).inc(outcome.images)
            self.cost.labels(outcome.model).inc(outcome.cost_usd)

    def observe_stages(self, model: str, stages_ms: Mapping[str, float]) -> None:
        """One successful request's stages, in milliseconds (as in its Server-Timing header)."""
        for stage, ms in stages_ms.items():
            self.stages.labels(model, stage).observe(ms / 1000)

    def observe_error(self, route: str, error_type: str) -> None:
        self.errors.labels(route, error_type).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

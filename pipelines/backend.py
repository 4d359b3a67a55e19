"""A local model behind the batching scheduler, as one `ImageBackend`; what runs the batches is a `ModelDevice`.

The backend loads its model once (shared by every waiting request, never cancelled by one), queues each
request's images in the model's `BatchScheduler` (seeds `seed, seed + 1, ...`), and hands batches to the
device's `DeviceRunner` (`pipelines.runner`): one worker thread owns the device, the event loop only queues
and awaits. Images come back as uint8 pixel arrays; PIL images, encoding and storage happen in the service.
The device, by composition: `pipelines.local.DiffusersDevice` (a diffusers pipeline) or
`pipelines.simulated.SimulatedDevice`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Protocol

from pipelines.errors import ModelUnavailable
from pipelines.options import LocalModelOptions
from pipelines.runner import DeviceRunner, ModelLoadError
from pipelines.scheduler import BatchKey, BatchScheduler, ImageJobSpec, JobResult
from pipelines.types import (
    SEED_MODULUS,
    BackendStats,
    BatchObserver,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    LocalModelSpec,
    Readiness,
)

logger = logging.getLogger(__name__)

LOAD_RETRY_SECONDS = 10.0  # a model that failed to load is not retried by every request in a tight loop


def _retrieve_exception(task: asyncio.Future[Any]) -> None:
    """Mark a load failure as seen even if every request that waited for it has gone."""
    if not task.cancelled():
        task.exception()


def queue_ms(results: list[JobResult], device_ms: float) -> float:
    """How long a request's images waited in the scheduler rather than ran: its time there (until its last
    batch finished) less its own batches' device time. All its jobs arrive at once, so the job that finished
    last waited `queued_ms + device_ms` in all. With one batch this is just that batch's `queued_ms`; with
    several, the time between its batches (other requests' batches included) counts as queue, and the device
    time of its own earlier batches does not count twice."""
    in_scheduler = max(result.queued_ms + result.device_ms for result in results)
    return max(0.0, in_scheduler - device_ms)


class ModelDevice(Protocol):
    """Where a local model's batches run: a diffusers pipeline on a GPU or CPU (`pipelines.local`), or a
    simulated card (`pipelines.simulated`). `LocalBackend` does everything else the same way for both."""

    def readiness(self, runner: DeviceRunner | None, load_error: str | None) -> Readiness:
        """Whether the model can run here (weights, device) and in what state, for `/v1/models`."""
        ...

    def describe(self, runner: DeviceRunner | None) -> dict[str, Any]:
        """Device, dtype and optimizations for the model card; never raises."""
        ...

    def create_runner(self) -> DeviceRunner:
        """The device's owner, not loaded yet; raises `ModelUnavailable` (or ValueError) when it cannot run."""
        ...


class LocalBackend:
    """A local model as an `ImageBackend`: validated requests in, uint8 pixels out, through the scheduler and
    the device's runner. What differs between a real and a simulated device is the `ModelDevice`."""

    def __init__(self, spec: LocalModelSpec, options: LocalModelOptions, device: ModelDevice, *,
                 observer: BatchObserver | None = None) -> None:
        self.spec = spec
        self.device = device
        self._options = options
        self._runner: DeviceRunner | None = None
        self._scheduler: BatchScheduler | None = None
        self._observer = observer  # told (images, device seconds) of every batch, e.g. metrics
        self._loading: asyncio.Future[BatchScheduler] | None = None
        self._retry_load_after = 0.0  # after a failed load, requests get its error until then
        self._load_error: str | None = None

    def readiness(self) -> Readiness:
        return self.device.readiness(self._runner, self._load_error)

    async def start(self) -> None:
        """Weights load on first use, or at start via `preload`. What `describe` needs from torch (which
        initialises CUDA on a GPU box) is worked out here, off the event loop, and cached."""
        await asyncio.to_thread(self.describe)

    async def preload(self) -> None:
        await self._ensure_loaded()

    async def _ensure_loaded(self) -> BatchScheduler:
        """Load once, shared by every waiting request.

        The load runs as its own task, shielded: a client that disconnects while the weights load cancels
        only its own wait, never the load (cancelling it would leave the worker thread loading a pipeline
        nobody keeps, and the next request would load a second copy).
        """
        if self._scheduler is not None:
            return self._scheduler
        loading = self._loading
        if loading is None or (loading.done() and time.monotonic() >= self._retry_load_after):
            loading = self._loading = asyncio.ensure_future(self._load())
            loading.add_done_callback(_retrieve_exception)
        return await asyncio.shield(loading)

    async def _load(self) -> BatchScheduler:
        try:
            runner = self.device.create_runner()
        except ValueError as exc:  # a setting this machine cannot honour, e.g. device = cuda without CUDA
            raise ModelUnavailable(f"Model '{self.spec.id}' cannot run here: {exc}") from None
        try:
            await runner.load()
        except Exception as exc:
            runner.close()
            self._load_error = str(exc) if isinstance(exc, ModelLoadError) else type(exc).__name__
            self._retry_load_after = time.monotonic() + LOAD_RETRY_SECONDS
            logger.error("could not load model %s: %s", self.spec.id, exc)
            # No `from exc`: a kept traceback would keep the failed load's memory alive until the retry.
            raise ModelUnavailable(f"Model '{self.spec.id}' failed to load; see the server log.") from None
        self._load_error = None
        self._runner = runner
        self._scheduler = BatchScheduler(
            runner,
            max_batch_images=self._options.max_batch_images,
            max_wait_s=self._options.batch_wait_s,
            max_queue_images=self._options.max_queue_images,
            name=self.spec.id,
            on_batch=self._observer,
        )
        self._scheduler.start()
        return self._scheduler

    def stats(self) -> BackendStats:
        """Queued images (not counting the batch running now) and those dropped because their client left."""
        if self._scheduler is None:
            return BackendStats()
        return BackendStats(queued_images=self._scheduler.queued_images,
                            dropped_jobs=self._scheduler.stats.dropped_jobs)

    def batch_key(self, request: GenerationRequest) -> BatchKey:
        steps = request.num_inference_steps or self.spec.default_steps or 28
        guidance = request.guidance_scale if request.guidance_scale is not None else self.spec.default_guidance
        return BatchKey(self.spec.id, request.width, request.height, steps, float(guidance or 0.0),
                        self.spec.max_sequence_length)

    @staticmethod
    def seeds_for(request: GenerationRequest) -> list[int]:
        """`n` images get `seed, seed+1, ...`; no seed means a random one, which is returned."""
        first = request.seed if request.seed is not None else secrets.randbelow(SEED_MODULUS)
        return [(first + offset) % SEED_MODULUS for offset in range(request.n)]

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        scheduler = await self._ensure_loaded()
        seeds = self.seeds_for(request)
        specs = [ImageJobSpec(request.prompt, seed, request.negative_prompt) for seed in seeds]
        results = await scheduler.generate(self.batch_key(request), specs, request.request_id)
        batches = {result.batch_id: result.device_ms for result in results}
        device_ms = sum(batches.values())
        return GenerationResult(
            images=[GeneratedImage(pixels=result.output, seed=seed)
                    for result, seed in zip(results, seeds, strict=True)],
            width=request.width,
            height=request.height,
            quality=request.quality,
            batch_size=max(result.batch_size for result in results),
            device_ms=round(device_ms, 1),
            queue_ms=round(queue_ms(results, device_ms), 1),
        )

    def describe(self) -> dict[str, Any]:
        return self.device.describe(self._runner)

    async def close(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.close()
        if self._runner is not None:
            self._runner.close()


"""A local model behind the batching scheduler, as one `ImageBackend`; what runs the batches is a `ModelDevice`.

The backend loads its model once (shared by every waiting request, never cancelled by one), queues each
request's images in the model's `BatchScheduler` (seeds `seed, seed + 1, ...`), and hands batches to the
device's `DeviceRunner` (`pipelines.runner`): one worker thread owns the device, the event loop only queues
and awaits. A model may run on several devices (`LocalModelOptions.devices`): one runner, so one copy of
the pipeline, per device, all loaded at once and fed from the model's one queue; a device that fails to
load is reported (`describe()["devices"]`) and the others serve. Images come back as uint8 pixel arrays;
PIL images, encoding and storage happen in the service.
The device, by composition: `pipelines.local.DiffusersDevice` (a diffusers pipeline) or
`pipelines.simulated.SimulatedDevice`.
"""

from __future__ import annotations

import asyncio
import functools
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
        """Whether the model can run here (weights, device) and in what state, for `/v1/models`. `runner` is
        one loaded runner (None before the load)."""
        ...

    def describe(self, runner: DeviceRunner | None) -> dict[str, Any]:
        """Device, dtype and optimizations for the model card; never raises."""
        ...

    def labels(self) -> tuple[str, ...]:
        """The devices the model runs on, one runner each (e.g. `cuda:0`, `cuda:1`); raises ValueError when a
        configured device cannot be used here."""
        ...

    def create_runner(self, label: str) -> DeviceRunner:
        """The owner of device `label`, not loaded yet; raises `ModelUnavailable` (or ValueError) when it
        cannot run."""
        ...


class LocalBackend:
    """A local model as an `ImageBackend`: validated requests in, uint8 pixels out, through the scheduler and
    the device's runner. What differs between a real and a simulated device is the `ModelDevice`."""

    def __init__(self, spec: LocalModelSpec, options: LocalModelOptions, device: ModelDevice, *,
                 observer: BatchObserver | None = None) -> None:
        self.spec = spec
        self.device = device
        self._options = options
        self._runners: dict[str, DeviceRunner] = {}  # the loaded devices
        self._device_errors: dict[str, str] = {}  # devices that failed to load, while others serve
        self._scheduler: BatchScheduler | None = None
        self._observer = observer  # told (images, device seconds) of every batch, e.g. metrics
        self._loading: asyncio.Future[BatchScheduler] | None = None
        self._retry_load_after = 0.0  # after a failed load, requests get its error until then
        self._load_error: str | None = None

    def _any_runner(self) -> DeviceRunner | None:
        return next(iter(self._runners.values()), None)

    def readiness(self) -> Readiness:
        return self.device.readiness(self._any_runner(), self._load_error)

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
            labels = self.device.labels()
            runners = {label: self.device.create_runner(label) for label in labels}
        except ValueError as exc:  # a setting this machine cannot honour, e.g. device = cuda without CUDA
            raise ModelUnavailable(f"Model '{self.spec.id}' cannot run here: {exc}") from None
        outcomes = await asyncio.gather(*(runner.load() for runner in runners.values()), return_exceptions=True)
        errors: dict[str, str] = {}
        for (label, runner), outcome in zip(runners.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                runner.close()
                errors[label] = str(outcome) if isinstance(outcome, ModelLoadError) else type(outcome).__name__
                logger.error("could not load model %s on %s: %s", self.spec.id, label, errors[label])
        del outcomes  # no traceback keeps a failed load's memory alive
        loaded = {label: runner for label, runner in runners.items() if label not in errors}
        self._device_errors = errors
        if not loaded:
            self._load_error = "; ".join(errors.values()) if len(errors) == 1 else "; ".join(
                f"{label}: {error}" for label, error in errors.items())
            self._retry_load_after = time.monotonic() + LOAD_RETRY_SECONDS
            raise ModelUnavailable(f"Model '{self.spec.id}' failed to load; see the server log.")
        if errors:
            logger.warning("model %s serves on %s; %s failed to load", self.spec.id, ", ".join(loaded),
                           ", ".join(errors))
        self._load_error = None
        self._runners = loaded
        self._scheduler = BatchScheduler(
            loaded,
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
        edit = request.edit
        return BatchKey(self.spec.id, request.width, request.height, steps, float(guidance or 0.0),
                        self.spec.max_sequence_length, mode=edit.mode if edit else "generate",
                        strength=edit.strength if edit else 0.0)

    @staticmethod
    def seeds_for(request: GenerationRequest) -> list[int]:
        """`n` images get `seed, seed+1, ...`; no seed means a random one, which is returned."""
        first = request.seed if request.seed is not None else secrets.randbelow(SEED_MODULUS)
        return [(first + offset) % SEED_MODULUS for offset in range(request.n)]

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        scheduler = await self._ensure_loaded()
        seeds = self.seeds_for(request)
        image, mask = (request.edit.image, request.edit.mask) if request.edit else (None, None)
        previews = request.partial_images if request.on_preview is not None else 0
        specs = [ImageJobSpec(request.prompt, seed, request.negative_prompt, image, mask, previews,
                              functools.partial(request.on_preview, index) if previews else None)
                 for index, seed in enumerate(seeds)]
        results = await scheduler.generate(self.batch_key(request), specs, request.request_id)
        batches = {result.batch_id: result.device_ms for result in results}
        device_ms = sum(batches.values())
        devices = sorted({result.device for result in results})
        return GenerationResult(
            images=[GeneratedImage(pixels=result.output, seed=seed)
                    for result, seed in zip(results, seeds, strict=True)],
            width=request.width,
            height=request.height,
            quality=request.quality,
            batch_size=max(result.batch_size for result in results),
            device_ms=round(device_ms, 1),
            queue_ms=round(queue_ms(results, device_ms), 1),
            device=",".join(devices),
        )

    def describe(self) -> dict[str, Any]:
        """The device's description, plus `devices`: each device's state and what it has run."""
        description = self.device.describe(self._any_runner())
        try:
            labels = self.device.labels()
        except ValueError:
            return description
        states = self._scheduler.stats.devices if self._scheduler is not None else {}
        devices = []
        for label in labels:
            entry: dict[str, Any] = {"device": label}
            if label in self._device_errors:
                entry.update(state="failed", error=self._device_errors[label])
            elif label in states:
                done = states[label]
                entry.update(state="busy" if done.busy else "idle", batches=done.batches, images=done.images,
                             busy_seconds=round(done.device_seconds, 3))
            else:
                entry["state"] = "failed" if self._load_error else "not loaded"
            devices.append(entry)
        return {**description, "devices": devices}

    async def close(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.close()
        for runner in self._runners.values():
            runner.close()


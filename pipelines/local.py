"""A local diffusers model behind the batching scheduler, as one `ImageBackend`.

One worker thread owns the pipeline: it loads it and runs every batch, so nothing else touches
it and no locks are needed. The event loop only queues jobs and awaits the thread. Images come back as
uint8 pixel arrays (`pipelines.pixels`); PIL images, encoding and storage happen in the service, off this
thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from pipelines.device import Placement, choose_placement, cpu_refusal, device_lock
from pipelines.errors import ModelUnavailable
from pipelines.loading import WeightsLocation, load_pipeline, locate_weights
from pipelines.memory import free_device_memory, is_out_of_memory, simulated_oom_callback
from pipelines.optimizations import (
    AppliedOptimizations,
    OptimizationOptions,
    apply_optimizations,
    is_compile_failure,
    is_recompile_limit,
    plan_optimizations,
    restore_compile,
    suspend_compile,
    warm_up,
)
from pipelines.pixels import to_pixels
from pipelines.scheduler import BatchKey, BatchScheduler, DeviceOutOfMemory, ImageJobSpec, TimedOutputs
from pipelines.tiny import TINY_KINDS
from pipelines.types import GeneratedImage, GenerationRequest, GenerationResult, Readiness

if TYPE_CHECKING:
    from server.registry import ModelSpec
    from server.settings import Settings

logger = logging.getLogger(__name__)

SEED_MODULUS = 2**32
LOAD_RETRY_SECONDS = 10.0  # a model that failed to load is not retried by every request in a tight loop


class ModelLoadError(RuntimeError):
    """A load failed; carries only the message, so nothing keeps the half-built pipeline alive."""


def _retrieve_exception(task: asyncio.Future[Any]) -> None:
    """Mark a load failure as seen even if every request that waited for it has gone."""
    if not task.cancelled():
        task.exception()


class DeviceRunner(Protocol):
    """What the backend needs of whatever owns the device: a diffusers pipeline or a simulated device."""

    @property
    def loaded(self) -> bool: ...

    async def load(self) -> None: ...

    async def run_batch(self, key: BatchKey, specs: Sequence[ImageJobSpec]) -> list[Any] | TimedOutputs: ...

    def close(self) -> None: ...


class DiffusersRunner:
    """Runs batches of a loaded pipeline on its own single worker thread."""

    def __init__(self, spec: ModelSpec, location: WeightsLocation, settings: Settings, placement: Placement):
        self._spec = spec
        self._location = location
        self._settings = settings
        self.placement = placement
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{spec.id}")
        self._pipe: Any = None
        self._model_settings = settings.model_settings(spec.id)
        self._options = OptimizationOptions.from_settings(self._model_settings)
        self.optimizations: AppliedOptimizations | None = None  # set once loaded; shown by /v1/models
        self._last_call_s = 0.0  # device time of the latest pipeline call, failed or not

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        if self._pipe is not None:
            return
        for width, height in self._options.warmup_sizes:
            if not self._spec.accepts_size(width, height):
                raise ModelLoadError(f"[models.{self._spec.id}] warmup_sizes: {width}x{height} is not a size this "
                                     "model accepts")
        logger.info("loading %s (%s) on %s from %s", self._spec.id, self._spec.kind, self.placement,
                    self._location.detail)
        try:
            plan = plan_optimizations(self._options, self.placement)
            self._pipe = load_pipeline(self._spec.kind, self._location, self._settings.model_cache,
                                       self.placement.device, self.placement.torch_dtype(),
                                       cpu_offload=plan.cpu_offload)
            self.optimizations = apply_optimizations(self._pipe, plan, self.placement)
            # Warm-up runs here, on the worker thread, before the scheduler exists: no request waits behind it.
            warm_up(self._warmup_batch, plan.options, self._model_settings.max_batch_images, self.optimizations,
                    self.placement.device)
        except Exception as exc:
            logger.exception("loading %s failed", self._spec.id)
            self._pipe = self.optimizations = None
            failure = f"{type(exc).__name__}: {str(exc)[:300]}"
        else:
            logger.info("loaded %s on %s", self._spec.id, self.placement)
            return
        # Outside the except block, so the traceback (whose frames hold the half-built pipeline) is gone and
        # its memory can be returned before anyone tries again.
        free_device_memory(self.placement.device)
        raise ModelLoadError(failure)

    def _warmup_batch(self, width: int, height: int, images: int) -> None:
        steps = self._options.warmup_steps
        key = BatchKey(self._spec.id, width, height, steps, float(self._spec.default_guidance or 0.0),
                       self._spec.max_sequence_length)
        self._generate(key, [ImageJobSpec("warm-up", seed) for seed in range(images)])

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    async def run_batch(self, key: BatchKey, specs: Sequence[ImageJobSpec]) -> TimedOutputs:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_sync, key, list(specs))

    def _call_arguments(self, key: BatchKey, specs: list[ImageJobSpec]) -> dict[str, Any]:
        import torch

        # CPU generators: the same seed gives the same latents on any device, alone or in a batch.
        arguments: dict[str, Any] = {
            "prompt": [spec.prompt for spec in specs],
            "width": key.width,
            "height": key.height,
            "num_inference_steps": key.steps,
            "guidance_scale": key.guidance,
            "generator": [torch.Generator("cpu").manual_seed(spec.seed) for spec in specs],
            "output_type": "pt",  # pixels stay on the device until `to_pixels`
        }
        if key.max_sequence_length is not None:
            arguments["max_sequence_length"] = key.max_sequence_length
        if "negative_prompt" in self._spec.extra_params:
            arguments["negative_prompt"] = [spec.negative_prompt or "" for spec in specs]
        limit = self._options.debug_oom_above_images
        if limit is not None and len(specs) > limit:
            arguments["callback_on_step_end"] = simulated_oom_callback
        return arguments

    def _call_pipeline(self, key: BatchKey, specs: list[ImageJobSpec]) -> TimedOutputs:
        """One pipeline call, timed from when this model has the device (not while it waits for the lock).
        The time is kept in `_last_call_s` even when the call fails.

        The device is let go as soon as the batch's pixels are on the CPU as uint8 (one copy); turning them
        into PIL images and encoding happen on the service's encoder threads."""
        assert self.optimizations is not None
        with device_lock(self.placement.device):
            started = time.perf_counter()
            try:
                with self.optimizations.call_context():
                    pixels = to_pixels(self._pipe(**self._call_arguments(key, specs)).images)
            finally:
                self._last_call_s = time.perf_counter() - started
        return TimedOutputs(list(pixels), self._last_call_s)

    def _generate(self, key: BatchKey, specs: list[ImageJobSpec]) -> TimedOutputs:
        """A call. If it fails inside torch.compile, it is retried eagerly: when that works the failure was the
        compiler's and compile stays off; when it fails too, the error is the call's and compile stays on."""
        assert self.optimizations is not None
        try:
            return self._call_pipeline(key, specs)
        except Exception as exc:
            if "compile" not in self.optimizations.applied or is_out_of_memory(exc) or not is_compile_failure(exc):
                raise
            limit_hit = is_recompile_limit(exc)
            if limit_hit:  # not the toolchain's fault: this call runs eagerly, compile stays on
                logger.warning("model %s: torch.compile's recompile limit was hit at %dx%d x%d; running this call "
                               "eagerly, compile stays on", self._spec.id, key.width, key.height, len(specs))
            else:
                logger.warning("model %s: a compiled call failed; retrying it eagerly", self._spec.id,
                               exc_info=True)
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            reason = f"{type(exc).__name__}: {first_line}"
        failed_s = self._last_call_s
        compiled = suspend_compile(self._pipe)
        try:
            result = self._call_pipeline(key, specs)
        except Exception:
            restore_compile(compiled)
            raise
        if limit_hit:
            restore_compile(compiled)
        else:
            self.optimizations.compile_failed(reason)
        return TimedOutputs(result.outputs, failed_s + result.device_seconds)

    def _run_sync(self, key: BatchKey, specs: list[ImageJobSpec]) -> TimedOutputs:
        self._load_sync()
        try:
            return self._generate(key, specs)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            message = f"{type(exc).__name__}: {str(exc)[:300]}"
        # Freed here, outside the except block: the traceback and the tensors its frames hold are gone.
        free_device_memory(self.placement.device)
        raise DeviceOutOfMemory(message)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class LocalDiffusersBackend:
    """Validated requests in, PIL images out, through the scheduler and the worker thread."""

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self._settings = settings
        self._model_settings = settings.model_settings(spec.id)
        self._runner: DeviceRunner | None = None
        self._scheduler: BatchScheduler | None = None
        self.on_batch: Callable[[int, float], None] | None = None  # (images, device seconds), e.g. metrics
        self._loading: asyncio.Future[BatchScheduler] | None = None
        self._retry_load_after = 0.0  # after a failed load, requests get its error until then
        self._load_error: str | None = None
        self._placement: Placement | None = None
        self._optimizations_preview: dict[str, Any] | None = None
        self._configured_options = OptimizationOptions.from_settings(self._model_settings)

    def _location(self) -> WeightsLocation:
        return locate_weights(self.spec.kind, self.spec.source, self._settings.model_cache)

    def placement(self) -> Placement:
        """Chosen once: asking torch about CUDA is not free, and the answer does not change."""
        if self._placement is None:
            self._placement = choose_placement(self._settings.device,
                                               self._model_settings.dtype or self._settings.dtype)
        return self._placement

    def readiness(self) -> Readiness:
        location = self._location()
        if not location.found:
            return Readiness(False, f"{location.detail}; run `imageserve pull {self.spec.id}`")
        try:
            refusal = cpu_refusal(self.placement(), self.spec.id, full_size=self.spec.kind not in TINY_KINDS)
        except ValueError as exc:  # a device setting this machine cannot honour
            return Readiness(False, f"cannot run here: {exc}")
        if refusal:
            return Readiness(False, refusal)
        if self._load_error:
            return Readiness(False, f"failed to load: {self._load_error}")
        state = "loaded" if self._runner and self._runner.loaded else "loads on first request"
        return Readiness(True, f"{location.detail}; {state}")

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
            runner = self._create_runner()
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
            max_batch_images=self._model_settings.max_batch_images,
            max_wait_s=self._settings.batch_wait_ms / 1000,
            max_queue_images=self._settings.max_queue_images,
            name=self.spec.id,
            on_batch=self.on_batch,
        )
        self._scheduler.start()
        return self._scheduler

    def _create_runner(self) -> DeviceRunner:
        """The device owner; `pipelines.simulated` overrides this, and everything else is shared."""
        location = self._location()
        if not location.found:
            raise ModelUnavailable(
                f"Model '{self.spec.id}' has no weights here ({location.detail}). "
                f"Fetch them with `imageserve pull {self.spec.id}`, or set `source` under "
                f"[models.{self.spec.id}] to a diffusers folder."
            )
        placement = self.placement()
        refusal = cpu_refusal(placement, self.spec.id, full_size=self.spec.kind not in TINY_KINDS)
        if refusal:  # a full-size model on a CPU nobody asked for: minutes per image
            raise ModelUnavailable(refusal)
        return DiffusersRunner(self.spec, location, self._settings, placement)

    @property
    def dropped_jobs(self) -> int:
        """Queued images dropped because their client went away before they ran."""
        return self._scheduler.stats.dropped_jobs if self._scheduler is not None else 0

    @property
    def queued_images(self) -> int:
        """Images waiting for the device (not counting the batch running now)."""
        return self._scheduler.queued_images if self._scheduler is not None else 0

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
        return GenerationResult(
            images=[GeneratedImage(pixels=result.output, seed=seed)
                    for result, seed in zip(results, seeds, strict=True)],
            width=request.width,
            height=request.height,
            quality=request.quality,
            batch_size=max(result.batch_size for result in results),
            device_ms=round(sum(batches.values()), 1),
        )

    def describe(self) -> dict[str, Any]:
        """Device, dtype and optimizations, for `/v1/models` and `imageserve models`. Never raises.

        `optimizations` has one shape: what is configured, what applied, what was switched off and why,
        and the warm-up done; before the model loads, `applied` and `warmup` are empty and `state` says so.
        """
        try:
            placement = self.placement()
        except ValueError as exc:
            return {"device": "unavailable", "dtype": None, "device_error": str(exc),
                    "max_batch_images": self._model_settings.max_batch_images}
        applied = getattr(self._runner, "optimizations", None)
        if applied is not None:
            optimizations = {"configured": self._configured_options.summary(), "state": "loaded",
                             **applied.as_dict()}
        else:  # not loaded yet: what this machine will switch off (worked out once)
            if self._optimizations_preview is None:
                self._optimizations_preview = {
                    "configured": self._configured_options.summary(), "state": "applied when the model loads",
                    "applied": {}, "warmup": [],
                    "switched_off": plan_optimizations(self._configured_options, placement).switched_off,
                }
            optimizations = self._optimizations_preview
        return {"device": placement.device, "dtype": placement.dtype, "device_warning": placement.warning or None,
                "max_batch_images": self._model_settings.max_batch_images, "optimizations": optimizations}

    async def close(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.close()
        if self._runner is not None:
            self._runner.close()

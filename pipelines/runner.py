"""What owns a local model's device: `DiffusersRunner` loads a diffusers pipeline and runs its batches.

One worker thread per runner loads the pipeline and runs every batch, so nothing else touches it. Batches
come back as uint8 pixel arrays (`pipelines.pixels`), timed from when the model had the device
(`TimedOutputs`). `DeviceRunner` is what `pipelines.backend.LocalBackend` needs of any runner; the
simulated device (`pipelines.simulated.SimulatedRunner`) is the other one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from pipelines.device import Placement, device_lock
from pipelines.editing import MODES, edit_arguments, edit_pipeline
from pipelines.loading import WeightsLocation, load_pipeline
from pipelines.memory import free_device_memory, is_out_of_memory, simulated_oom_callback
from pipelines.optimizations import (
    AppliedOptimizations,
    apply_optimizations,
    is_compile_failure,
    is_recompile_limit,
    plan_optimizations,
    restore_compile,
    suspend_compile,
    warm_up,
)
from pipelines.options import LocalModelOptions
from pipelines.pixels import to_pixels
from pipelines.previews import PreviewTap, load_preview_vae
from pipelines.scheduler import BatchKey, DeviceOutOfMemory, ImageJobSpec, TimedOutputs
from pipelines.types import (
    LocalModelSpec,
)

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A load failed; carries only the message, so nothing keeps the half-built pipeline alive."""


class DeviceRunner(Protocol):
    """What the backend needs of whatever owns the device: a diffusers pipeline or a simulated device."""

    @property
    def loaded(self) -> bool: ...

    @property
    def optimizations(self) -> AppliedOptimizations | None:
        """What was applied once loaded (None before, and for a simulated device)."""
        ...

    async def load(self) -> None: ...

    async def run_batch(self, key: BatchKey, specs: Sequence[ImageJobSpec]) -> list[Any] | TimedOutputs: ...

    def close(self) -> None: ...


def _use_device(device: str) -> None:
    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(device)


class DiffusersRunner:
    """Runs batches of a loaded pipeline on its own single worker thread."""

    def __init__(self, spec: LocalModelSpec, location: WeightsLocation, options: LocalModelOptions,
                 placement: Placement):
        self._spec = spec
        self._location = location
        self._model_options = options
        self.placement = placement
        # The worker thread makes its own device the current one: whatever torch, diffusers or torch.compile
        # allocate on "the" CUDA device goes to this runner's card when a model runs on several.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{spec.id}-{placement.device}",
                                            initializer=_use_device, initargs=(placement.device,))
        self._pipe: Any = None
        self._edit_pipes: dict[str, Any] = {}  # mode -> its pipeline, sharing self._pipe's components
        self._preview_vae: Any = None  # a tiny autoencoder for streamed previews, when one is in the cache
        self.preview_decoder = "the model's own VAE"
        self._options = options.optimizations
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
            self._pipe = load_pipeline(self._spec.kind, self._location, self._model_options.model_cache,
                                       self.placement.device, self.placement.torch_dtype(),
                                       cpu_offload=plan.cpu_offload)
            self.optimizations = apply_optimizations(self._pipe, plan, self.placement)
            self._preview_vae, self.preview_decoder = load_preview_vae(
                self._spec.kind, self._model_options.preview_vae, self._model_options.model_cache,
                self.placement.device, self.placement.torch_dtype())
            # Warm-up runs here, on the worker thread, before the scheduler exists: no request waits behind it.
            warm_up(self._warmup_batch, plan.options, self._model_options.max_batch_images, self.optimizations,
                    self.placement.device)
        except Exception as exc:
            logger.exception("loading %s failed", self._spec.id)
            self._pipe = self.optimizations = None
            failure = f"{type(exc).__name__}: {str(exc)[:300]}"
        else:
            logger.info("loaded %s on %s (streamed previews: %s)", self._spec.id, self.placement, self.preview_decoder)
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
        if key.mode in MODES:
            arguments.update(edit_arguments(key.mode, key.strength, [spec.image for spec in specs],
                                            [spec.mask for spec in specs]))
        limit = self._options.debug_oom_above_images
        if limit is not None and len(specs) > limit:
            arguments["callback_on_step_end"] = simulated_oom_callback
        elif any(spec.previews for spec in specs):  # streaming: decode previews for the jobs that asked
            arguments["callback_on_step_end"] = PreviewTap(self._spec.kind, key.width, key.height, key.steps, specs,
                                                           self._preview_vae)
            arguments["callback_on_step_end_tensor_inputs"] = ["latents"]
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
                    pixels = to_pixels(self._pipeline_for(key.mode)(**self._call_arguments(key, specs)).images)
            finally:
                self._last_call_s = time.perf_counter() - started
        return TimedOutputs(list(pixels), self._last_call_s)

    def _pipeline_for(self, mode: str) -> Any:
        """The text-to-image pipeline, or its edit twin (made on first use, on this worker thread)."""
        if mode not in MODES:
            return self._pipe
        if mode not in self._edit_pipes:
            self._edit_pipes[mode] = edit_pipeline(self._pipe, mode)
        return self._edit_pipes[mode]

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

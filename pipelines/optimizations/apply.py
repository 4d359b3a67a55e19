"""Applying a plan to a loaded pipeline, and the record of what applied (`AppliedOptimizations`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.optimizations.compiler import compile_transformer, compile_vae_decoder, configure_compiler
from pipelines.optimizations.fp8 import quantize_blocks
from pipelines.optimizations.plan import ATTENTION_BACKENDS, OptimizationPlan

if TYPE_CHECKING:
    from pipelines.device import Placement

logger = logging.getLogger(__name__)

# PyTorch SDPA kernels, fastest first, as fallbacks behind a preferred one (MATH is the slow reference). Not
# torch 2.13's own order, which is flash, efficient, math, cuDNN: math takes every input, so without a
# preference cuDNN is never reached.
_SDPA_ORDER = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


@dataclass
class AppliedOptimizations:
    """What `apply_optimizations` did to one pipeline; shown by `/v1/models`."""

    applied: dict[str, str] = field(default_factory=dict)
    switched_off: dict[str, str] = field(default_factory=dict)
    warmup: list[str] = field(default_factory=list)
    sdpa_kernel: str | None = None  # preferred around each call, for models outside the attention dispatcher
    fp8_layers: list[str] = field(default_factory=list)  # the Linear layers quantized to fp8

    def switch_off(self, name: str, reason: str) -> None:
        self.switched_off[name] = reason
        logger.warning("optimization %s switched off: %s", name, reason)

    def apply(self, name: str, detail: str) -> None:
        self.applied[name] = detail
        logger.info("optimization %s: %s", name, detail)

    @contextlib.contextmanager
    def call_context(self) -> Iterator[None]:
        """Wrap every pipeline call: prefers the chosen SDPA kernel where the dispatcher could not set it.

        The chosen kernel goes first and the others stay enabled behind it (`set_priority`): the VAE's
        attention has one 512-wide head, which flash and cuDNN kernels do not take, so disabling the rest
        would fail every request at decode. The setting is process-wide; `device_lock` keeps calls of
        other models on the device from overlapping with it.
        """
        if self.sdpa_kernel is None:
            yield
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        chosen = getattr(SDPBackend, self.sdpa_kernel)
        fallbacks = [backend for backend in _SDPA_ORDER if backend != self.sdpa_kernel]
        with sdpa_kernel([chosen, *(getattr(SDPBackend, name) for name in fallbacks)], set_priority=True):
            yield

    def compile_failed(self, reason: str) -> None:
        """Compiling failed and the eager retry worked: compile stays off (see `DiffusersRunner`)."""
        self.applied.pop("compile", None)
        self.applied.pop("compile_vae", None)
        if "quantize" in self.applied:
            reason += "; fp8 stays, now eager (slower than bf16 eager)"
        self.switch_off("compile", f"compiling failed, running eager: {reason}")

    def as_dict(self) -> dict[str, Any]:
        return {"applied": dict(self.applied), "switched_off": dict(self.switched_off), "warmup": list(self.warmup)}


def apply_optimizations(pipe: Any, plan: OptimizationPlan, placement: Placement) -> AppliedOptimizations:
    """Apply the plan to a loaded pipeline, in the order the options need: fuse, attention, quantize, compile.

    Placement (`.to(device)` or CPU offload) already happened in `load_pipeline`.
    """
    import torch

    options = plan.options
    result = AppliedOptimizations()
    for name, reason in plan.switched_off.items():
        result.switch_off(name, reason)
    result.apply("dtype", placement.dtype + (f" ({placement.reason})" if placement.reason else ""))
    if options.cpu_offload:
        result.apply("cpu_offload", "model CPU offload (components move to the GPU while they run)")
    transformer = pipe.transformer

    if options.fuse_qkv and options.attention_backend == "xformers" and not _uses_dispatcher(transformer):
        # The pipeline's xformers switch has no processor for fused joint attention (SD3, diffusers 0.42): it
        # would install one that ignores the fused projections and breaks every call.
        result.switch_off("fuse_qkv", f"{type(transformer).__name__} has no xformers processor for fused "
                                      "projections; xformers attention is kept")
    elif options.fuse_qkv:
        try:
            transformer.fuse_qkv_projections()
            result.apply("fuse_qkv", "fused QKV projections")
        except (ValueError, NotImplementedError, AttributeError) as exc:
            result.switch_off("fuse_qkv", f"{type(transformer).__name__} cannot fuse its projections: {exc}")

    _apply_attention_backend(pipe, options.attention_backend, result)

    if options.compile != "off":
        configure_compiler()  # before torchao, whose own inductor settings are switched off (fp8_config)
    if options.quantize == "fp8":
        try:
            result.fp8_layers = quantize_blocks(transformer)
            result.apply("quantize", f"fp8 dynamic activations and weights, row-wise (torchao), on the "
                                     f"{len(result.fp8_layers)} linear layers of the repeated blocks")
        except Exception as exc:  # torchao checks the hardware itself; a torchao/torch mismatch fails here too
            result.switch_off("quantize", f"torchao could not quantize to fp8: {type(exc).__name__}: {exc}")

    if options.channels_last_vae:
        pipe.vae.to(memory_format=torch.channels_last)
        result.apply("channels_last_vae", "VAE in channels-last memory format")
    if options.vae_tiling:
        pipe.vae.enable_tiling()
        result.apply("vae_tiling", "VAE decodes large images in tiles")

    if options.compile != "off":
        compiled = compile_transformer(transformer, options.compile, cpu_offload=options.cpu_offload)
        if compiled is None:
            result.switch_off("compile", f"{type(transformer).__name__} declares no repeated blocks for regional "
                                         "compilation, and full compile cannot trace the hooks cpu_offload puts on it")
        else:
            result.apply(*compiled)
    if options.compiles_vae and "compile" in result.applied:
        result.apply("compile_vae", compile_vae_decoder(pipe.vae))
    return result


def _apply_attention_backend(pipe: Any, name: str, result: AppliedOptimizations) -> None:
    """Set the backend on each model's transformer (per model; the SDPA preference for models outside the
    dispatcher is process-wide and guarded by `device_lock`)."""
    backend = ATTENTION_BACKENDS[name]
    transformer = pipe.transformer
    if _uses_dispatcher(transformer):
        try:
            transformer.set_attention_backend(backend.dispatcher_name)
        except (RuntimeError, ValueError) as exc:
            result.switch_off("attention_backend", f"{name}: {exc}; using native (PyTorch SDPA)")
            transformer.set_attention_backend("native")
            return
        result.apply("attention_backend", f"{name} (diffusers attention dispatcher)")
    elif name == "native":
        result.apply("attention_backend", "native (PyTorch SDPA: flash, then memory-efficient, then math)")
    elif backend.sdpa_kernel is not None:
        result.sdpa_kernel = backend.sdpa_kernel
        result.apply("attention_backend", f"{name} (PyTorch SDPA preferring {backend.sdpa_kernel} around each call, "
                                          "the other kernels as fallbacks)")
    elif name == "xformers" and hasattr(pipe, "enable_xformers_memory_efficient_attention"):
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # xformers missing, or built for another torch or GPU
            result.switch_off("attention_backend", f"xformers: {type(exc).__name__}: {exc}; using native "
                                                   "(PyTorch SDPA)")
            return
        result.apply("attention_backend", "xformers (the pipeline's xformers attention processors)")
    else:
        result.switch_off("attention_backend", f"{name}: {type(transformer).__name__}'s attention does not go "
                                               "through diffusers' attention dispatcher; using native (PyTorch SDPA)")


def _uses_dispatcher(transformer: Any) -> bool:
    """Whether its attention goes through diffusers' attention dispatcher (FLUX does; SD3 does not in 0.42):
    only those processors carry `_attention_backend`."""
    return any(hasattr(proc, "_attention_backend") for proc in transformer.attn_processors.values())

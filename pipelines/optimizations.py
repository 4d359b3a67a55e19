"""Per-model speed and memory options for a local diffusers pipeline, each one switchable.

Set in `[models.<id>]` (see `server.settings.ModelSettings`). Each option either applies, or switches
itself off with a logged reason (no CUDA, GPU too old, package missing, model without support), so one
config file serves a GPU box and a laptop. A setting that can never work (fp8 without compile, a
malformed warm-up size) is rejected when the settings load; a warm-up size the model does not accept,
when the model loads. What applied and what was switched off is kept on the
runner and shown by `GET /v1/models` and `imageserve models`.

Option (default): trade-off. Without CUDA: behaviour.

dtype (bf16, `IMAGESERVE_DTYPE` or per model)
    bf16: full tensor-core speed, what SD3 and FLUX were trained in. fp16: same speed, but FLUX can
    overflow to black images. fp32: twice the memory, several times slower; the reference.
    Without CUDA: always fp32 (half precision is slow or missing on CPUs).
attention_backend (native)
    native: PyTorch SDPA picks the flash, memory-efficient or cuDNN kernel itself. native_cudnn,
    native_flash, native_efficient: use one SDPA kernel (cuDNN is the fastest on an H100 for these head
    sizes). flash (flash-attn), xformers, sage (sageattention: 8-bit QK, slightly different pixels): only
    if that package is installed, else switched off. native_math: the unfused reference, slowest.
    For SD3, xformers and fuse_qkv do not combine (no xformers processor for fused projections): fuse_qkv
    switches off.
    FLUX goes through diffusers' attention dispatcher (its transformer only); SD3's processors do not
    (diffusers 0.42), so for SD3 native_* makes that kernel PyTorch's first choice around each call, the
    others staying as fallbacks (the VAE's 512-wide head needs one), and xformers uses the pipeline's
    xformers switch.
    Without CUDA: native and native_math run; the others switch off (logged) and native is used.
compile (off)
    regional: torch.compile of the repeated transformer blocks (`compile_repeated_blocks`, fullgraph):
    about 1.5x faster denoising on an H100 for a cold start of tens of seconds per new shape, paid by
    warm-up. A model that declares no repeated blocks (SD3 in diffusers 0.42) gets full instead, logged.
    full: the whole transformer; a little faster still, a much longer compile. A new size or batch size
    recompiles once; from the second shape on, torch marks the changed dimensions dynamic. full cannot
    trace cpu_offload's hooks, so with cpu_offload full is switched off (regional works). A call that
    fails inside torch.compile (a broken C++ or Triton toolchain, an op Dynamo cannot trace) is retried
    eagerly; if that works, compile switches off for good, logged, and later calls run eagerly too.
    Without CUDA: runs with inductor's C++ backend (needs g++/clang++, else switched off, logged);
    slower than eager for the tiny models.
fuse_qkv (false)
    One matmul for Q, K and V (`fuse_qkv_projections`): a few % faster, best with compile. diffusers keeps
    the unfused weights too, so the transformer takes more memory: +18% for FLUX.1-dev (4.0 GiB in bf16),
    +17% for SD3-medium (parameters counted on the meta device).
    Without CUDA: applies.
quantize (none)
    fp8: torchao dynamic fp8 (row-wise) quantization of the transformer's linear layers: about 1.3x faster
    on top of compile, half the transformer's weight memory, small pixel differences. Needs compile (eager
    fp8 is slower than bf16; a setting without compile is rejected), bf16 weights (row-wise scaling takes
    no other dtype), compute capability >= 8.9 (Ada, Hopper, Blackwell) and the `gpu` extra (torchao);
    not combined with cpu_offload.
    Without CUDA: switched off (logged).
channels_last_vae (false)
    VAE convolutions in NHWC layout: faster decode on tensor cores, no cost. Without CUDA: applies.
vae_tiling (false)
    Decode images larger than the VAE's tile (1024 px for SD3 and FLUX) in overlapping tiles: peak memory
    stays flat for 2048 px images; slower decode, faint seams are possible. Without CUDA: applies.
cpu_offload (false)
    `enable_model_cpu_offload()` instead of `.to("cuda")`: each component moves to the GPU only while it
    runs, so the card needs room for the largest one only (FLUX.1-dev's transformer: 22.2 GiB in bf16, at
    the edge of a 24 GB card; not measured here); much slower (weights cross PCIe on every request).
    Without CUDA: switched off (logged).
warmup_sizes ([]) and warmup_steps (2)
    At load, run each size at batch 1 and at `max_batch_images` so compilation and kernel autotuning
    happen before the first request; start-up takes longer. Use with `IMAGESERVE_PRELOAD`, else the first
    request pays the load and the warm-up. Without CUDA: runs (slowly with compile).
debug_oom_above_images (unset)
    Testing aid: a batch of more images than this raises `torch.OutOfMemoryError` inside the pipeline
    call, to exercise the out-of-memory path (batch split, then 503) without a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipelines.memory import exception_chain, free_device_memory, is_out_of_memory

if TYPE_CHECKING:
    from pipelines.device import Placement
    from server.settings import ModelSettings

logger = logging.getLogger(__name__)

FP8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class AttentionBackend:
    """One `attention_backend` value: its diffusers dispatcher name and what it needs."""

    dispatcher_name: str
    runs_on_cpu: bool = False
    sdpa_kernel: str | None = None  # torch.nn.attention.SDPBackend member, for models outside the dispatcher
    package: str | None = None  # import name of the optional package it needs


# PyTorch SDPA kernels, fastest first, as fallbacks behind a preferred one (MATH is the slow reference).
_SDPA_ORDER = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")

ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    "native": AttentionBackend("native", runs_on_cpu=True),
    "native_math": AttentionBackend("_native_math", runs_on_cpu=True, sdpa_kernel="MATH"),
    "native_cudnn": AttentionBackend("_native_cudnn", sdpa_kernel="CUDNN_ATTENTION"),
    "native_flash": AttentionBackend("_native_flash", sdpa_kernel="FLASH_ATTENTION"),
    "native_efficient": AttentionBackend("_native_efficient", sdpa_kernel="EFFICIENT_ATTENTION"),
    "flash": AttentionBackend("flash", package="flash_attn"),
    "xformers": AttentionBackend("xformers", package="xformers"),
    "sage": AttentionBackend("sage", package="sageattention"),
}


@dataclass(frozen=True)
class OptimizationOptions:
    """What a model asks for; `plan_optimizations` decides what of it can apply here."""

    attention_backend: str = "native"
    compile: str = "off"  # "off", "regional" or "full"
    fuse_qkv: bool = False
    quantize: str = "none"  # "none" or "fp8"
    channels_last_vae: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    warmup_sizes: tuple[tuple[int, int], ...] = ()
    warmup_steps: int = 2
    debug_oom_above_images: int | None = None

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> OptimizationOptions:
        return cls(
            attention_backend=settings.attention_backend,
            compile=settings.compile,
            fuse_qkv=settings.fuse_qkv,
            quantize=settings.quantize,
            channels_last_vae=settings.channels_last_vae,
            vae_tiling=settings.vae_tiling,
            cpu_offload=settings.cpu_offload,
            warmup_sizes=tuple(parse_size(size) for size in settings.warmup_sizes),
            warmup_steps=settings.warmup_steps,
            debug_oom_above_images=settings.debug_oom_above_images,
        )

    def summary(self) -> list[str]:
        """The non-default options, short, for listings."""
        parts = []
        if self.attention_backend != "native":
            parts.append(f"attention={self.attention_backend}")
        if self.compile != "off":
            parts.append(f"compile={self.compile}")
        if self.quantize != "none":
            parts.append(self.quantize)
        flags = ("fuse_qkv", "channels_last_vae", "vae_tiling", "cpu_offload")
        parts += [name for name in flags if getattr(self, name)]
        if self.warmup_sizes:
            parts.append("warmup=" + ",".join(f"{w}x{h}" for w, h in self.warmup_sizes))
        return parts


def parse_size(size: str) -> tuple[int, int]:
    """`"1024x768"` -> (1024, 768); a ValueError names what is wrong."""
    width, sep, height = size.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"size {size!r} must look like '1024x1024'")
    parsed = int(width), int(height)
    if any(side <= 0 or side % 16 for side in parsed):
        raise ValueError(f"size {size!r}: width and height must be positive multiples of 16")
    return parsed


@dataclass(frozen=True)
class OptimizationPlan:
    """The options that will be applied on this machine, and why the others were switched off."""

    options: OptimizationOptions
    switched_off: dict[str, str]

    @property
    def cpu_offload(self) -> bool:
        return self.options.cpu_offload


def _cxx_compiler() -> str | None:
    return shutil.which(os.environ.get("CXX") or "g++") or shutil.which("clang++")


def _gpu_capability() -> tuple[int, int] | None:
    import torch

    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None  # type: ignore[return-value]


def plan_optimizations(
    options: OptimizationOptions,
    placement: Placement,
    *,
    gpu_capability: tuple[int, int] | None = None,
    has_package: Callable[[str], bool] | None = None,
    cxx_compiler: Callable[[], str | None] = _cxx_compiler,
) -> OptimizationPlan:
    """Decide what applies on `placement`'s device; the keyword hooks let tests pose as another machine."""
    has_package = has_package or (lambda name: importlib.util.find_spec(name) is not None)
    on_cuda = placement.device == "cuda"
    if on_cuda and gpu_capability is None:
        gpu_capability = _gpu_capability()
    off: dict[str, str] = {}
    changes: dict[str, Any] = {}

    backend = ATTENTION_BACKENDS[options.attention_backend]
    if not on_cuda and not backend.runs_on_cpu:
        off["attention_backend"] = f"{options.attention_backend} needs CUDA; using native (PyTorch SDPA)"
    elif backend.package and not has_package(backend.package):
        off["attention_backend"] = (f"{options.attention_backend} needs the '{backend.package}' package, which is not "
                                    "installed; using native (PyTorch SDPA)")
    if "attention_backend" in off:
        changes["attention_backend"] = "native"

    if options.cpu_offload and not on_cuda:
        off["cpu_offload"] = "model CPU offload moves weights to a GPU only while they run; there is no CUDA device"
        changes["cpu_offload"] = False

    if options.compile != "off" and not on_cuda and cxx_compiler() is None:
        off["compile"] = "torch.compile on CPU needs a C++ compiler (g++ or clang++, or $CXX); none found"
        changes["compile"] = "off"
    elif options.compile == "full" and options.cpu_offload and on_cuda:
        off["compile"] = ("full compile cannot trace the hooks cpu_offload puts on the transformer; "
                          "compile = \"regional\" works with it")
        changes["compile"] = "off"

    if options.quantize == "fp8":
        reason = None
        if not on_cuda:
            reason = "fp8 needs a CUDA GPU with compute capability >= 8.9; there is no CUDA device"
        elif gpu_capability is not None and tuple(gpu_capability) < FP8_MIN_CAPABILITY:
            major, minor = gpu_capability
            reason = f"fp8 needs compute capability >= 8.9; this GPU has {major}.{minor}"
        elif "compile" in off:
            reason = "fp8 runs only together with compile, which is switched off"
        elif options.cpu_offload:
            reason = "fp8 quantization is not combined with cpu_offload here"
        elif placement.dtype != "bf16":
            reason = f"torchao's row-wise fp8 takes bf16 weights; this model runs {placement.dtype}"
        elif not has_package("torchao"):
            reason = "fp8 needs torchao: install the 'gpu' extra (pip install 'imageserve[gpu]')"
        if reason:
            off["quantize"] = reason
            changes["quantize"] = "none"
    return OptimizationPlan(replace(options, **changes), off)


@dataclass
class AppliedOptimizations:
    """What `apply_optimizations` did to one pipeline; shown by `/v1/models`."""

    applied: dict[str, str] = field(default_factory=dict)
    switched_off: dict[str, str] = field(default_factory=dict)
    warmup: list[str] = field(default_factory=list)
    sdpa_kernel: str | None = None  # preferred around each call, for models outside the attention dispatcher

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
        """Compiling failed and the eager retry worked: compile stays off (see `suspend_compile`)."""
        self.applied.pop("compile", None)
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

    if options.quantize == "fp8":
        try:
            _quantize_fp8(transformer)
            result.apply("quantize", "fp8 dynamic activations and weights, row-wise (torchao)")
        except Exception as exc:  # torchao checks the hardware itself; a torchao/torch mismatch fails here too
            result.switch_off("quantize", f"torchao could not quantize to fp8: {type(exc).__name__}: {exc}")

    if options.channels_last_vae:
        pipe.vae.to(memory_format=torch.channels_last)
        result.apply("channels_last_vae", "VAE in channels-last memory format")
    if options.vae_tiling:
        pipe.vae.enable_tiling()
        result.apply("vae_tiling", "VAE decodes large images in tiles")

    if options.compile == "regional":
        try:
            transformer.compile_repeated_blocks(fullgraph=True)
            result.apply("compile", "regional: torch.compile of the repeated transformer blocks")
        except ValueError:
            name = type(transformer).__name__
            if options.cpu_offload:
                result.switch_off("compile", f"{name} declares no repeated blocks for regional compilation, and "
                                             "full compile cannot trace the hooks cpu_offload puts on it")
            else:
                transformer.compile(fullgraph=True)
                result.apply("compile", f"full: {name} declares no repeated blocks for regional compilation, so "
                                        "the whole transformer is compiled")
    elif options.compile == "full":
        transformer.compile(fullgraph=True)
        result.apply("compile", "full: torch.compile of the whole transformer")
    return result


def _apply_attention_backend(pipe: Any, name: str, result: AppliedOptimizations) -> None:
    """Set the backend on each model's transformer (per model; the SDPA pin for models outside the dispatcher
    is process-wide and guarded by `device_lock`)."""
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
        result.apply("attention_backend", "native (PyTorch SDPA)")
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


def _fp8_friendly(module: Any, _name: str) -> bool:
    """Linear layers whose sides fp8 kernels take (multiples of 16)."""
    import torch

    return isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def _quantize_fp8(transformer: Any) -> None:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_fp8_friendly)


def is_compile_failure(exc: BaseException) -> bool:
    """Raised by torch.compile's machinery (Dynamo tracing, Inductor code generation, the C++ or Triton build),
    directly or as the cause of another error. Dynamo also wraps errors of the model code it traces, so this
    only says the compiler was involved: the caller retries eagerly to find out whose failure it was."""
    return any(type(error).__module__.startswith(("torch._dynamo", "torch._inductor"))
               for error in exception_chain(exc))


def suspend_compile(transformer: Any) -> list[tuple[Any, Any]]:
    """Make the transformer run eagerly; returns what `restore_compile` needs to undo that.

    `nn.Module.compile` (the transformer's, or each block's for regional compile) keeps the compiled call in
    `_compiled_call_impl`; with it cleared the module calls its plain forward.
    """
    saved = [(module, module._compiled_call_impl) for module in transformer.modules()
             if getattr(module, "_compiled_call_impl", None) is not None]
    for module, _ in saved:
        module._compiled_call_impl = None
    return saved


def restore_compile(saved: list[tuple[Any, Any]]) -> None:
    for module, compiled in saved:
        module._compiled_call_impl = compiled


# -- warm-up --------------------------------------------------------------------------------------


def warm_up(run: Callable[[int, int, int], object], options: OptimizationOptions, max_batch_images: int,
            result: AppliedOptimizations, device: str) -> None:
    """Run every warm-up size at batch 1 and at the largest batch, so no request pays a compile.

    Two batch sizes per size: the first compile is for static shapes, the second turns the batch dimension
    dynamic, which then serves every batch size in between. A warm-up batch that does not fit is skipped
    (the scheduler splits such batches when they come).
    """
    for width, height in options.warmup_sizes:
        for batch in sorted({1, max_batch_images}):
            started = time.perf_counter()
            oom = None
            try:
                run(width, height, batch)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                oom = f"{type(exc).__name__}"
            seconds = time.perf_counter() - started
            if oom:
                free_device_memory(device)
                result.warmup.append(f"{width}x{height} x{batch}: out of memory, skipped")
                logger.warning("warm-up %dx%d x%d ran out of device memory; skipped", width, height, batch)
            else:
                result.warmup.append(f"{width}x{height} x{batch}: {seconds:.1f} s")
                logger.info("warm-up %dx%d x%d took %.1f s", width, height, batch, seconds)

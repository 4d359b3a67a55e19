"""What a model asks for (`OptimizationOptions`) and what of it can apply on this machine (`plan_optimizations`).

Planning is apart from applying: it needs no pipeline, so `GET /v1/models`, `imageserve doctor` and the
settings check can say what will be switched off, and why, before anything loads.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.types import split_size

if TYPE_CHECKING:
    from pipelines.device import Placement

FP8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class AttentionBackend:
    """One `attention_backend` value: its diffusers dispatcher name and what it needs."""

    dispatcher_name: str
    runs_on_cpu: bool = False
    sdpa_kernel: str | None = None  # torch.nn.attention.SDPBackend member, for models outside the dispatcher
    package: str | None = None  # import name of the optional package it needs


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


# One name per entry of ATTENTION_BACKENDS (a test keeps them equal).
AttentionBackendName = Literal[
    "native", "native_math", "native_cudnn", "native_flash", "native_efficient", "flash", "xformers", "sage"
]


class OptimizationOptions(BaseModel):
    """What a model asks for; `plan_optimizations` decides what of it can apply here.

    Defined once: the settings' `[models.<id>]` table (`server.settings.ModelSettings`) is built on these
    fields, so a new option is one field here (plus its entry in the table in `pipelines.optimizations`).
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, allow_inf_nan=False)

    attention_backend: AttentionBackendName = "native"
    compile: Literal["off", "regional", "full"] = "off"
    compile_vae: bool = True  # with compile on: the VAE decoder is compiled too
    fuse_qkv: bool = False
    quantize: Literal["none", "fp8"] = "none"
    channels_last_vae: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    warmup_sizes: tuple[tuple[int, int], ...] = ()  # "WxH" strings in the settings, e.g. ["1024x1024"]
    warmup_steps: int = Field(default=2, ge=1, le=50)
    debug_oom_above_images: int | None = Field(default=None, ge=0)  # testing aid: simulated out of memory

    @field_validator("warmup_sizes", mode="before")
    @classmethod
    def _parse_sizes(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(parse_size(size) if isinstance(size, str) else size for size in value)
        return value

    @property
    def compiles_vae(self) -> bool:
        return self.compile != "off" and self.compile_vae

    def summary(self) -> list[str]:
        """The non-default options, short, for listings."""
        parts = []
        if self.attention_backend != "native":
            parts.append(f"attention={self.attention_backend}")
        if self.compile != "off":
            parts.append(f"compile={self.compile}" + ("" if self.compile_vae else " (not the VAE)"))
        if self.quantize != "none":
            parts.append(self.quantize)
        flags = ("fuse_qkv", "channels_last_vae", "vae_tiling", "cpu_offload")
        parts += [name for name in flags if getattr(self, name)]
        if self.warmup_sizes:
            parts.append("warmup=" + ",".join(f"{w}x{h}" for w, h in self.warmup_sizes))
        return parts


def parse_size(size: str) -> tuple[int, int]:
    """`"1024x768"` -> (1024, 768) for a setting (any case); a ValueError names what is wrong."""
    parsed = split_size(size.lower())
    if parsed is None:
        raise ValueError(f"size {size!r} must look like '1024x1024'")
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


def cxx_compiler() -> str | None:
    """The C++ compiler inductor (and Triton's launcher) would use, or None."""
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
    cxx_compiler: Callable[[], str | None] = cxx_compiler,
) -> OptimizationPlan:
    """Decide what applies on `placement`'s device; the keyword hooks let tests pose as another machine."""
    has_package = has_package or (lambda name: importlib.util.find_spec(name) is not None)
    on_cuda = placement.on_cuda
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
    return OptimizationPlan(options.model_copy(update=changes), off)

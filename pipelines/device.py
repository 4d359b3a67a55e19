"""Device and dtype choice: bf16 (configurable) on CUDA, fp32 on CPU."""

from __future__ import annotations

import threading
from dataclasses import dataclass

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" or "cpu"
    dtype: str  # "bf16", "fp16" or "fp32"
    reason: str = ""

    def torch_dtype(self):
        import torch

        return getattr(torch, DTYPE_NAMES[self.dtype])

    def __str__(self) -> str:
        return f"{self.device}/{self.dtype}"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def choose_placement(device_setting: str, dtype_setting: str) -> Placement:
    """`auto` takes CUDA when present. CPU always runs fp32: half precision is slow or unsupported there."""
    has_cuda = cuda_available()
    if device_setting == "cuda" and not has_cuda:
        raise ValueError(
            "IMAGESERVE_DEVICE=cuda but torch sees no CUDA device (is the CUDA build of torch installed?)"
        )
    if device_setting == "cuda" or (device_setting == "auto" and has_cuda):
        return Placement("cuda", dtype_setting)
    reason = "no CUDA device" if device_setting == "auto" else "IMAGESERVE_DEVICE=cpu"
    return Placement("cpu", "fp32", reason=f"{reason}; CPU runs fp32")


_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: str) -> threading.Lock:
    """One lock per device: the pipeline calls of all local models on a GPU take turns.

    Each model has its own worker thread, but a GPU runs one model's batch at full speed anyway, and some
    per-call settings are process-wide (PyTorch's SDPA kernel choice, also toggled by diffusers' attention
    backends), so overlapping calls from two models could leave each other's kernels switched off.
    """
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())

"""Device and dtype choice: bf16 (configurable) on CUDA, fp32 on CPU.

`auto` takes CUDA when torch sees it. When it does not, the CPU runs everything, which is minutes per
image for the full-size models; if the machine shows signs of an NVIDIA GPU (`nvidia_gpu_evidence`), the
usual cause is a CPU build of torch (or a CUDA build too new for the driver), and `Placement.warning`
names the fix. `cpu_refusal` is why a full-size model will not load on a CPU it was not asked to use.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# Where an NVIDIA driver shows itself without asking torch (or starting a process).
NVIDIA_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl")
NVIDIA_PROC_VERSION = "/proc/driver/nvidia/version"
CUDA_WHEEL_INDEX = "https://download.pytorch.org/whl/cu130"  # CUDA 13.0 wheels: drivers >= 580
OLD_DRIVER_WHEEL = "cu126"  # CUDA 12.6 wheels, for drivers older than 580


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda", "cuda:N" or "cpu"
    dtype: str  # "bf16", "fp16" or "fp32"
    reason: str = ""
    requested: str = ""  # the IMAGESERVE_DEVICE value it was chosen for ("" when built directly)
    warning: str = ""  # set when `auto` fell back to the CPU on a machine that has an NVIDIA GPU

    def torch_dtype(self):
        import torch

        return getattr(torch, DTYPE_NAMES[self.dtype])

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def cpu_fallback(self) -> bool:
        """`auto` found no CUDA device and chose the CPU: nobody asked for the CPU."""
        return self.device == "cpu" and self.requested == "auto"

    def __str__(self) -> str:
        return f"{self.device}/{self.dtype}"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def nvidia_gpu_evidence(
    *,
    path: str | None = None,
    device_files: tuple[str, ...] = NVIDIA_DEVICE_FILES,
    proc_version: str = NVIDIA_PROC_VERSION,
) -> str | None:
    """What shows an NVIDIA GPU on this machine, whatever torch says; None when nothing does.

    Looks at device files, the kernel driver's version file and `nvidia-smi` on `path` (default: $PATH at
    call time); starts no process. Cached per arguments, so callers on hot paths may call it freely.
    """
    return _nvidia_gpu_evidence(os.environ.get("PATH", "") if path is None else path, device_files, proc_version)


@functools.lru_cache(maxsize=32)
def _nvidia_gpu_evidence(path: str, device_files: tuple[str, ...], proc_version: str) -> str | None:
    found: list[str] = []
    driver = driver_version(Path(proc_version))
    if driver:
        found.append(f"NVIDIA driver {driver} loaded")
    found += [f"{name} exists" for name in device_files if os.path.exists(name)]
    smi = shutil.which("nvidia-smi", path=path)
    if smi:
        found.append(f"nvidia-smi at {smi}")
    return "; ".join(found) or None


def driver_version(proc_version: Path) -> str | None:
    """The version in /proc/driver/nvidia/version ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06 ...")."""
    try:
        first = proc_version.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    words = [word for word in first.split() if word[:1].isdigit() and "." in word]
    return words[0] if words else "(version unknown)"


def _torch_build() -> tuple[str, str | None]:
    """(torch's version, the CUDA version it was built for or None for a CPU build)."""
    import torch

    return torch.__version__, torch.version.cuda


def gpu_without_cuda_warning(evidence: str, torch_version: str, torch_cuda: str | None) -> str:
    """The loud message for a GPU box whose torch sees no CUDA device, naming the fix."""
    release = torch_version.split("+")[0]
    build = ("a CPU build" if torch_cuda is None
             else f"built for CUDA {torch_cuda}, which this machine's driver may be too old for")
    return (f"this machine has an NVIDIA GPU ({evidence}) but torch {torch_version} sees no CUDA device "
            f"(it is {build}), so local models would run on the CPU at minutes per image. Install the CUDA "
            f"build of torch: `pip install torch=={release} --index-url {CUDA_WHEEL_INDEX}` ({OLD_DRIVER_WHEEL} "
            "instead of cu130 for drivers older than 580), or set IMAGESERVE_DEVICE=cpu to accept the CPU.")


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_placement(device_setting: str, dtype_setting: str) -> Placement:
    """`auto` takes CUDA when present. CPU always runs fp32: half precision is slow or unsupported there.
    `cuda:N` names one CUDA device (a model on several devices has one placement per device)."""
    has_cuda = cuda_available()
    if device_setting.startswith("cuda:"):
        index = device_setting.removeprefix("cuda:")
        count = cuda_device_count() if has_cuda else 0
        if not index.isdigit() or int(index) >= count:
            seen = f"torch sees {count} CUDA device{'s' * (count != 1)}" if has_cuda else "torch sees no CUDA device"
            raise ValueError(f"device '{device_setting}' does not exist here: {seen}")
        return Placement(f"cuda:{int(index)}", dtype_setting, requested=device_setting)
    if device_setting == "cuda" and not has_cuda:
        raise ValueError(
            "IMAGESERVE_DEVICE=cuda but torch sees no CUDA device (is the CUDA build of torch installed?)"
        )
    if device_setting == "cuda" or (device_setting == "auto" and has_cuda):
        return Placement("cuda", dtype_setting, requested=device_setting)
    reason = "no CUDA device" if device_setting == "auto" else "IMAGESERVE_DEVICE=cpu"
    warning = _fallback_warning() if device_setting == "auto" else None
    return Placement("cpu", "fp32", reason=f"{reason}; CPU runs fp32", requested=device_setting,
                     warning=warning or "")


def device_warning(device_setting: str) -> str | None:
    """The GPU-box-with-CPU-torch warning for this machine and setting, or None when all is well."""
    if device_setting != "auto" or cuda_available():
        return None
    return _fallback_warning()


def _fallback_warning() -> str | None:
    evidence = nvidia_gpu_evidence()
    return gpu_without_cuda_warning(evidence, *_torch_build()) if evidence else None


def cpu_refusal(placement: Placement, model_id: str, *, full_size: bool) -> str | None:
    """Why model `model_id` must not load on `placement`, or None when it may.

    A full-size model (SD3, FLUX) on a CPU nobody asked for is refused: minutes per image looks like a hung
    server. `IMAGESERVE_DEVICE=cpu` accepts the CPU; the tiny models run anywhere.
    """
    if not full_size or not placement.cpu_fallback:
        return None
    if placement.warning:
        return f"Model '{model_id}' is not run on the CPU unless asked: {placement.warning}"
    return (f"Model '{model_id}' is not run on the CPU unless asked: torch sees no CUDA device, and a full-size "
            "model on the CPU takes minutes per image. Set IMAGESERVE_DEVICE=cpu to accept the CPU (the tiny-flux "
            "and tiny-sd3 models run on any CPU).")


_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: str) -> threading.Lock:
    """One lock per device: the pipeline calls of all local models on a GPU take turns.

    Each model has its own worker thread, but a GPU runs one model's batch at full speed anyway, and some
    per-call settings are process-wide (PyTorch's SDPA kernel choice, also toggled by diffusers' attention
    backends), so overlapping calls from two models could leave each other's kernels switched off.
    """
    key = "cuda:0" if device == "cuda" else device  # plain "cuda" is the first device
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(key, threading.Lock())

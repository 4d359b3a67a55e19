"""`imageserve doctor`: what this machine can run, and why not, in one report (also for bug reports).

Each `*_report` function returns plain data (JSON-ready); `render_text` is the one human renderer. Whatever
is missing reads "not available: <reason>", and nothing here fails the command: it is a diagnosis. No
secret (API keys, database URL, HF_TOKEN, signing key, pepper) is read into the report.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipelines.device import NVIDIA_PROC_VERSION, choose_placement, cpu_refusal, device_warning, driver_version
from pipelines.loading import PIPELINE_CLASSES, locate_weights
from pipelines.optimizations import FP8_MIN_CAPABILITY, plan_optimizations
from pipelines.tiny import TINY_KINDS
from server import __version__
from server.backends.factory import optimization_options
from server.cli.common import add_config_option, settings_from_args
from server.registry import build_registry
from server.settings import Settings

logger = logging.getLogger(__name__)

NA = "not available: "
COMMAND_TIMEOUT_S = 10.0
NVIDIA_SMI_QUERY = "driver_version,name,memory.total,memory.free,compute_cap"
PACKAGES = ("torch", "diffusers", "transformers", "torchao", "xformers", "triton", "flash-attn", "sageattention")
FLASH_MIN_CAPABILITY = (8, 0)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].strip()


def _run(command: list[str]) -> str:
    """The first line of a command's output; raises OSError or subprocess errors."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=True)
    return _first_line(done.stdout or done.stderr)


def torch_report() -> dict[str, Any]:
    """torch's build and the CUDA devices it sees, with capability and free memory."""
    import torch

    report: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda or "CPU build"}
    if not torch.cuda.is_available():
        why = ("this torch is a CPU build" if torch.version.cuda is None else
               f"torch sees no CUDA device (no GPU, or a driver older than CUDA {torch.version.cuda} needs)")
        report["cuda"] = NA + why
        report["gpus"] = []
        return report
    report["cuda"] = f"available, {torch.cuda.device_count()} device(s)"
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpu: dict[str, Any] = {"index": index, "name": props.name,
                               "compute_capability": f"{props.major}.{props.minor}",
                               "memory_total_gib": round(props.total_memory / 2**30, 1)}
        try:
            free, _total = torch.cuda.mem_get_info(index)
            gpu["memory_free_gib"] = round(free / 2**30, 1)
        except RuntimeError as exc:
            gpu["memory_free_gib"] = NA + _first_line(str(exc))
        gpus.append(gpu)
    report["gpus"] = gpus
    return report


def nvidia_smi_report(path: str | None = None) -> dict[str, Any]:
    """The driver and GPUs as `nvidia-smi` sees them (independent of torch); the driver's /proc file else."""
    smi = shutil.which("nvidia-smi", path=path)
    proc_driver = driver_version(Path(NVIDIA_PROC_VERSION))
    fallback = {"driver_version": proc_driver or NA + "no NVIDIA driver loaded (/proc/driver/nvidia/version)"}
    if smi is None:
        return {"nvidia_smi": NA + "nvidia-smi is not on PATH", **fallback, "gpus": []}
    command = [smi, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=True)
    except subprocess.TimeoutExpired:
        return {"nvidia_smi": NA + f"{smi} did not answer within {COMMAND_TIMEOUT_S:g} s", **fallback, "gpus": []}
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = _first_line(getattr(exc, "stderr", None) or getattr(exc, "stdout", None) or str(exc))
        return {"nvidia_smi": NA + f"{smi} failed: {detail}", **fallback, "gpus": []}
    gpus = []
    for line in done.stdout.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 5:
            gpus.append(dict(zip(("driver_version", "name", "memory_total", "memory_free", "compute_capability"),
                                 fields, strict=True)))
    driver = gpus[0]["driver_version"] if gpus else fallback["driver_version"]
    return {"nvidia_smi": smi, "driver_version": driver, "gpus": gpus}


def packages_report() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing heavy is imported)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = NA + "not installed"
    return versions


def features_report(torch_info: dict[str, Any]) -> dict[str, str]:
    """Whether fp8, cuDNN and flash attention are usable here, each with its reason when not."""
    import torch

    gpus = torch_info["gpus"]
    no_cuda = None if gpus else "no CUDA device (" + torch_info["cuda"].removeprefix(NA) + ")"
    capabilities = [tuple(int(part) for part in gpu["compute_capability"].split(".")) for gpu in gpus]
    best = max(capabilities, default=None)

    def needs(minimum: tuple[int, int], what: str) -> str | None:
        if no_cuda:
            return no_cuda
        if best is not None and best < minimum:
            return f"{what} needs compute capability >= {minimum[0]}.{minimum[1]}; the best GPU here has " \
                   f"{best[0]}.{best[1]}"
        return None

    fp8 = needs(FP8_MIN_CAPABILITY, "fp8")
    if fp8 is None and importlib.util.find_spec("torchao") is None:
        fp8 = "torchao is not installed (pip install 'imageserve[gpu]')"
    if torch.backends.cudnn.is_available():
        cudnn = f"usable, version {torch.backends.cudnn.version()}" if not no_cuda else NA + no_cuda
    else:
        cudnn = NA + "this torch has no cuDNN" + (" (CPU build)" if torch.version.cuda is None else "")
    flash = needs(FLASH_MIN_CAPABILITY, "the SDPA flash kernel")
    if flash is None and not torch.backends.cuda.flash_sdp_enabled():
        flash = "the SDPA flash kernel is disabled in this process"
    return {"fp8": NA + fp8 if fp8 else "usable (torchao, compute capability >= 8.9)",
            "cudnn": cudnn,
            "flash_attention": NA + flash if flash else "usable (PyTorch SDPA flash kernel)"}


def compiler_report() -> dict[str, str]:
    """The C++ compiler inductor needs (same search as the `compile` option), Triton, the inductor cache."""
    report: dict[str, str] = {}
    names = [name for name in (os.environ.get("CXX"), "g++", "clang++") if name]
    found = next(((name, path) for name in names if (path := shutil.which(name))), None)
    if found is None:
        report["cxx"] = NA + "no $CXX, g++ or clang++ on PATH; torch.compile needs one (e.g. apt-get install g++)"
    else:
        try:
            report["cxx"] = f"{found[1]}: {_run([found[1], '--version'])}"
        except (OSError, subprocess.SubprocessError) as exc:
            report["cxx"] = f"{found[1]}: version unknown ({type(exc).__name__})"
    report["triton"] = ("installed" if importlib.util.find_spec("triton") else
                        NA + "not installed (torch.compile on CUDA needs it; CUDA builds of torch bring it)")
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not cache:
        try:
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir

            cache = default_cache_dir()
        except (ImportError, AttributeError) as exc:
            cache = NA + f"torch does not say ({type(exc).__name__})"
    if not cache.startswith(NA):
        cache += "" if Path(cache).is_dir() else " (not created yet)"
    report["inductor_cache"] = cache
    return report


def _tree_bytes(folder: Path) -> int:
    """Bytes in regular files under `folder`; links (the hub's snapshots point into blobs) count zero."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def human_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def model_cache_report(model_cache: Path) -> dict[str, Any]:
    """Hub repos (`models--org--name`) and tiny models in the cache, with their sizes on disk."""
    cache = Path(model_cache)
    if not cache.is_dir():
        return {"path": str(cache), "entries": NA + f"{cache} does not exist yet (`imageserve pull <model>`)"}
    entries = []
    for child in sorted(cache.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if child.name.startswith("models--"):
            entries.append(("hub repo", child.name.removeprefix("models--").replace("--", "/"), child))
        elif child.name == "tiny":
            entries += [("tiny model", sub.name, sub) for sub in sorted(child.iterdir()) if sub.is_dir()]
        else:
            entries.append(("folder", child.name, child))
    rows = [{"name": name, "type": kind, "size_bytes": _tree_bytes(path), "path": str(path)}
            for kind, name, path in entries]
    for row in rows:
        row["size"] = human_size(row["size_bytes"])
    total = sum(row["size_bytes"] for row in rows)
    return {"path": str(cache), "entries": rows, "total_bytes": total, "total": human_size(total)}


def models_report(settings: Settings) -> list[dict[str, Any]]:
    """Each local diffusers model: where it would run, whether it may, and what this machine switches off."""
    rows = []
    for spec in build_registry(settings):
        if spec.kind not in PIPELINE_CLASSES:  # vendors and the simulated device have nothing to diagnose here
            continue
        model_settings = settings.model_settings(spec.id)
        row: dict[str, Any] = {"id": spec.id, "kind": spec.kind,
                               "weights": locate_weights(spec.kind, spec.source, settings.model_cache).detail}
        options = optimization_options(model_settings)
        row["configured"] = options.summary()
        try:
            placement = choose_placement(settings.device, model_settings.dtype or settings.dtype)
        except ValueError as exc:
            row["runs_on"] = NA + str(exc)
            rows.append(row)
            continue
        row["runs_on"] = str(placement)
        refusal = cpu_refusal(placement, spec.id, full_size=spec.kind not in TINY_KINDS)
        if refusal:
            row["refused"] = refusal
        row["switched_off"] = plan_optimizations(options, placement).switched_off
        rows.append(row)
    return rows


def diagnose(settings: Settings) -> dict[str, Any]:
    """The whole report. Only non-secret settings are read."""
    torch_info = torch_report()
    warnings = [warning] if (warning := device_warning(settings.device)) else []
    if settings.device == "cuda" and not torch_info["gpus"]:
        warnings.append("IMAGESERVE_DEVICE=cuda but torch sees no CUDA device: local models will not load")
    return {
        "imageserve": {"version": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
                       "device_setting": settings.device, "dtype_setting": settings.dtype,
                       "hf_token": "set" if os.environ.get("HF_TOKEN") else "not set"},
        "warnings": warnings,
        "torch": torch_info,
        "nvidia_driver": nvidia_smi_report(),
        "features": features_report(torch_info),
        "packages": packages_report(),
        "compiler": compiler_report(),
        "model_cache": model_cache_report(settings.model_cache),
        "models": models_report(settings),
    }


def _render_value(value: Any, indent: str, lines: list[str]) -> None:
    if isinstance(value, dict):
        width = max((len(str(key)) for key in value), default=0)
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{indent}{key}:")
                _render_value(item, indent + "  ", lines)
            else:
                lines.append(f"{indent}{str(key).ljust(width)}  {item if item not in ({}, []) else 'none'}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                first, *rest = item.items()
                lines.append(f"{indent}- {first[0]}: {first[1]}")
                _render_value(dict(rest), indent + "  ", lines)
            else:
                lines.append(f"{indent}- {item}")
    else:
        lines.append(f"{indent}{value}")


def render_text(report: dict[str, Any]) -> str:
    """Human-readable sections, warnings first and loud."""
    lines = ["imageserve doctor"]
    for warning in report["warnings"]:
        lines += ["", "!" * 78, f"WARNING: {warning}", "!" * 78]
    for section, value in report.items():
        if section == "warnings":
            continue
        lines += ["", f"[{section}]"]
        _render_value(value if value not in ({}, []) else "none", "  ", lines)
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print what this machine can and cannot do; exit 0 even when things are missing (it is a diagnosis)."""
    report = diagnose(settings_from_args(args))
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


def add_doctor_command(commands: Any) -> None:
    """Register `doctor` on the `imageserve` parser's subcommands."""
    doctor = commands.add_parser("doctor", help="diagnose torch, CUDA, GPUs, compilers, model cache and options")
    doctor.add_argument("--json", action="store_true", help="machine-readable output (for bug reports)")
    add_config_option(doctor, help_text=None)
    doctor.set_defaults(handler=cmd_doctor)

"""Environment probe for the GPU benchmark: what is installed and what the GPU is, in about ten seconds.

Run it alone first on a machine lent for a short while (`python benchmarks/environment_probe.py`), or let
`benchmarks/gpu_benchmark.py` run it before any configuration: it imports torch, diffusers and torchao and
reports their versions; checks that torch sees a CUDA device and reports its name, compute capability, free
and total memory, the CUDA and cuDNN versions and the driver (`nvidia-smi`, under a timeout); and looks for
the C compiler Triton builds its launchers with (and the C++ one Inductor's CPU backend needs).

Requirements: torch, diffusers, and a CUDA device (not in smoke mode). When one is missing the probe names
everything missing in one message and exits with code 2. torchao is optional: without it the fp8
configurations are recorded as skipped; a missing compiler is a warning (compiled configurations would fail
and be recorded as errors).

    python benchmarks/environment_probe.py                 # prints a summary, exit 0 or 2
    python benchmarks/environment_probe.py --json env.json # also writes the full result
    python benchmarks/environment_probe.py --no-cuda       # CPU machine: CUDA missing is not an error
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REQUIRED_PACKAGES = ("torch", "diffusers")
OPTIONAL_PACKAGES = {"torchao": "fp8 quantization; without it the fp8 configurations are recorded as skipped",
                     "triton": "torch.compile's GPU code generator"}
NVIDIA_SMI_QUERY = "name,driver_version,memory.total,memory.free"

ImportModule = Callable[[str], ModuleType]
Runner = Callable[..., subprocess.CompletedProcess]


@dataclass
class Environment:
    """What the probe found. `missing` holds the unmet requirements (exit code 2), `warnings` the rest."""

    date: str
    python: str
    packages: dict[str, str | None] = field(default_factory=dict)  # name -> version, None when not importable
    import_errors: dict[str, str] = field(default_factory=dict)
    cuda: dict[str, Any] = field(default_factory=dict)
    compilers: dict[str, str | None] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    probe_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        gpu = self.cuda.get("gpu")
        lines = [
            "environment: python {} | {}".format(self.python, ", ".join(
                f"{name} {version or 'MISSING'}" for name, version in self.packages.items())),
            (f"GPU: {gpu}, compute capability {self.cuda.get('compute_capability')}, driver "
             f"{self.cuda.get('driver') or 'unknown'}, CUDA {self.cuda.get('cuda_runtime')}, cuDNN "
             f"{self.cuda.get('cudnn')}, {self.cuda.get('memory_free_gib')} of {self.cuda.get('memory_total_gib')} "
             "GiB free") if gpu else "GPU: none visible to torch",
            f"compilers: C (Triton) {self.compilers.get('cc') or 'MISSING'}, C++ (Inductor on the CPU) "
            f"{self.compilers.get('cxx') or 'MISSING'}",
        ]
        lines += [f"warning: {warning}" for warning in self.warnings]
        if self.missing:
            lines.append("MISSING (required): " + "; ".join(self.missing))
        lines.append(f"probe took {self.probe_s:.1f} s")
        return "\n".join(lines)


def _import(import_module: ImportModule, name: str, env: Environment) -> ModuleType | None:
    try:
        module = import_module(name)
    except Exception as exc:  # ImportError, or a broken install (say torchao built for another torch)
        env.packages[name] = None
        env.import_errors[name] = f"{type(exc).__name__}: {exc}"[:300]
        return None
    env.packages[name] = str(getattr(module, "__version__", "unknown"))
    return module


def _nvidia_smi(run: Runner, which: Callable[[str], str | None], timeout_s: float) -> dict[str, Any]:
    """The driver and the GPU as `nvidia-smi` sees them; empty when it is missing, fails or hangs."""
    if which("nvidia-smi") is None:
        return {"nvidia_smi": "not found"}
    try:
        done = run(["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
                   capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"nvidia_smi": f"failed: {type(exc).__name__}: {exc}"[:200]}
    first = done.stdout.strip().splitlines()[:1]
    if done.returncode != 0 or not first:
        return {"nvidia_smi": f"exit code {done.returncode}: {done.stderr.strip()[:200]}"}
    fields = [part.strip() for part in first[0].split(",")]
    return {"driver": fields[1] if len(fields) > 1 else None, "nvidia_smi": first[0]}


def _cuda(torch: ModuleType) -> dict[str, Any]:
    info: dict[str, Any] = {"available": bool(torch.cuda.is_available()), "cuda_build": torch.version.cuda}
    if not info["available"]:
        return info
    properties = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if cudnn:  # 91002 -> 9.10.2 (cuDNN 9 counts major * 10000; cuDNN 8 major * 1000)
        major, rest = divmod(cudnn, 10000 if cudnn >= 90000 else 1000)
        cudnn = f"{major}.{rest // 100}.{rest % 100}"
    info.update(gpu=properties.name, device_count=torch.cuda.device_count(),
                compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                cuda_runtime=torch.version.cuda, cudnn=cudnn,
                memory_free_gib=round(free / 2**30, 1), memory_total_gib=round(total / 2**30, 1))
    return info


def _compilers(which: Callable[[str], str | None]) -> dict[str, str | None]:
    def first(*names: str | None) -> str | None:
        return next((path for name in names if name and (path := which(name))), None)

    return {"cc": first(os.environ.get("CC"), "gcc", "cc", "clang"),  # Triton builds its launchers with it
            "cxx": first(os.environ.get("CXX"), "g++", "c++", "clang++")}  # Inductor's CPU backend


def probe(*, require_cuda: bool = True, import_module: ImportModule = importlib.import_module,
          run: Runner = subprocess.run, which: Callable[[str], str | None] = shutil.which,
          timeout_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> Environment:
    """Check the machine; the keyword hooks let tests pose as another one. Never raises for a missing piece."""
    started = clock()
    env = Environment(date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), python=platform.python_version())
    torch = _import(import_module, "torch", env)
    _import(import_module, "diffusers", env)
    for name in OPTIONAL_PACKAGES:
        _import(import_module, name, env)
    for name in REQUIRED_PACKAGES:
        if env.packages[name] is None:
            env.missing.append(f"{name} is not importable ({env.import_errors[name]})")
    for name, purpose in OPTIONAL_PACKAGES.items():
        if env.packages[name] is None and (name != "triton" or require_cuda):
            env.warnings.append(f"{name} is not importable ({purpose})")
    if torch is not None:
        try:
            env.cuda = _cuda(torch)
        except Exception as exc:  # a driver that answers badly: report it, do not crash the probe
            env.cuda = {"available": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        if not env.cuda["available"]:
            problem = (f"CUDA: torch {env.packages['torch']} sees no CUDA device (a CPU-only torch build, "
                       "or no driver)" + (f": {env.cuda['error']}" if "error" in env.cuda else ""))
            (env.missing if require_cuda else env.warnings).append(problem)
    remaining = max(1.0, min(5.0, timeout_s - (clock() - started)))
    env.cuda.update(_nvidia_smi(run, which, remaining))
    env.compilers = _compilers(which)
    if env.compilers["cc"] is None and env.cuda.get("available"):
        env.warnings.append("no C compiler (gcc, cc, clang or $CC): Triton cannot build its launchers, so the "
                            "compiled configurations will fail and be recorded as errors")
    env.probe_s = round(clock() - started, 2)
    if env.probe_s > timeout_s:
        env.warnings.append(f"the probe took {env.probe_s:.1f} s, more than its {timeout_s:g} s budget")
    return env


def main(argv: list[str] | None = None, *, import_module: ImportModule = importlib.import_module) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-cuda", action="store_true", help="CUDA missing is a warning, not an error")
    parser.add_argument("--json", type=Path, default=None, help="also write the full result here")
    args = parser.parse_args(argv)
    env = probe(require_cuda=not args.no_cuda, import_module=import_module)
    print(env.summary())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(env.as_dict(), indent=2) + "\n")
    if not env.ok:
        print("error: missing: " + "; ".join(env.missing), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

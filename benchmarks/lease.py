"""The `--preset lease` plan of `benchmarks/gpu_benchmark.py`: what fits one 15-minute GPU lease, and the deadline.

The full benchmark (4 configurations x 2 models x batch 1, 2, 4, three timed calls each) takes 25-35 minutes
on one H200. The lease preset measures only what answers the main question, in this order, at 1024x1024,
28 steps, bf16, batch 1, one warm-up call then 2 timed calls:

    flux-dev    eager            bf16, no optimization                      anchor: H100 bf16 eager 6.6 s
    flux-dev    suggested        regional compile + fp8 + fused QKV + channels-last VAE
                                                                             anchor: H100 compile+fp8+QKV 3.0 s
    flux-dev    suggested+cudnn  the same with the cuDNN SDPA kernel         anchor: the same 3.0 s
    sd3-medium  eager
    sd3-medium  suggested        (SD3 declares no repeated blocks in diffusers 0.42: compile falls back to the
                                  whole transformer, which takes longer to compile)

Time budget on one H200, estimated (no GPU has run it yet; each row records its real `config_s`, so the
estimates can be corrected after the first lease): the environment probe and the FLOP count on the meta device
take about 20 s. FLUX eager: building the 12B random-weight transformer directly on the GPU in bf16 takes
seconds, then 3 calls at about 6.6 s (an H100's figure; the H200 has the same bf16 rate): about 40 s.
suggested: fusing and fp8-quantizing the linear layers takes seconds; compiling the two kinds of repeated
blocks takes tens of seconds in bf16 and longer with fp8's tensor subclasses (plus the VAE, when compile
covers it), paid by the warm-up call; then 2 calls at about 3 s: about 150 s. suggested+cudnn: another
fresh pipeline, its compile partly served by Inductor's on-disk cache: about 120 s. SD3 eager: about 20 s.
SD3 suggested (whole-transformer compile with fp8): about 120 s. In all about 470 s, just under 8 minutes.

The deadline guard (`--deadline-s`, 480 s by default for this preset, counted from the start of the script)
keeps the lease from overrunning: a configuration starts only if the time already spent plus its estimate
(`expected_s`, GPU runs only) is within the deadline; otherwise it and its rows are recorded as
`skipped: deadline ...` and the run goes on to the next one (a cheaper one may still fit). A configuration
that is running is never interrupted (a CUDA call cannot be stopped cleanly); the outer `timeout` of
`benchmarks/lease.sh` is the hard stop, and the report is saved after every configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.optimizations import OptimizationOptions

LEASE_DEADLINE_S = 480.0
LEASE_REPEATS = 2
PUBLISHED_H100 = {  # FLUX.1-dev, 1024x1024, 28 steps, batch 1, one H100, seconds per image (published)
    "bf16 eager": 6.6,
    "compile": 4.2,
    "compile + fp8 + fused QKV": 3.0,
}


@dataclass(frozen=True)
class Job:
    """One configuration of one model: timed at every batch size of the run, or skipped with a reason."""

    model: str
    config: str  # the short name in rows and tables
    options: OptimizationOptions
    label: str = ""  # what it is, in words
    expected_s: float = 0.0  # estimated seconds on an H200: build, optimize, warm-up and timed calls
    anchor: str | None = None  # key of PUBLISHED_H100 this row compares with

    @property
    def needs_torchao(self) -> bool:
        return self.options.quantize == "fp8"


def suggested_options(**overrides: Any) -> OptimizationOptions:
    """The profile the docs suggest for a Hopper GPU; keyword construction only (the class gains fields)."""
    return OptimizationOptions(compile="regional", quantize="fp8", fuse_qkv=True, channels_last_vae=True, **overrides)


EAGER_LABEL = "eager, no optimization (bf16 on a GPU)"
SUGGESTED_LABEL = "regional compile + fp8 + fused QKV + channels-last VAE"
LEASE_JOBS: tuple[Job, ...] = (
    Job("flux-dev", "eager", OptimizationOptions(), EAGER_LABEL, 40, "bf16 eager"),
    Job("flux-dev", "suggested", suggested_options(), SUGGESTED_LABEL, 150, "compile + fp8 + fused QKV"),
    Job("flux-dev", "suggested+cudnn", suggested_options(attention_backend="native_cudnn"),
        SUGGESTED_LABEL + " + cuDNN attention", 120, "compile + fp8 + fused QKV"),
    Job("sd3-medium", "eager", OptimizationOptions(), EAGER_LABEL, 20),
    Job("sd3-medium", "suggested", suggested_options(), SUGGESTED_LABEL + " (whole-transformer compile)", 120),
)


class Deadline:
    """Seconds since `started` on an injectable clock; `None` seconds means no deadline."""

    def __init__(self, seconds: float | None, clock: Callable[[], float], started: float) -> None:
        self.seconds, self.clock, self.started = seconds, clock, started

    def elapsed(self) -> float:
        return self.clock() - self.started

    def skip_reason(self, expected_s: float) -> str | None:
        """Why a configuration expected to take `expected_s` must not start now, or None if it fits."""
        if self.seconds is None:
            return None
        elapsed = self.elapsed()
        if elapsed >= self.seconds:
            return f"deadline: {elapsed:.0f} s elapsed of {self.seconds:g} s"
        if elapsed + expected_s > self.seconds:
            return (f"deadline: {elapsed:.0f} s elapsed + about {expected_s:.0f} s expected would pass "
                    f"{self.seconds:g} s")
        return None


def skip_reason(job: Job, *, has_torchao: bool, deadline: Deadline, on_gpu: bool) -> str | None:
    """Why `job` is not run here and now, or None. Estimates count on a GPU only (smoke runs take seconds)."""
    if job.needs_torchao and not has_torchao:
        return "torchao not installed"
    return deadline.skip_reason(job.expected_s if on_gpu else 0.0)

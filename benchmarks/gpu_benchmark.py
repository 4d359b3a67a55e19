"""GPU benchmark: full-size FLUX.1-dev and SD3-medium architectures, random weights, every optimization config.

Builds the real architectures from their configs with random weights (nothing is downloaded), applies each
configuration through the server's own code (`pipelines.optimizations.plan_optimizations` and
`apply_optimizations`), and times whole pipeline calls at 1024x1024, 28 steps, bf16, for batch 1, 2 and 4.
The first call of each (config, batch) is a warm-up (compilation, autotuning) and is excluded. Results go
to `benchmarks/results/gpu-benchmark-<gpu>-<date>.json` and `.md`, with the GPU's name, the torch,
diffusers and torchao versions and the date, saved after every configuration. Each row also carries the
call's FLOPs, counted on the meta device by `benchmarks/compute_floor.py`, and the TFLOP/s achieved. A
configuration that fails is recorded as an `error` in its rows and the run goes on.

What is timed: the denoising transformer (28 steps) plus the VAE decode and the conversion to PIL images,
that is everything but the text encoders. The prompt embeddings are random tensors of the real shapes,
passed as `prompt_embeds` / `pooled_prompt_embeds` (and the negative ones where SD3 runs classifier-free
guidance): a random-init T5-XXL alone is 4.7B parameters, and text encoding is a few percent of a
28-step call. Random weights run at the same speed as trained ones; the images are noise.

Reference points for FLUX.1-dev, 1024x1024, 28 steps, batch 1, one H100 (published): diffusers bf16 eager
about 6.6 s; torch.compile about 4.2 s; compile + fp8 dynamic quantization + fused QKV about 3.0 s.

Every run starts with the environment probe (`benchmarks/environment_probe.py`: package versions, GPU,
driver, cuDNN, free memory, compilers), whose result goes into the report. Without CUDA, or without
diffusers, it names what is missing and exits with code 2 before anything is built.

No GPU was available when this script was written, so `benchmarks/results/` holds no GPU numbers yet.
The full run (`python benchmarks/gpu_benchmark.py`) takes an estimated 25-35 minutes on one H200; FLUX.1-dev's
transformer alone is 22.2 GiB in bf16, the rows record the real peak memory. `--preset lease` measures what
fits one 15-minute GPU lease in under 8 minutes: FLUX.1-dev eager, the suggested profile, and the suggested
profile with cuDNN attention, then SD3-medium eager and suggested, batch 1, 2 timed calls, with a deadline
(`--deadline-s`, default 480 s) after which the remaining configurations are recorded as skipped;
`benchmarks/lease.py` has the plan and its time budget, `benchmarks/lease.sh` runs it on a lent machine.
`--smoke` runs the same code path on the CPU with tiny widths, 128 px and 2 steps, so the test suite
exercises it anywhere; its numbers mean nothing. `--cpu` runs the full-size architectures on the CPU in fp32
(SD3-medium needs about 10 GB of RAM, FLUX.1-dev about 50): slow, but it checks the full-size path end to end
where there is no GPU; its times are not GPU results.

    python benchmarks/gpu_benchmark.py                                  # everything
    python benchmarks/gpu_benchmark.py --preset lease                   # one lease: 5 configs, < 8 minutes
    python benchmarks/gpu_benchmark.py --models flux-dev --configs eager compile --batch-sizes 1
    python benchmarks/gpu_benchmark.py --preset lease --smoke --out /tmp/results   # CPU, tiny, seconds
    python benchmarks/gpu_benchmark.py --cpu --models sd3-medium        # CPU, full size, 256 px, 1 step
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.architectures import ARCHITECTURES, Architecture, build_pipeline, call_arguments  # noqa: E402
from benchmarks.compute_floor import META, CallFlops, count_call_flops  # noqa: E402
from benchmarks.environment_probe import Environment, probe  # noqa: E402
from benchmarks.lease import LEASE_DEADLINE_S, LEASE_JOBS, LEASE_REPEATS, Deadline, Job, skip_reason  # noqa: E402
from benchmarks.report import to_markdown, write_report  # noqa: E402
from pipelines.device import Placement  # noqa: E402
from pipelines.memory import free_device_memory, is_out_of_memory  # noqa: E402
from pipelines.optimizations import (  # noqa: E402
    OptimizationOptions,
    apply_optimizations,
    plan_optimizations,
)

logger = logging.getLogger("gpu_benchmark")

RESULTS_DIR = ROOT / "benchmarks" / "results"
CONFIGS: dict[str, OptimizationOptions] = {
    "eager": OptimizationOptions(),
    "compile": OptimizationOptions(compile="regional"),
    "compile-fp8": OptimizationOptions(compile="regional", quantize="fp8"),
    "compile-fp8-fused": OptimizationOptions(compile="regional", quantize="fp8", fuse_qkv=True),
}
PRESETS = ("lease",)
SMOKE_COMPILE_OFF = ("smoke run: torch.compile left out to keep the CPU check short (tens of seconds per compiled "
                     "configuration on a small CPU); --smoke-compile keeps it")


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _failure(exc: BaseException) -> str:
    """What goes in a row's `error`: a config that breaks (say, a torchao API change) must not end the run."""
    return "out of memory" if is_out_of_memory(exc) else f"failed: {type(exc).__name__}: {exc}"[:300]


def time_config(arch: Architecture, config: str, placement: Placement, *, options: OptimizationOptions, tiny: bool,
                batch_sizes: list[int], size: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    """Build a fresh pipeline (compile and fp8 change it in place), apply `options`, time each batch size.

    Failures are recorded in the rows (`error`) rather than raised, so one broken configuration leaves the
    others' numbers intact.
    """
    import torch

    base = {"model": arch.name, "config": config}
    pipe = None
    try:
        pipe = build_pipeline(arch, placement, tiny)
        applied = apply_optimizations(pipe, plan_optimizations(options, placement), placement)
    except Exception as exc:
        logger.exception("%s %s: building or optimizing the pipeline failed", arch.name, config)
        failure = _failure(exc)
    else:
        failure = None
    if failure:  # freed here, once the traceback (and the tensors its frames hold) is gone
        del pipe
        free_device_memory(placement.device)
        return [{**base, "batch": batch, "applied": {}, "switched_off": {}, "error": failure}
                for batch in batch_sizes]
    rows = []
    for batch in batch_sizes:
        row: dict[str, Any] = {**base, "batch": batch, "applied": dict(applied.applied),
                               "switched_off": dict(applied.switched_off)}
        if placement.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs: list[float] = []
        try:
            for attempt in range(repeats + 1):
                arguments = call_arguments(arch, placement, tiny, batch, size, steps)
                _synchronize(placement.device)
                started = time.perf_counter()
                with applied.call_context():
                    images = pipe(**arguments).images
                _synchronize(placement.device)
                elapsed = time.perf_counter() - started
                assert len(images) == batch and images[0].size == (size, size)
                if attempt == 0:
                    row["warmup_s"] = round(elapsed, 3)
                else:
                    runs.append(elapsed)
        except Exception as exc:
            row["error"] = _failure(exc)
            logger.warning("%s %s batch %d: %s", arch.name, config, batch, row["error"],
                           exc_info=not is_out_of_memory(exc))
        if "error" in row:
            free_device_memory(placement.device)  # after the except block: its traceback held the tensors
        else:
            mean = statistics.fmean(runs)
            row.update(runs_s=[round(run, 4) for run in runs], mean_s=round(mean, 4), min_s=round(min(runs), 4),
                       s_per_image=round(mean / batch, 4), images_per_s=round(batch / mean, 4))
            logger.info("%s %-18s batch %d: %.3f s per call, %.3f s per image", arch.name, config, batch, mean,
                        mean / batch)
        if placement.device == "cuda":
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows.append(row)
    del pipe, applied
    free_device_memory(placement.device)
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()  # each config compiles its own fresh pipeline
    return rows


def add_compute_rates(rows: list[dict[str, Any]], flops: dict[tuple[str, int], CallFlops]) -> None:
    """TFLOP per call (counted on the meta device) and the TFLOP/s each timed row achieved."""
    for row in rows:
        call_tflop = flops[row["model"], row["batch"]].call_tflop
        row["tflop_per_call"] = call_tflop
        if "mean_s" in row:
            row["achieved_tflops"] = call_tflop / row["mean_s"]


def machine_info(placement: Placement, env: Environment) -> dict[str, Any]:
    """The machine as the report's header shows it; the probe's full result goes beside it (`environment`)."""
    import torch

    info: dict[str, Any] = {"device": placement.device, "torch": env.packages["torch"],
                            "diffusers": env.packages["diffusers"], "torchao": env.packages.get("torchao"),
                            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                            "probed": env.date}
    if placement.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, compute_capability=".".join(map(str, torch.cuda.get_device_capability())),
                    gpu_memory_gib=round(properties.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    driver=env.cuda.get("driver"), cudnn=env.cuda.get("cudnn"),
                    gpu_memory_free_gib=env.cuda.get("memory_free_gib"))
    else:
        info["gpu"] = None
    return info


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    if args.preset == "lease":
        return list(LEASE_JOBS)
    return [Job(model, config, CONFIGS[config]) for model in args.models for config in args.configs]


def run_job(job: Job, args: argparse.Namespace, placement: Placement, *, reason: str | None,
            clock: Callable[[], float]) -> list[dict[str, Any]]:
    """The rows of one configuration: timed, or skipped with `reason`; each says what it is and what it asked."""
    started = clock()
    options, compile_off = job.options, None
    if args.smoke and not args.smoke_compile and options.compile != "off":
        options, compile_off = options.model_copy(update={"compile": "off"}), SMOKE_COMPILE_OFF
    if reason:
        logger.warning("%s %s skipped: %s", job.model, job.config, reason)
        rows = [{"model": job.model, "config": job.config, "batch": batch, "applied": {}, "switched_off": {},
                 "skipped": reason} for batch in args.batch_sizes]
    else:
        rows = time_config(ARCHITECTURES[job.model], job.config, placement, options=options, tiny=args.smoke,
                           batch_sizes=args.batch_sizes, size=args.size, steps=args.steps, repeats=args.repeats)
    for row in rows:
        row.update(label=job.label, requested=job.options.summary() or ["none"])
        if compile_off and not reason:
            row["switched_off"]["compile"] = compile_off
        if job.anchor:
            row["anchor"] = job.anchor
        if not reason:
            row["config_s"] = round(clock() - started, 1)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="lease: the 5 configurations that fit one 15-minute GPU lease (benchmarks/lease.py)")
    parser.add_argument("--models", nargs="+", choices=sorted(ARCHITECTURES), default=None)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help="default: all on a GPU, eager with --smoke or --cpu")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="default: 1 2 4 (1 2 with --smoke, 1 with --cpu or --preset lease)")
    parser.add_argument("--size", type=int, default=None,
                        help="square side; default 1024 (128 with --smoke, 256 with --cpu)")
    parser.add_argument("--steps", type=int, default=None, help="default 28 (2 with --smoke, 1 with --cpu)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per cell; default 3 (2 with --preset lease, 1 on the CPU)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="seconds after the start when no further configuration starts (recorded as skipped); "
                             f"default none ({LEASE_DEADLINE_S:g} with --preset lease)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    on_cpu = parser.add_mutually_exclusive_group()
    on_cpu.add_argument("--smoke", action="store_true", help="CPU, tiny widths: checks the code path, not speed")
    on_cpu.add_argument("--cpu", action="store_true", help="CPU, full size, fp32: checks the full-size path")
    parser.add_argument("--smoke-compile", action="store_true",
                        help="with --smoke: compile as configured instead of leaving torch.compile out")
    args = parser.parse_args(argv)
    lease = args.preset == "lease"
    if lease and (args.models or args.configs or args.batch_sizes):
        parser.error("--preset lease fixes the models, configs and batch size; drop --models, --configs and "
                     "--batch-sizes")
    args.models = args.models or list(ARCHITECTURES)
    args.configs = args.configs or (["eager"] if args.smoke or args.cpu else list(CONFIGS))
    args.batch_sizes = args.batch_sizes or ([1] if lease or args.cpu else [1, 2] if args.smoke else [1, 2, 4])
    args.size = args.size or (128 if args.smoke else 256 if args.cpu else 1024)
    args.steps = args.steps or (2 if args.smoke else 1 if args.cpu else 28)
    args.repeats = args.repeats or (1 if args.smoke or args.cpu else LEASE_REPEATS if lease else 3)
    if args.deadline_s is None and lease:
        args.deadline_s = LEASE_DEADLINE_S
    if args.size % 16 or min(args.batch_sizes) < 1 or args.repeats < 1 or (args.deadline_s or 0) < 0:
        parser.error("--size must be a multiple of 16; batch sizes and --repeats at least 1; --deadline-s >= 0")
    return args


def main(argv: list[str] | None = None, *, clock: Callable[[], float] = time.monotonic) -> int:
    started = clock()  # the deadline counts from here: probe and FLOP count included
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_cpu = args.smoke or args.cpu
    env = probe(require_cuda=not on_cpu)
    print(env.summary(), flush=True)
    if not env.ok:
        print("error: missing: " + "; ".join(env.missing) + ". This benchmark needs a CUDA GPU, torch and diffusers "
              "(is the CUDA build of torch installed?). Use --smoke or --cpu to check the code path on the CPU.",
              file=sys.stderr)
        return 2
    placement = Placement("cpu", "fp32") if on_cpu else Placement("cuda", "bf16")
    jobs = plan_jobs(args)
    models = list(dict.fromkeys(job.model for job in jobs))
    flops = {}  # counted first, on the meta device: seconds, and a broken architecture fails before any timing
    for model in models:
        meta_pipe = build_pipeline(ARCHITECTURES[model], META, args.smoke)
        for batch in args.batch_sizes:
            flops[model, batch] = count_call_flops(ARCHITECTURES[model], batch=batch, size=args.size,
                                                   steps=args.steps, tiny=args.smoke, pipe=meta_pipe)
    now = dt.datetime.now(dt.UTC)
    report = {
        "date": now.isoformat(timespec="seconds"),
        "preset": args.preset,
        "smoke": args.smoke,
        "cpu_full_size": args.cpu,
        "machine": machine_info(placement, env),
        "environment": env.as_dict(),
        "settings": {"size": args.size, "steps": args.steps, "dtype": placement.dtype, "repeats": args.repeats,
                     "batch_sizes": args.batch_sizes, "deadline_s": args.deadline_s, "models": models,
                     "configs": [f"{job.model} {job.config}" for job in jobs]},
        "note": "random weights; text encoders not run: random prompt embeddings of the real shapes",
        "results": [],
    }
    gpu = report["machine"]["gpu"]
    label = "smoke-cpu" if args.smoke else "cpu-full-size" if args.cpu else re.sub(r"[^a-z0-9]+", "-", gpu.lower())
    preset = f"{args.preset}-" if args.preset else ""
    stem = args.out / f"gpu-benchmark-{preset}{label}-{now:%Y%m%d-%H%M%S}"
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(args.deadline_s, clock, started)
    for job in jobs:
        reason = skip_reason(job, has_torchao=env.packages.get("torchao") is not None, deadline=deadline,
                             on_gpu=not on_cpu)
        rows = run_job(job, args, placement, reason=reason, clock=clock)
        add_compute_rates(rows, flops)
        report["results"] += rows
        write_report(report, stem)  # after every config: a run cut short keeps what it measured
    print(to_markdown(report))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

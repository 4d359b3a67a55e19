"""GPU benchmark: full-size FLUX.1-dev and SD3-medium architectures, random weights, every optimization config.

Builds the real architectures from their configs with random weights (nothing is downloaded), applies each
configuration through the server's own code (`pipelines.optimizations.plan_optimizations` and
`apply_optimizations`), and times whole pipeline calls at 1024x1024, 28 steps, bf16, for batch 1, 2 and 4.
The first call of each (config, batch) is a warm-up (compilation, autotuning) and is excluded. Results go
to `benchmarks/results/gpu-benchmark-<gpu>-<date>.json` and `.md`, with the GPU's name, the torch,
diffusers and torchao versions and the date.

What is timed: the denoising transformer (28 steps) plus the VAE decode and the conversion to PIL images,
that is everything but the text encoders. The prompt embeddings are random tensors of the real shapes,
passed as `prompt_embeds` / `pooled_prompt_embeds` (and the negative ones where SD3 runs classifier-free
guidance): a random-init T5-XXL alone is 4.7B parameters, and text encoding is a few percent of a
28-step call. Random weights run at the same speed as trained ones; the images are noise.

Reference points for FLUX.1-dev, 1024x1024, 28 steps, batch 1, one H100 (published): diffusers bf16 eager
about 6.6 s; torch.compile about 4.2 s; compile + fp8 dynamic quantization + fused QKV about 3.0 s.

No GPU was available when this script was written, so `benchmarks/results/` holds no GPU numbers yet:
run it on any CUDA machine (`python benchmarks/gpu_benchmark.py`, about 20-30 minutes on an H100 with the
defaults; FLUX.1-dev needs about 35 GB of GPU memory at batch 4). Without CUDA it exits with code 2.
`--smoke` runs the same code path on the CPU with tiny widths, a small size and 2 steps, so the test suite
exercises it anywhere; its numbers mean nothing.

    python benchmarks/gpu_benchmark.py                                  # everything
    python benchmarks/gpu_benchmark.py --models flux-dev --configs eager compile --batch-sizes 1
    python benchmarks/gpu_benchmark.py --smoke --out /tmp/results       # CPU, tiny, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

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
PUBLISHED_H100_FLUX = {"eager": 6.6, "compile": 4.2, "compile-fp8-fused": 3.0}  # s, batch 1


@dataclass(frozen=True)
class Architecture:
    """One model: how to build it (full size or tiny) and the shapes of its prompt embeddings."""

    name: str
    build: Callable[[bool], Any]  # tiny -> pipeline without text encoders
    text_tokens: Callable[[bool], int]
    text_width: Callable[[bool], int]
    pooled_width: Callable[[bool], int]
    guidance: float
    classifier_free: bool  # SD3 runs the negative prompt too (batch doubles inside the transformer)


def _vae(tiny: bool, *, scaling_factor: float, shift_factor: float) -> Any:
    from diffusers import AutoencoderKL

    blocks = 4  # 8x down-sampling, 16 latent channels, as in the SD3 and FLUX VAEs
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16 if not tiny else 4,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(128, 256, 512, 512) if not tiny else (8,) * blocks,
        layers_per_block=2 if not tiny else 1, norm_num_groups=32 if not tiny else 4,
        sample_size=1024 if not tiny else 32, scaling_factor=scaling_factor, shift_factor=shift_factor,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def _build_flux(tiny: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    # The defaults are FLUX.1-dev's sizes (12B); dev is guidance-distilled, hence guidance_embeds.
    transformer = FluxTransformer2DModel(guidance_embeds=True) if not tiny else FluxTransformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=_vae(tiny, scaling_factor=0.3611, shift_factor=0.1159),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=transformer)


def _build_sd3(tiny: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(
        num_layers=24, attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
        caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
        sample_size=128, in_channels=16, patch_size=2,
    ) if not tiny else SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
        pos_embed_max_size=64)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(tiny, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None)


ARCHITECTURES = {
    # T5 at max_sequence_length 512; CLIP-L pooled (768).
    "flux-dev": Architecture("flux-dev", _build_flux, lambda tiny: 512 if not tiny else 16,
                             lambda tiny: 4096 if not tiny else 32, lambda tiny: 768 if not tiny else 32,
                             guidance=3.5, classifier_free=False),
    # 77 CLIP tokens + 256 T5 tokens; CLIP-L + CLIP-G pooled (768 + 1280).
    "sd3-medium": Architecture("sd3-medium", _build_sd3, lambda tiny: 333 if not tiny else 16,
                               lambda tiny: 4096 if not tiny else 32, lambda tiny: 2048 if not tiny else 64,
                               guidance=7.0, classifier_free=True),
}


@contextlib.contextmanager
def _construction(device: str, dtype: Any) -> Iterator[None]:
    """Create parameters directly on the device in the target dtype: a 12B model never sits in fp32."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(arch: Architecture, placement: Placement, tiny: bool) -> Any:
    import torch

    torch.manual_seed(0)
    with _construction(placement.device, placement.torch_dtype()):
        pipe = arch.build(tiny)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_arguments(arch: Architecture, placement: Placement, tiny: bool, batch: int, size: int,
                   steps: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator("cpu").manual_seed(0)

    def embeds(*shape: int) -> Any:
        return torch.randn(*shape, generator=generator).to(placement.device, placement.torch_dtype())

    tokens, width, pooled = arch.text_tokens(tiny), arch.text_width(tiny), arch.pooled_width(tiny)
    arguments: dict[str, Any] = {
        "prompt_embeds": embeds(batch, tokens, width), "pooled_prompt_embeds": embeds(batch, pooled),
        "width": size, "height": size, "num_inference_steps": steps, "guidance_scale": arch.guidance,
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in range(batch)], "output_type": "pil",
    }
    if arch.classifier_free:
        arguments["negative_prompt_embeds"] = embeds(batch, tokens, width)
        arguments["negative_pooled_prompt_embeds"] = embeds(batch, pooled)
    return arguments


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_config(arch: Architecture, config: str, placement: Placement, *, tiny: bool, batch_sizes: list[int],
                size: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    """Build a fresh pipeline (compile and fp8 change it in place), apply `config`, time each batch size."""
    import torch

    pipe = build_pipeline(arch, placement, tiny)
    plan = plan_optimizations(CONFIGS[config], placement)
    applied = apply_optimizations(pipe, plan, placement)
    rows = []
    for batch in batch_sizes:
        row: dict[str, Any] = {"model": arch.name, "config": config, "batch": batch,
                               "applied": dict(applied.applied), "switched_off": dict(applied.switched_off)}
        if placement.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs: list[float] = []
        error = None
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
            if not is_out_of_memory(exc):
                raise
            error = "out of memory"
        if error:
            free_device_memory(placement.device)
            row["error"] = error
            logger.warning("%s %s batch %d: %s", arch.name, config, batch, error)
        else:
            mean = statistics.fmean(runs)
            row.update(runs_s=[round(run, 4) for run in runs], mean_s=round(mean, 4), min_s=round(min(runs), 4),
                       s_per_image=round(mean / batch, 4), images_per_s=round(batch / mean, 4))
            logger.info("%s %-18s batch %d: %.3f s per call, %.3f s per image", arch.name, config, batch, mean,
                        mean / batch)
        if placement.device == "cuda":
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows.append(row)
    del pipe
    free_device_memory(placement.device)
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()  # each config compiles its own fresh pipeline
    return rows


def machine_info(placement: Placement) -> dict[str, Any]:
    import diffusers
    import torch

    info: dict[str, Any] = {"device": placement.device, "torch": torch.__version__, "diffusers": diffusers.__version__,
                            "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    try:
        import torchao

        info["torchao"] = torchao.__version__
    except ImportError:
        info["torchao"] = None
    if placement.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, compute_capability=".".join(map(str, torch.cuda.get_device_capability())),
                    gpu_memory_gib=round(properties.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info["gpu"] = None
    return info


def to_markdown(report: dict[str, Any]) -> str:
    machine, setup = report["machine"], report["settings"]
    cuda = f", CUDA {machine['cuda']}, compute capability {machine['compute_capability']}" if machine["gpu"] else ""
    lines = [
        f"# GPU benchmark: {machine.get('gpu') or 'CPU (smoke run: numbers mean nothing)'}",
        "",
        f"Date {report['date']}; torch {machine['torch']}, diffusers {machine['diffusers']}, "
        f"torchao {machine['torchao'] or 'not installed'}{cuda}",
        f"{setup['size']}x{setup['size']}, {setup['steps']} steps, {setup['dtype']}, random weights, text encoders "
        f"not run (random prompt embeddings), mean of {setup['repeats']} calls after one warm-up call.",
        "",
        "| model | config | batch | s per call | s per image | images/s | vs eager | peak GiB | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    eager = {(row["model"], row["batch"]): row.get("s_per_image") for row in report["results"]
             if row["config"] == "eager"}
    for row in report["results"]:
        notes = "; ".join(f"{name} off: {reason}" for name, reason in row["switched_off"].items())
        if "error" in row:
            lines.append(f"| {row['model']} | {row['config']} | {row['batch']} | - | - | - | - | "
                         f"{row.get('peak_memory_gib', '-')} | {row['error']} {notes} |")
            continue
        base = eager.get((row["model"], row["batch"]))
        speedup = f"{base / row['s_per_image']:.2f}x" if base else "-"
        lines.append(f"| {row['model']} | {row['config']} | {row['batch']} | {row['mean_s']:.3f} | "
                     f"{row['s_per_image']:.3f} | {row['images_per_s']:.3f} | {speedup} | "
                     f"{row.get('peak_memory_gib', '-')} | {notes} |")
    lines += ["", "Published FLUX.1-dev batch-1 times on one H100 for comparison: "
              + ", ".join(f"{name} {seconds} s" for name, seconds in PUBLISHED_H100_FLUX.items()) + "."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(ARCHITECTURES), default=list(ARCHITECTURES))
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help="default: all on a GPU, eager with --smoke")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: 1 2 4 (1 2 with --smoke)")
    parser.add_argument("--size", type=int, default=None, help="square image side; default 1024 (128 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="default 28 (2 with --smoke)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell; default 3 (1 with --smoke)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny widths: checks the code path, not speed")
    args = parser.parse_args(argv)
    args.configs = args.configs or (["eager"] if args.smoke else list(CONFIGS))
    args.batch_sizes = args.batch_sizes or ([1, 2] if args.smoke else [1, 2, 4])
    args.size = args.size or (128 if args.smoke else 1024)
    args.steps = args.steps or (2 if args.smoke else 28)
    args.repeats = args.repeats or (1 if args.smoke else 3)
    if args.size % 16 or min(args.batch_sizes) < 1 or args.repeats < 1:
        parser.error("--size must be a multiple of 16; batch sizes and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU and torch sees none (is the CUDA build of torch installed?). "
              "Use --smoke to check the code path on the CPU.", file=sys.stderr)
        return 2
    placement = Placement("cpu", "fp32") if args.smoke else Placement("cuda", "bf16")
    results: list[dict[str, Any]] = []
    for model in args.models:
        for config in args.configs:
            results += time_config(ARCHITECTURES[model], config, placement, tiny=args.smoke,
                                   batch_sizes=args.batch_sizes, size=args.size, steps=args.steps,
                                   repeats=args.repeats)
    now = dt.datetime.now(dt.UTC)
    report = {
        "date": now.isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": machine_info(placement),
        "settings": {"size": args.size, "steps": args.steps, "dtype": placement.dtype, "repeats": args.repeats,
                     "batch_sizes": args.batch_sizes, "configs": args.configs, "models": args.models},
        "note": "random weights; text encoders not run: random prompt embeddings of the real shapes",
        "results": results,
    }
    label = "smoke-cpu" if args.smoke else re.sub(r"[^a-z0-9]+", "-", report["machine"]["gpu"].lower()).strip("-")
    stem = f"gpu-benchmark-{label}-{now:%Y%m%d-%H%M%S}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

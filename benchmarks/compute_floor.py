"""Compute floor: the FLOPs one pipeline call needs, counted on PyTorch's meta device, and the time they take.

Builds the full-size architectures of `benchmarks/architectures.py` on the meta device (tensors with shapes
and no storage: nothing is allocated, nothing is computed) and runs one transformer step and one VAE decode
under `torch.utils.flop_counter.FlopCounterMode`, which counts every matmul, attention and convolution from
its shapes. So the count is exact for the architecture and takes seconds on any machine, GPU or not.
Elementwise work (norms, activations, RoPE) is not counted: it costs memory bandwidth, not FLOPs.

A call needs `steps * transformer step + VAE decode` (SD3's transformer sees twice the batch: classifier-free
guidance). Divided by a sustained matmul rate it gives the compute floor, the time no optimization can beat
in that precision. The default rate, 800 TFLOP/s, is what an H100 sustains on large bf16 matmuls (its dense
peak is 989); pass `--tflops` for another card. The GPU benchmark uses the same count to report the TFLOP/s
each configuration achieved.

    python benchmarks/compute_floor.py                        # writes benchmarks/results/compute-floor.*
    python benchmarks/compute_floor.py --sizes 1024 --batch-sizes 1 2 4 --tflops 989 --out /tmp/floor
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.architectures import ARCHITECTURES, Architecture, build_pipeline  # noqa: E402
from pipelines.device import Placement  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
SUSTAINED_BF16_TFLOPS = 800.0  # one H100 on large bf16 matmuls; the figure for the floor
META = Placement("meta", "bf16")


@dataclass(frozen=True)
class CallFlops:
    """The FLOPs of one pipeline call (text encoders excluded) for `batch` images of `size` x `size`."""

    model: str
    batch: int
    size: int
    steps: int
    transformer_params: int
    transformer_step_tflop: float  # one denoising step for the whole batch
    vae_decode_tflop: float

    @property
    def call_tflop(self) -> float:
        return self.steps * self.transformer_step_tflop + self.vae_decode_tflop

    def floor_seconds(self, tflops: float = SUSTAINED_BF16_TFLOPS) -> float:
        return self.call_tflop / tflops


def _transformer_inputs(arch: Architecture, pipe: Any, *, batch: int, size: int, tiny: bool) -> dict[str, Any]:
    """Meta tensors of the shapes the pipeline hands its transformer at each step."""
    import torch

    def empty(*shape: int) -> Any:
        return torch.empty(*shape, device="meta", dtype=torch.bfloat16)

    config = pipe.transformer.config
    rows = batch * (2 if arch.classifier_free else 1)
    tokens, latent = arch.text_tokens(tiny), size // pipe.vae_scale_factor
    inputs = {"encoder_hidden_states": empty(rows, tokens, arch.text_width(tiny)),
              "pooled_projections": empty(rows, arch.pooled_width(tiny)), "timestep": empty(rows)}
    if arch.packed_latents:
        sequence = (latent // 2) ** 2
        inputs.update(hidden_states=empty(rows, sequence, config.in_channels), img_ids=empty(sequence, 3),
                      txt_ids=empty(tokens, 3))
        if config.guidance_embeds:
            inputs["guidance"] = empty(rows)
    else:
        inputs["hidden_states"] = empty(rows, config.in_channels, latent, latent)
    return inputs


def _counted_tflop(module_call: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        module_call()
    return counter.get_total_flops() / 1e12


def count_call_flops(arch: Architecture, *, batch: int, size: int, steps: int, tiny: bool = False,
                     pipe: Any = None) -> CallFlops:
    """Count on the meta device; pass `pipe` (built on meta) to reuse it across batch sizes."""
    import torch

    pipe = pipe if pipe is not None else build_pipeline(arch, META, tiny)
    inputs = _transformer_inputs(arch, pipe, batch=batch, size=size, tiny=tiny)
    latents = torch.empty(batch, pipe.vae.config.latent_channels, size // pipe.vae_scale_factor,
                          size // pipe.vae_scale_factor, device="meta", dtype=torch.bfloat16)
    with torch.no_grad():
        step = _counted_tflop(lambda: pipe.transformer(**inputs, return_dict=False))
        decode = _counted_tflop(lambda: pipe.vae.decode(latents, return_dict=False))
    return CallFlops(model=arch.name, batch=batch, size=size, steps=steps,
                     transformer_params=sum(parameter.numel() for parameter in pipe.transformer.parameters()),
                     transformer_step_tflop=step, vae_decode_tflop=decode)


def to_markdown(report: dict[str, Any]) -> str:
    tflops = report["settings"]["tflops"]
    lines = [
        "# Compute floor: FLOPs per pipeline call, and the time they take at a sustained matmul rate",
        "",
        f"Counted {report['date']} with `benchmarks/compute_floor.py` on the meta device (exact for the "
        f"architecture, machine-independent): torch {report['machine']['torch']}, diffusers "
        f"{report['machine']['diffusers']}. Text encoders excluded. Floor at {tflops:g} TFLOP/s.",
        "",
        "| model | params | size | batch | steps | TFLOP per step | VAE decode TFLOP | TFLOP per call | "
        "TFLOP per image | floor s per call | floor s per image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['model']} | {row['transformer_params'] / 1e9:.2f}B | {row['size']} | {row['batch']} | "
            f"{row['steps']} | {row['transformer_step_tflop']:.2f} | {row['vae_decode_tflop']:.2f} | "
            f"{row['call_tflop']:.0f} | {row['call_tflop'] / row['batch']:.0f} | {row['floor_s']:.2f} | "
            f"{row['floor_s'] / row['batch']:.2f} |")
    lines += ["", "SD3's transformer step runs the batch twice (classifier-free guidance). Elementwise work "
              "(norms, activations, RoPE) is not counted."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(ARCHITECTURES), default=list(ARCHITECTURES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 512], help="square image sides")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--tflops", type=float, default=SUSTAINED_BF16_TFLOPS, help="sustained rate for the floor")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if any(size % 16 for size in args.sizes) or min(args.batch_sizes) < 1 or args.steps < 1 or args.tflops <= 0:
        parser.error("sizes must be multiples of 16; batch sizes, --steps and --tflops positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import diffusers
    import torch

    results = []
    for model in args.models:
        arch = ARCHITECTURES[model]
        pipe = build_pipeline(arch, META, tiny=False)
        for size in args.sizes:
            for batch in args.batch_sizes:
                flops = count_call_flops(arch, batch=batch, size=size, steps=args.steps, pipe=pipe)
                results.append({**asdict(flops), "call_tflop": flops.call_tflop,
                                "floor_s": flops.floor_seconds(args.tflops)})
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                    "python": platform.python_version(), "note": "meta device: the count needs no GPU"},
        "settings": {"steps": args.steps, "tflops": args.tflops, "sizes": args.sizes,
                     "batch_sizes": args.batch_sizes, "models": args.models},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compute-floor.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (args.out / "compute-floor.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out / 'compute-floor'}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

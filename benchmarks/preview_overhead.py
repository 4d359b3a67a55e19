"""What streamed previews cost a batch: measured on the tiny models here, and the FLOP floor for the real ones.

Previews are decoded with the model's own VAE (`pipelines.previews`), only for the jobs of a batch that asked.
1. The floor, for FLUX.1-dev and SD3-medium at full size, from `benchmarks/results/compute-floor.json` (FLOPs
   counted on the meta device): a preview costs one VAE decode of that image, so `p` previews for `k` of the
   batch's `b` images add `k * p * decode / call` to the call. This is the figure that holds on a GPU, where
   both run at the same sustained matmul rate.
2. Measured: the tiny models on this CPU, one batch at a time through the server's own `DiffusersRunner`,
   interleaved (no previews / 3 previews for one job / 3 previews for every job), median of `--repeats`. The
   tiny models' VAE is large next to their two-layer transformers, so these ratios overstate the real cost;
   they show that jobs that did not ask pay nothing.

Writes `preview-overhead.json` and `.md` under `--out`.
Usage: python benchmarks/preview_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from pipelines.scheduler import BatchKey, ImageJobSpec  # noqa: E402

GOAL = 0.10
FLOOR = ROOT / "benchmarks" / "results" / "compute-floor.json"


def floor_rows() -> list[dict[str, Any]]:
    report = json.loads(FLOOR.read_text())
    rows = []
    for row in report["results"]:
        per_image_decode = row["vae_decode_tflop"] / row["batch"]  # the call decodes its whole batch once
        for previews in (1, 3):
            for asking in sorted({1, row["batch"]}):
                added = asking * previews * per_image_decode
                rows.append({"model": row["model"], "size": row["size"], "batch": row["batch"], "previews": previews,
                             "images_asking": asking, "call_tflop": row["call_tflop"],
                             "added_fraction": added / row["call_tflop"]})
    return rows


async def measure(kind: str, size: int, batch: int, steps: int, repeats: int, cache: Path) -> dict[str, Any]:
    from pipelines.local import DiffusersDevice
    from server.backends.factory import local_model_options
    from server.registry import build_registry
    from server.settings import load_settings

    settings = load_settings(model_cache=cache, device="cpu")
    spec = build_registry(settings).get(kind)
    runner = DiffusersDevice(spec, local_model_options(settings, kind)).create_runner("cpu")
    await runner.load()
    key = BatchKey(kind, size, size, steps, float(spec.default_guidance or 0.0), spec.max_sequence_length)
    seen: list[int] = []

    def jobs(asking: int) -> list[ImageJobSpec]:
        return [ImageJobSpec("a red cube", seed, None, None, None, 3 if seed < asking else 0,
                             (lambda index, pixels: seen.append(index)) if seed < asking else None)
                for seed in range(batch)]

    times: dict[int, list[float]] = {0: [], 1: [], batch: []}
    try:
        await runner.run_batch(key, jobs(0))  # warm-up
        for _ in range(repeats):
            for asking in times:
                times[asking].append((await runner.run_batch(key, jobs(asking))).device_seconds)
    finally:
        runner.close()
    base = statistics.median(times[0])
    return {"model": kind, "size": size, "batch": batch, "steps": steps, "repeats": repeats,
            "no_previews_s": base, "previews_decoded": len(seen),
            **{f"added_fraction_{asking}_asking": statistics.median(times[asking]) / base - 1
               for asking in times if asking}}


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# What streamed previews cost a batch", "",
             f"Date: {report['date']}. Machine: {report['machine']}. Command: `{report['command']}`.", "",
             "## The floor for the real models (FLOPs, any GPU)", "",
             "| model | size | batch | previews per image | images asking | added to the call |",
             "|---|---|---|---|---|---|"]
    for row in report["floor"]:
        lines.append(f"| {row['model']} | {row['size']} | {row['batch']} | {row['previews']} | "
                     f"{row['images_asking']} | {100 * row['added_fraction']:.1f}% |")
    worst = max(row["added_fraction"] for row in report["floor"])
    lines += ["", f"Worst case: {100 * worst:.1f}% (goal <= {100 * GOAL:.0f}%: "
              f"{'met' if worst <= GOAL else 'not met'}; not measured on a GPU: no GPU was available).", "",
              "## Measured on this CPU, tiny models (their VAE outweighs their transformer: an upper bound)", "",
              "| model | size | batch | steps | no previews s | 3 previews, 1 image asking | 3 previews, all asking |",
              "|---|---|---|---|---|---|---|"]
    for row in report["measured"]:
        everyone = row[f"added_fraction_{row['batch']}_asking"]
        lines.append(f"| {row['model']} | {row['size']} | {row['batch']} | {row['steps']} | {row['no_previews_s']:.2f} "
                     f"| {100 * row['added_fraction_1_asking']:+.1f}% "
                     f"| {100 * everyone:+.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="previews-") as cache:
        measured = [asyncio.run(measure(kind, args.size, args.batch, args.steps, args.repeats, Path(cache)))
                    for kind in ("tiny-flux", "tiny-sd3")]
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": cpu_name(),
              "command": " ".join(["python", "benchmarks/preview_overhead.py", *(sys.argv[1:] if argv is None
                                                                                 else argv)]),
              "goal": GOAL, "floor": floor_rows(), "measured": measured}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preview-overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "preview-overhead.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()

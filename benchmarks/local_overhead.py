"""What the server adds to a local model's request at low load, stage by stage (issue 11's local goals).

Starts `imageserve serve` (its own process, 127.0.0.1) and sends sequential `b64_json` requests, one at a time:

1. `tiny-flux` at 256x256, 4 steps: the real diffusers pipeline with random weights on the CPU. Beside it, in
   the same run, the same pipeline called directly in this process (the same arguments, pixels to uint8): the
   peer a user compares us with.
2. The simulated FLUX.1-dev/H100 device (`benchmarks/profiles/flux-dev-sim-h100.toml`, time scale 0.1) at
   1024x1024: a full-size PNG to encode.

Added latency = client latency - (queue + device), both from the answer's `Server-Timing` header, so the
device's own time (and any noise in it) is left out; the other stages (auth, encode, store, total) are
reported as medians. Goals (issue 11, printed, never asserted): <= 20 ms p50 at 256x256, <= 50 ms at
1024x1024 (goal 20 ms). Writes `benchmarks/results/local-overhead.json` and `.md` with machine and date.

    python benchmarks/local_overhead.py [--requests 30] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_efficiency import PROFILE, _toml_value, launch_imageserve  # noqa: E402

GOALS_MS = {"tiny-flux 256x256": 20.0, "simulated FLUX/H100 1024x1024": 50.0}


def parse_server_timing(header: str) -> dict[str, float]:
    stages = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        stages[name.strip()] = float(duration)
    return stages


def run_requests(base: str, body: dict[str, Any], requests: int, warmup: int) -> list[dict[str, float]]:
    rows = []
    with httpx.Client(base_url=base, timeout=300) as client:
        for index in range(warmup + requests):
            started = time.perf_counter()
            response = client.post("/v1/images/generations", json={**body, "seed": index})
            latency_ms = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if index < warmup:
                continue
            stages = parse_server_timing(response.headers["server-timing"])
            rows.append({"client_ms": latency_ms, **stages,
                         "added_ms": latency_ms - stages.get("queue", 0.0) - stages.get("device", 0.0)})
    return rows


def direct_pipeline_ms(model_cache: Path, requests: int) -> list[float]:
    """The same tiny-flux call the server makes, in this process: the pipeline alone, pixels out as uint8."""
    import torch

    from pipelines.loading import load_pipeline, locate_weights
    from pipelines.pixels import to_pixels

    pipe = load_pipeline("tiny-flux", locate_weights("tiny-flux", None, model_cache), model_cache, "cpu",
                         torch.float32)
    times = []
    for seed in range(requests + 2):
        started = time.perf_counter()
        output = pipe(prompt=["benchmark"], width=256, height=256, num_inference_steps=4, guidance_scale=3.5,
                      max_sequence_length=512, generator=[torch.Generator("cpu").manual_seed(seed)], output_type="pt")
        to_pixels(output.images)
        if seed >= 2:
            times.append((time.perf_counter() - started) * 1000)
    return times


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    def q(name: str, fraction: float) -> float:
        values = sorted(row[name] for row in rows if name in row)
        return round(values[min(len(values) - 1, int(fraction * len(values)))], 2) if values else float("nan")

    stages = sorted({name for row in rows for name in row} - {"client_ms", "added_ms"})
    return {"requests": len(rows), "client_p50_ms": q("client_ms", 0.5), "added_p50_ms": q("added_ms", 0.5),
            "added_p90_ms": q("added_ms", 0.9), "stage_p50_ms": {name: q(name, 0.5) for name in stages}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python benchmarks/local_overhead.py " + " ".join(argv or sys.argv[1:]), "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sim = tomllib.loads(PROFILE.read_text())["models"]["flux-dev-sim-h100"] | {"time_scale": 0.1}
        config = "\n".join(["[models.flux-dev-sim-h100]", *(f"{k} = {_toml_value(v)}" for k, v in sim.items())])
        process, base = launch_imageserve(workdir, config + "\n")
        try:
            tiny = run_requests(base, {"model": "tiny-flux", "prompt": "benchmark", "size": "256x256",
                                       "num_inference_steps": 4, "response_format": "b64_json"},
                                args.requests, args.warmup)
            simulated = run_requests(base, {"model": "flux-dev-sim-h100", "prompt": "benchmark",
                                            "size": "1024x1024", "response_format": "b64_json"},
                                     max(5, args.requests // 2), 1)
        finally:
            process.terminate()
            process.wait(30)
        direct = direct_pipeline_ms(workdir / "cache", args.requests)
    report["results"]["tiny-flux 256x256"] = summarize(tiny) | {
        "direct_pipeline_p50_ms": round(statistics.median(direct), 2),
        "server_device_p50_ms": summarize(tiny)["stage_p50_ms"].get("device")}
    report["results"]["simulated FLUX/H100 1024x1024"] = summarize(simulated)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "local-overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# What the server adds to a local request at low load",
        "",
        f"Date: {report['date']}. Machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']}. Command: `{report['command'].strip()}`.",
        "Sequential `b64_json` requests to one `imageserve serve` process on 127.0.0.1; added = client latency - "
        "(queue + device) from each answer's `Server-Timing`.",
        "",
        "| scenario | requests | client p50 ms | added p50 ms | added p90 ms | goal (p50) | stage p50 ms |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, result in report["results"].items():
        stages = ", ".join(f"{stage} {value}" for stage, value in result["stage_p50_ms"].items())
        lines.append(f"| {name} | {result['requests']} | {result['client_p50_ms']} | **{result['added_p50_ms']}** | "
                     f"{result['added_p90_ms']} | <= {GOALS_MS[name]:g} | {stages} |")
    tiny_result = report["results"]["tiny-flux 256x256"]
    lines += ["", f"Side by side, tiny-flux 256x256 with 4 steps: the pipeline called directly in the benchmark "
              f"process takes {tiny_result['direct_pipeline_p50_ms']} ms (p50); the server's device stage "
              f"{tiny_result['server_device_p50_ms']} ms; the server adds {tiny_result['added_p50_ms']} ms on top."]
    (args.out / "local-overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

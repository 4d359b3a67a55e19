"""Serving efficiency on the simulated FLUX.1-dev / H100 device: does the server keep the device busy?

Starts `imageserve serve` (real uvicorn on 127.0.0.1, its own process so the clients do not share its
GIL) with `benchmarks/profiles/flux-dev-sim-h100.toml` at `--time-scale` (0.1: ten times faster than
the card), then:

1. Low load: one client, sequential 1024x1024 `b64_json` requests. Added latency = what the client
   waits minus the device time the profile gives one image (and, from `perf`, the server's own
   latency minus the measured device time).
2. Saturation: `--clients` (16) clients in a closed loop. Achieved images/s over the device's ideal
   images/s at the batch size reached (batch size / profile device time of that batch). Responses of one
   batch arrive together as a burst; over the bursts after the ramp-up and before the drain (whole
   batches only), the achieved rate is the least-squares slope of images delivered against the bursts'
   median arrival times. A slope over ~25 batches rather than two end points keeps the client's own
   jitter (parsing 2.5 MB responses on a busy 2-core machine) out of the result.

Writes `benchmarks/results/serving_efficiency.json` and `.md` with the machine and date.
Usage: python benchmarks/serving_efficiency.py [--time-scale 0.1] [--requests 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.simulated import DeviceProfile, synthesize_pixels  # noqa: E402
from server.media.encoding import encode_pixels  # noqa: E402

PROFILE = ROOT / "benchmarks" / "profiles" / "flux-dev-sim-h100.toml"
MODEL = "flux-dev-sim-h100"
SIZE = (1024, 1024)
STEPS = 28


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of strings read the same in TOML


def start_server(workdir: Path, time_scale: float, batch_wait_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    table = tomllib.loads(PROFILE.read_text())["models"][MODEL]
    table["time_scale"] = time_scale
    lines = [f"batch_wait_ms = {batch_wait_ms}", "max_queue_images = 256", f"[models.{MODEL}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return launch_imageserve(workdir, "\n".join(lines) + "\n")


def launch_imageserve(workdir: Path, config: str, start_timeout_s: float = 120,
                      serve_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """`imageserve serve` in its own process on a free loopback port with `config` (TOML text), its data and
    model cache in `workdir` (`serve_args`, e.g. `--ray`, added to the command); returns the process and its
    base URL once `/health` answers."""
    (workdir / "config.toml").write_text(config)
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("IMAGESERVE_")},
           "IMAGESERVE_DATA_DIR": str(workdir / "data"), "IMAGESERVE_MODEL_CACHE": str(workdir / "cache"),
           "IMAGESERVE_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen([sys.executable, "-m", "server.cli.main", "--config", str(workdir / "config.toml"),
                                "serve", "--port", str(port), *serve_args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=open(workdir / "server.log", "wb"))  # noqa: SIM115
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {(workdir / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start in {start_timeout_s:g} s")


async def _request(client: AsyncOpenAI, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    response = await client.images.generate(model=MODEL, prompt=f"benchmark image {seed}", size="1024x1024",
                                            response_format="b64_json", extra_body={"seed": seed})
    done = time.perf_counter()
    perf = (response.model_extra or {})["perf"]
    assert len(response.data or []) == 1 and response.data[0].b64_json
    return {"started": started, "done": done, "latency_s": done - started, "server_latency_ms": perf["latency_ms"],
            "device_ms": perf["device_ms"], "batch_size": perf["batch_size"],
            "b64_chars": len(response.data[0].b64_json)}


async def low_load(client: AsyncOpenAI, profile: DeviceProfile, requests: int) -> dict[str, Any]:
    await _request(client, 0)  # warm-up: first request builds the scheduler and worker thread
    results = [await _request(client, 1 + i) for i in range(requests)]
    device_s = profile.batch_seconds(STEPS, *SIZE, 1)
    added = [r["latency_s"] - device_s for r in results]
    server_added = [(r["server_latency_ms"] - r["device_ms"]) / 1000 for r in results]
    measured_device = [r["device_ms"] / 1000 for r in results]
    pixels = synthesize_pixels(*SIZE, 1)
    encode_s = []
    for _ in range(5):  # the same PNG encode the server does, timed here under the same machine load
        started = time.perf_counter()
        encode_pixels(pixels, "png")
        encode_s.append(time.perf_counter() - started)
    return {
        "requests": requests,
        "profile_device_s": device_s,
        "measured_device_s_median": statistics.median(measured_device),
        "client_latency_s_median": statistics.median(r["latency_s"] for r in results),
        "added_latency_ms_median": 1000 * statistics.median(added),
        "added_latency_ms_max": 1000 * max(added),
        "server_added_latency_ms_median": 1000 * statistics.median(server_added),
        "png_encode_ms_median": 1000 * statistics.median(encode_s),
        "png_b64_mb": results[0]["b64_chars"] / 1e6,
        "raw": results,
    }


def _bursts(results: list[dict[str, Any]], gap_s: float) -> list[list[dict[str, Any]]]:
    """Group responses by completion time: a new burst starts after a quiet gap."""
    bursts: list[list[dict[str, Any]]] = []
    for result in sorted(results, key=lambda r: r["done"]):
        if bursts and result["done"] - bursts[-1][-1]["done"] < gap_s:
            bursts[-1].append(result)
        else:
            bursts.append([result])
    return bursts


async def saturation(client: AsyncOpenAI, profile: DeviceProfile, clients: int, requests: int,
                     max_batch: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    counter = iter(range(1000, 1000 + requests))

    async def closed_loop() -> None:
        for seed in counter:
            results.append(await _request(client, seed))

    began = time.perf_counter()
    await asyncio.gather(*(closed_loop() for _ in range(clients)))
    wall = time.perf_counter() - began
    last_sent = max(r["started"] for r in results)
    full_batch_s = profile.batch_seconds(STEPS, *SIZE, max_batch)
    bursts = _bursts(results, gap_s=0.4 * full_batch_s)
    # Skip the ramp (first two bursts: a lone first image, then the queue filling) and every burst that ends
    # after the last request was sent (the drain, where batches shrink).
    steady = [b for b in bursts[2:] if b[-1]["done"] < last_sent]
    if len(steady) < 3:
        raise RuntimeError(f"too few steady-state batches ({len(steady)}); raise --requests")
    marks = [statistics.median(r["done"] for r in b) for b in steady]
    delivered = [sum(len(b) for b in steady[: i + 1]) for i in range(len(steady))]
    slope = statistics.linear_regression(marks, delivered).slope
    window_s = marks[-1] - marks[0]
    images = sum(len(b) for b in steady[1:])
    batch_sizes = [r["batch_size"] for b in steady[1:] for r in b]
    mean_batch = statistics.fmean(batch_sizes)
    ideal = profile.images_per_second(STEPS, *SIZE, round(mean_batch))
    achieved = slope
    # Responses of one batch share its device_ms: one value per burst (burst == batch here).
    batch_device = [statistics.fmean(r["device_ms"] for r in b) / 1000 for b in steady[1:]]
    return {
        "clients": clients,
        "requests": requests,
        "wall_s": wall,
        "steady_batches": len(steady) - 1,
        "steady_images": images,
        "window_s": window_s,
        "end_to_end_images_per_s": images / window_s,  # the same from the first and last mark only
        "burst_sizes": [len(b) for b in bursts],
        "batch_size_mean": mean_batch,
        "achieved_images_per_s": achieved,
        "ideal_images_per_s": ideal,
        "efficiency": achieved / ideal,
        "profile_batch_device_s": profile.batch_seconds(STEPS, *SIZE, round(mean_batch)),
        "measured_batch_device_s_median": statistics.median(batch_device),
        "measured_batch_device_s_mean": statistics.fmean(batch_device),
        "measured_batch_device_s_max": max(batch_device),
        # Where the loss is: the device's own time (sleep overshoot, thread wake-ups) vs idle time between batches.
        "device_busy_fraction": statistics.fmean(batch_device) * slope / mean_batch,  # busy / batch period
        "device_time_efficiency": 1 / ideal / statistics.fmean(batch_device) * round(mean_batch),
        "client_latency_s_p50": statistics.median(r["latency_s"] for r in results),
        "overall_images_per_s_with_ramp_and_drain": len(results) / wall,
    }


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return {"cpu": model, "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform()}


def write_results(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving_efficiency.json").write_text(json.dumps(report, indent=2))
    low, sat, m = report["low_load"], report["saturation"], report["machine"]
    text = f"""# Serving efficiency on the simulated FLUX.1-dev / H100 device

Date: {report["date"]}. Machine: {m["cpu"]}, {m["usable_cpus"]} usable CPUs (nproc {m["nproc"]}), Python {m["python"]}.
Profile: `{PROFILE.relative_to(ROOT)}` ({report["profile"]["step_seconds_base"]} s + \
{report["profile"]["step_seconds_per_megapixel"]} s/MP per step, {STEPS} steps), time scale \
{report["profile"]["time_scale"]}; 1024x1024, `b64_json`, PNG; batch_wait_ms {report["batch_wait_ms"]}.
Command: `{report["command"]}`

## Saturation ({sat["clients"]} clients, {sat["requests"]} requests)

| batch size reached | achieved images/s | ideal images/s | efficiency | steady batches | \
batch device time: profile / measured mean / max (s) | device busy |
|---|---|---|---|---|---|---|
| {sat["batch_size_mean"]:.2f} | {sat["achieved_images_per_s"]:.4f} | {sat["ideal_images_per_s"]:.4f} | \
**{sat["efficiency"]:.3f}** | {sat["steady_batches"]} | {sat["profile_batch_device_s"]:.3f} / \
{sat["measured_batch_device_s_mean"]:.3f} / {sat["measured_batch_device_s_max"]:.3f} | \
{100 * sat["device_busy_fraction"]:.1f}% |

Efficiency = device busy fraction x (profile batch time / measured batch time): what is lost is idle time
between batches plus the device's own overshoot (thread wake-ups, a busy CPU), as measured by the scheduler.

At the real H100's speed (time scale 1) the same efficiency means \
{sat["efficiency"] * sat["ideal_images_per_s"] * report["profile"]["time_scale"]:.4f} images/s.

## Low load (1 client, {low["requests"]} sequential requests)

| device time (profile) | client latency p50 | added latency p50 | added latency max | \
server-side added (perf.latency_ms - perf.device_ms) p50 | of which one PNG encode |
|---|---|---|---|---|---|
| {1000 * low["profile_device_s"]:.0f} ms | {1000 * low["client_latency_s_median"]:.0f} ms | \
**{low["added_latency_ms_median"]:.0f} ms** | {low["added_latency_ms_max"]:.0f} ms | \
{low["server_added_latency_ms_median"]:.0f} ms | ~{low["png_encode_ms_median"]:.0f} ms |

Added latency is CPU work that does not shrink with the time scale: PNG encoding of a
{low["png_b64_mb"]:.1f} MB (base64) 1024x1024 image, base64, JSON and HTTP on loopback, plus the batch wait.
"""
    (out / "serving_efficiency.md").write_text(text)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    table = tomllib.loads(PROFILE.read_text())["models"][MODEL]
    profile = DeviceProfile(table["step_seconds_base"], table["step_seconds_per_megapixel"], args.time_scale)
    with tempfile.TemporaryDirectory(prefix="imageserve-bench-") as tmp:
        process, base = start_server(Path(tmp), args.time_scale, args.batch_wait_ms)
        try:
            client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
            low = await low_load(client, profile, args.low_load_requests)
            print(f"low load: added latency p50 {low['added_latency_ms_median']:.0f} ms (client "
                  f"{1000 * low['client_latency_s_median']:.0f} ms, device {1000 * low['profile_device_s']:.0f} ms)")
            sat = await saturation(client, profile, args.clients, args.requests, table["max_batch_images"])
            print(f"saturation: {sat['achieved_images_per_s']:.3f} images/s of {sat['ideal_images_per_s']:.3f} ideal "
                  f"at batch {sat['batch_size_mean']:.2f}: efficiency {sat['efficiency']:.3f}")
            metrics = httpx.get(base + "/metrics", timeout=10).text
            await client.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
    busy = [sample.value for family in text_string_to_metric_families(metrics)  # summed over the model's devices
            for sample in family.samples
            if sample.name == "imageserve_device_busy_seconds_total" and sample.labels.get("model") == MODEL]
    low.pop("raw")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["python", str(Path(__file__).resolve().relative_to(ROOT)), *args.argv]),
        "profile": {"step_seconds_base": profile.step_seconds_base,
                    "step_seconds_per_megapixel": profile.step_seconds_per_megapixel,
                    "time_scale": profile.time_scale, "steps": STEPS, "size": "1024x1024"},
        "batch_wait_ms": args.batch_wait_ms,
        "low_load": low,
        "saturation": sat,
        "device_busy_seconds_total": sum(busy) if busy else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=128, help="requests at saturation")
    parser.add_argument("--low-load-requests", type=int, default=10)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    report = asyncio.run(run(args))
    write_results(report, args.out)
    print((args.out / "serving_efficiency.md").read_text())


if __name__ == "__main__":
    main()

"""Scale-out on the simulated FLUX.1-dev / H100 device: does a model on N devices deliver N devices' worth?

For each N in `--devices` (1, 2, 4), starts `imageserve serve` (its own process, real uvicorn on 127.0.0.1)
with the profile of `benchmarks/profiles/flux-dev-sim-h100.toml` at `--time-scale` (0.1: ten times faster
than the card) on `devices = ["sim0", ..., "simN-1"]`, and drives it to saturation: 2 x max_batch_images x N
+ 2 clients in a closed loop (so every device has a batch running and the next one queued), 1024x1024
`b64_json`, until each device has run about `--batches-per-device` batches after the ramp.

Achieved images/s: the least-squares slope of images delivered against their arrival times, over the
responses after the ramp (the first 2 x max_batch_images x N) and before the drain (those that arrive after
the last request was sent). Scale-out efficiency = achieved / (N x one device's ideal images/s at
max_batch_images), the issue's goal being >= 0.95 for each N (printed, not asserted). Each response's
`perf.device` says which device ran it, so the split of work across devices is recorded too.

Writes `scale-out.json` and `.md` (machine and date) under `--out`.

`--compare-ray` measures instead the same model on two cards both ways, in the same run: two devices in one
process (`devices = ["sim0", "sim1"]`) against two replicas on Ray Serve (`imageserve serve --ray`, a local Ray
instance, `[models.<id>.ray] num_replicas = 2`): images/s at saturation as above, and at low load (one client,
sequential requests) the latency added over the profile's device time for one image. Writes
`ray-vs-process.json` and `.md`; needs `imageserve[ray]`.

Usage: python benchmarks/scale_out.py [--devices 1,2,4] [--time-scale 0.1] [--batches-per-device 10]
       python benchmarks/scale_out.py --compare-ray [--low-load-requests 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_efficiency import MODEL, PROFILE, SIZE, STEPS, _toml_value, launch_imageserve  # noqa: E402
from benchmarks.serving_efficiency import machine as machine_info  # noqa: E402
from pipelines.options import DeviceProfile  # noqa: E402

GOAL = 0.95


def server_config(devices: int, time_scale: float, ray_replicas: int = 0) -> tuple[str, DeviceProfile, int]:
    """The profile on `devices` cards in one process, or (`ray_replicas`) on that many Ray replicas of one card."""
    table = tomllib.loads(PROFILE.read_text())["models"][MODEL]
    table["time_scale"] = time_scale
    if not ray_replicas:
        table["devices"] = [f"sim{index}" for index in range(devices)]
    lines = ["max_queue_images = 1024", f"[models.{MODEL}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    if ray_replicas:
        lines += [f"[models.{MODEL}.ray]", f"num_replicas = {ray_replicas}", "num_cpus = 0.5"]
    profile = DeviceProfile(table["step_seconds_base"], table["step_seconds_per_megapixel"], time_scale)
    return "\n".join(lines) + "\n", profile, int(table["max_batch_images"])


async def one_request(client: AsyncOpenAI, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    response = await client.images.generate(model=MODEL, prompt=f"scale-out image {seed}", size="1024x1024",
                                            response_format="b64_json", extra_body={"seed": seed})
    perf = (response.model_extra or {})["perf"]
    if len(response.data or []) != 1 or not response.data[0].b64_json:
        raise RuntimeError(f"expected one b64_json image, got {response!r:.300}")
    return {"started": started, "done": time.perf_counter(), "device": perf["device"],
            "batch_size": perf["batch_size"]}


async def saturate(base: str, clients: int, requests: int) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300,
                         http_client=httpx.AsyncClient(limits=limits, trust_env=False))
    results: list[dict[str, Any]] = []
    seeds = iter(range(requests))

    async def closed_loop() -> None:
        for seed in seeds:
            results.append(await one_request(client, seed))

    try:
        await asyncio.gather(*(closed_loop() for _ in range(clients)))
    finally:
        await client.close()
    return results


def summarise(results: list[dict[str, Any]], devices: int, profile: DeviceProfile, max_batch: int,
              clients: int) -> dict[str, Any]:
    done = sorted(results, key=lambda r: r["done"])
    last_sent = max(r["started"] for r in results)
    ramp = 2 * max_batch * devices
    steady = [r for r in done[ramp:] if r["done"] < last_sent]
    if len(steady) < 2 * max_batch * devices:
        raise RuntimeError(f"too few steady-state images ({len(steady)}); raise --batches-per-device")
    times = [r["done"] for r in steady]
    achieved = statistics.linear_regression(times, list(range(1, len(steady) + 1))).slope
    one_device = profile.images_per_second(STEPS, *SIZE, max_batch)
    per_device = collections.Counter(label for r in steady for label in r["device"].split(","))
    return {
        "devices": devices,
        "clients": clients,
        "requests": len(results),
        "steady_images": len(steady),
        "window_s": times[-1] - times[0],
        "batch_size_mean": statistics.fmean(r["batch_size"] for r in steady),
        "achieved_images_per_s": achieved,
        "one_device_ideal_images_per_s": one_device,
        "ideal_images_per_s": devices * one_device,
        "efficiency": achieved / (devices * one_device),
        "images_per_device": dict(sorted(per_device.items())),
    }


async def measure(devices: int, args: argparse.Namespace) -> dict[str, Any]:
    config, profile, max_batch = server_config(devices, args.time_scale)
    clients = 2 * max_batch * devices + 2
    requests = max_batch * devices * (args.batches_per_device + 5)  # + the ramp and the drain
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        process, base = launch_imageserve(Path(tmp), config)
        try:
            async with asyncio.timeout(args.max_seconds):
                results = await saturate(base, clients, requests)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return summarise(results, devices, profile, max_batch, clients)


async def low_load(base: str, profile: DeviceProfile, requests: int) -> dict[str, Any]:
    """One client, sequential requests: what each waits beyond one image's device time on an idle card."""
    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300,
                         http_client=httpx.AsyncClient(trust_env=False))
    try:
        await one_request(client, 99_999)  # warm-up
        latencies = []
        for seed in range(requests):
            result = await one_request(client, 10_000 + seed)
            latencies.append(result["done"] - result["started"])
    finally:
        await client.close()
    device_s = profile.batch_seconds(STEPS, *SIZE, 1)
    added = sorted(1000 * (latency - device_s) for latency in latencies)
    return {"requests": requests, "device_ms_per_image": 1000 * device_s, "added_ms_p50": statistics.median(added),
            "added_ms_p90": added[int(0.9 * (len(added) - 1))], "added_ms_min": added[0]}


async def measure_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Two cards, in one process (`process`) or as two Ray replicas (`ray`): saturation, then low load."""
    config, profile, max_batch = server_config(2, args.time_scale, ray_replicas=2 if mode == "ray" else 0)
    clients, requests = 2 * max_batch * 2 + 2, max_batch * 2 * (args.batches_per_device + 5)
    with tempfile.TemporaryDirectory(prefix=f"scale-out-{mode}-") as tmp:
        started = time.perf_counter()
        process, base = launch_imageserve(Path(tmp), config, start_timeout_s=180,
                                          serve_args=("--ray",) if mode == "ray" else ())
        start_s = time.perf_counter() - started
        try:
            async with asyncio.timeout(args.max_seconds):
                saturation = summarise(await saturate(base, clients, requests), 2, profile, max_batch, clients)
                quiet = await low_load(base, profile, args.low_load_requests)
        finally:
            process.terminate()  # SIGTERM: `serve --ray` stops Serve and its Ray instance too
            process.wait(timeout=120)
    return {"mode": mode, "start_s": start_s, "saturation": saturation, "low_load": quiet}


def _header(report: dict[str, Any], title: str, environment: str) -> list[str]:
    m = report["machine"]
    return [f"# {title}", "",
            f"Date: {report['date']}. Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs (nproc {m['nproc']}), "
            f"Python {m['python']}{environment}.",
            f"Profile: `{PROFILE.relative_to(ROOT)}`, time scale {report['time_scale']}; 1024x1024, 28 steps, "
            "`b64_json` PNG; each card batches up to 4 images.",
            f"Command: `{report['command']}`", ""]


def ray_markdown(report: dict[str, Any]) -> str:
    lines = [
        *_header(report, "Two simulated cards: one process against two Ray Serve replicas",
                 f"; Ray {report['ray_version']}, a local instance on this machine"),
        "| mode | start s | achieved images/s | ideal (2 cards) | efficiency | mean batch | added at low load p50 ms "
        "| p90 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["runs"]:
        sat, quiet = row["saturation"], row["low_load"]
        lines.append(f"| {row['mode']} | {row['start_s']:.1f} | {sat['achieved_images_per_s']:.3f} | "
                     f"{sat['ideal_images_per_s']:.3f} | {sat['efficiency']:.3f} | {sat['batch_size_mean']:.2f} | "
                     f"{quiet['added_ms_p50']:.1f} | {quiet['added_ms_p90']:.1f} |")
    runs = {row["mode"]: row for row in report["runs"]}
    if {"process", "ray"} <= set(runs):
        cost = runs["ray"]["low_load"]["added_ms_p50"] - runs["process"]["low_load"]["added_ms_p50"]
        ratio = runs["ray"]["saturation"]["achieved_images_per_s"] / runs["process"]["saturation"][
            "achieved_images_per_s"]
        lines += ["", f"What Ray costs here: {cost:+.1f} ms per request at low load (p50), and {ratio:.3f} of the "
                  "one-process throughput at saturation. Low load: one client, sequential requests, added = "
                  "client latency - one image's device time.", ""]
    return "\n".join(lines)


def compare_ray(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    import importlib.metadata

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/scale_out.py", *argv]),
        "time_scale": args.time_scale,
        "ray_version": importlib.metadata.version("ray"),
        "runs": [asyncio.run(measure_mode(mode, args)) for mode in ("process", "ray")],
    }
    return write_report(args.out, "ray-vs-process", report, ray_markdown(report))


def write_report(out: Path, name: str, report: dict[str, Any], markdown: str) -> dict[str, Any]:
    """NAME.json and NAME.md under `out`; the Markdown printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    return report


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        *_header(report, "Scale-out: one model on N simulated FLUX.1-dev / H100 cards, in one process", ""),
        "| devices | clients | steady images | mean batch | achieved images/s | N x one device's ideal | efficiency "
        "| images per device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["runs"]:
        split = ", ".join(f"{label} {count}" for label, count in row["images_per_device"].items())
        lines.append(f"| {row['devices']} | {row['clients']} | {row['steady_images']} | {row['batch_size_mean']:.2f} "
                     f"| {row['achieved_images_per_s']:.3f} | {row['ideal_images_per_s']:.3f} "
                     f"| **{row['efficiency']:.3f}** | {split} |")
    worst = min(row["efficiency"] for row in report["runs"])
    lines += ["", f"Goal (issue 12, not asserted): efficiency >= {GOAL} for each N: "
              f"{'met' if worst >= GOAL else 'not met'} (lowest {worst:.3f}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1,2,4", help="comma-separated device counts")
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--batches-per-device", type=int, default=10, help="batches per device after the ramp")
    parser.add_argument("--max-seconds", type=float, default=600, help="per device count")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--compare-ray", action="store_true", help="two cards in one process vs two Ray replicas")
    parser.add_argument("--low-load-requests", type=int, default=20, help="sequential requests (--compare-ray)")
    args = parser.parse_args(argv)
    if args.compare_ray:
        return compare_ray(args, sys.argv[1:] if argv is None else argv)
    counts = [int(part) for part in args.devices.split(",") if part.strip()]
    if not counts or min(counts) < 1 or args.batches_per_device < 1:
        parser.error("device counts and --batches-per-device must be at least 1")
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/scale_out.py", *(sys.argv[1:] if argv is None else argv)]),
        "time_scale": args.time_scale,
        "goal_efficiency": GOAL,
        "runs": [asyncio.run(measure(count, args)) for count in counts],
    }
    return write_report(args.out, "scale-out", report, to_markdown(report))


if __name__ == "__main__":
    main()

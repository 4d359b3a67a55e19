"""What imageserve adds to a vendor request, beside a peer proxy (LiteLLM's), on the same loopback emulator.

Three paths to one OpenAI Images API emulator (`tests/support/emulators/openai_api.py`, its own uvicorn process;
it answers `dall-e-3` with a 1024x1024 PNG as `b64_json`, as OpenAI does), every process on 127.0.0.1:

- direct: the official `openai` client to the emulator;
- imageserve: `imageserve serve` (its own process) with auth on (a key from IMAGESERVE_API_KEYS), quotas on (a
  tier with large but finite limits, so both windows are checked) and the usage ledger in SQLite, forwarding
  `dall-e-3` to the emulator (IMAGESERVE_OPENAI_BASE_URL / IMAGESERVE_OPENAI_API_KEY), `b64_json` both ways;
- litellm: LiteLLM's proxy (`--litellm PATH`, its CLI in a separate venv) with a master key and no database, on
  its `/v1/images/generations` route. Without `--litellm`, or if it cannot start, it is recorded as not measured,
  with the reason. LiteLLM 1.110 treats every OpenAI image model as a GPT image model (DALL-E is retired):
  `openai/dall-e-3` refuses `response_format` (`UnsupportedParamsError`), and without it DALL-E answers with a
  link. So the model name `dall-e-3` is mapped to `openai/gpt-image-1` at the emulator and the client sends no
  `response_format` on this path: the emulator then answers with the same PNG as `b64_json`, as OpenAI does.

Concurrency 1: after a warm-up, `--requests` sequential requests per path, interleaved request by request (the
order rotates) so machine noise hits all paths alike; p50/p90 of the client's latency; added = p50 - direct p50.
Concurrency `--concurrency` (32): `--concurrent-requests` (200) requests per path in a closed loop, in
`--rounds` rounds (the order rotates); the median wall time, requests/s, and slower than direct = wall / direct
wall - 1. Everything is bounded (`--max-seconds`); every process started is stopped at the end, also on error.

Two set-ups. By default the emulator answers a single-colour PNG of a few KB at once: a stress test of each
proxy's CPU per request. `--upstream-latency-ms 1500 --image photo` makes it answer like a vendor: after
1.5 s, with a 1.8 MB photo-like PNG.

Writes `NAME.json` and `.md` (machine, date, versions) under `--out` (`--name`, default `vendor-overhead`).
Usage: python benchmarks/vendor_overhead.py --litellm /tmp/litellm-venv/bin/litellm
       python benchmarks/vendor_overhead.py --litellm ... --upstream-latency-ms 1500 --image photo \
           --requests 20 --warmup 3 --rounds 3 --name vendor-overhead-vendor-like
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parents[1]
MODEL = "dall-e-3"
PROMPT = "a red fox in fresh snow"
VENDOR_KEY = "sk-emulated-vendor-0123456789"
IMAGESERVE_KEY = "sk-bench-imageserve-0123456789"
LITELLM_KEY = "sk-bench-litellm-0123456789"
PATHS = ("direct", "imageserve", "litellm")
LITELLM_UPSTREAM = "openai/gpt-image-1"  # see the docstring: LiteLLM forwards no response_format to OpenAI
REQUEST_FIELDS = {"direct": {"response_format": "b64_json"}, "imageserve": {"response_format": "b64_json"},
                  "litellm": {}}
# Issue 11's goals (printed beside the results, not asserted) and the numbers of an earlier session.
GOALS = {"imageserve_added_ms_p50": 7.0, "imageserve_slower_than_direct": 0.05}
EARLIER = {"direct_ms_p50": 15.0, "litellm_added_ms_p50": 13.5, "imageserve_added_ms_p50": 15.0,
           "imageserve_slower_than_direct": 0.14, "litellm_slower_than_direct": 0.115}
EMULATOR = """
import asyncio
import io
import sys

import numpy as np
import uvicorn
from PIL import Image

from tests.support.emulators import openai_api
from tests.support.emulators.openai_api import OpenAIEmulator

LATENCY_S = float(sys.argv[3]) / 1000
if sys.argv[4] == "photo":  # noise over smooth gradients: a 1024x1024 PNG of about 1.8 MB, like a vendor's photo
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1024, 0:1024]
    base = np.stack([128 + 100 * np.sin(x / 97 + y / 131), 128 + 90 * np.cos(y / 83),
                     128 + 80 * np.sin((x + y) / 151)], -1)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)).save(buffer, "PNG")
    PHOTO = buffer.getvalue()
    openai_api.png = lambda width, height: PHOTO  # only 1024x1024 is asked for

class Forget(list):  # the emulator records every request; a benchmark needs none of them
    def append(self, item): pass

class SlowEmulator(OpenAIEmulator):  # a vendor takes seconds to draw: answer after LATENCY_S, without blocking
    async def generate(self, request):
        if LATENCY_S:
            await asyncio.sleep(LATENCY_S)
        return await super().generate(request)

emulator = SlowEmulator(sys.argv[1], requests=Forget())
uvicorn.run(emulator.app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""
IMAGESERVE_CONFIG = """log_level = "warning"
default_model = "dall-e-3"
[tiers.bench]
images_per_minute = 1000000
images_per_day = 100000000
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    drop = ("IMAGESERVE_", "OPENAI_", "LITELLM_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, "NO_PROXY": "127.0.0.1", **extra}


class Processes:
    """Starts servers in their own process groups and stops every one of them on exit, also on error."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], ready_url: str, timeout_s: float) -> None:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=stderr, stderr=stderr,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.running.append(process)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()[-1500:]}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(ready_url, timeout=2)  # any HTTP answer means it listens (the emulator has no /health)
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer within {timeout_s:.0f} s: {log.read_text()[-1500:]}")

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.running):
            for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)  # its whole group: LiteLLM's workers too
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=wait_s)
                    break


def start_emulator(procs: Processes, latency_ms: float, image: str) -> str:
    port = _free_port()
    procs.start("emulator", [sys.executable, "-c", EMULATOR, VENDOR_KEY, str(port), str(latency_ms), image],
                _clean_env(PYTHONPATH=str(ROOT)), f"http://127.0.0.1:{port}/", 30)
    return f"http://127.0.0.1:{port}"


def start_imageserve(procs: Processes, emulator: str) -> str:
    (procs.workdir / "imageserve.toml").write_text(IMAGESERVE_CONFIG)
    port = _free_port()
    env = _clean_env(PYTHONPATH=str(ROOT), IMAGESERVE_DATA_DIR=str(procs.workdir / "data"),
                     IMAGESERVE_MODEL_CACHE=str(procs.workdir / "models"),
                     IMAGESERVE_API_KEYS=f"{IMAGESERVE_KEY}:bench",
                     IMAGESERVE_OPENAI_BASE_URL=emulator + "/v1", IMAGESERVE_OPENAI_API_KEY=VENDOR_KEY)
    config = str(procs.workdir / "imageserve.toml")
    procs.start("imageserve", [sys.executable, "-m", "server.cli.main", "--config", config, "serve",
                               "--host", "127.0.0.1", "--port", str(port)], env, f"http://127.0.0.1:{port}/health", 90)
    return f"http://127.0.0.1:{port}"


def start_litellm(procs: Processes, cli: Path, emulator: str) -> str:
    config = {  # JSON is YAML
        "model_list": [{"model_name": MODEL, "model_info": {"mode": "image_generation"},
                        "litellm_params": {"model": LITELLM_UPSTREAM, "api_base": emulator + "/v1",
                                           "api_key": VENDOR_KEY}}],
        "general_settings": {"master_key": LITELLM_KEY},
        "litellm_settings": {"telemetry": False},
    }
    (procs.workdir / "litellm.yaml").write_text(json.dumps(config, indent=2))
    port = _free_port()
    env = _clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False")
    procs.start("litellm", [str(cli), "--config", str(procs.workdir / "litellm.yaml"), "--host", "127.0.0.1",
                            "--port", str(port), "--num_workers", "1"], env,
                f"http://127.0.0.1:{port}/health/liveliness", 180)
    return f"http://127.0.0.1:{port}"


async def one_request(client: AsyncOpenAI, path: str) -> tuple[float, str, dict[str, Any] | None]:
    started = time.perf_counter()
    response = await client.images.generate(model=MODEL, prompt=PROMPT, size="1024x1024", **REQUEST_FIELDS[path])
    elapsed = time.perf_counter() - started
    if len(response.data or []) != 1 or not response.data[0].b64_json:
        raise RuntimeError(f"expected one b64_json image, got {response!r:.300}")
    return elapsed, response.data[0].b64_json, (response.model_extra or {}).get("perf")


def png_size(b64: str) -> str:
    if (raw := base64.b64decode(b64))[:8] != b"\x89PNG\r\n\x1a\n":
        raise RuntimeError("not a PNG")
    return f"{int.from_bytes(raw[16:20], 'big')}x{int.from_bytes(raw[20:24], 'big')}"


def rotated(paths: list[str], by: int) -> list[str]:
    shift = by % len(paths)
    return paths[shift:] + paths[:shift]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def sequential(clients: dict[str, AsyncOpenAI], requests: int) -> dict[str, dict[str, Any]]:
    paths = list(clients)
    latencies: dict[str, list[float]] = {p: [] for p in paths}
    server_ms: list[float] = []
    for i in range(requests):
        for path in rotated(paths, i):
            elapsed, _, perf = await one_request(clients[path], path)
            latencies[path].append(1000 * elapsed)
            if perf:
                server_ms.append(perf["latency_ms"])
    out = {p: {"requests": requests, "p50_ms": statistics.median(v), "p90_ms": percentile(v, 90),
               "mean_ms": statistics.fmean(v), "min_ms": min(v), "max_ms": max(v)} for p, v in latencies.items()}
    for row in out.values():
        row["added_ms_p50"] = row["p50_ms"] - out["direct"]["p50_ms"]
        row["added_ms_p90"] = row["p90_ms"] - out["direct"]["p90_ms"]
    if server_ms and "imageserve" in out:  # imageserve's own `perf.latency_ms`: its view of the same requests
        out["imageserve"]["server_latency_ms_p50"] = statistics.median(server_ms)
    return out


async def closed_loop(client: AsyncOpenAI, path: str, total: int, concurrency: int) -> tuple[float, list[float]]:
    remaining = iter(range(total))
    latencies: list[float] = []

    async def worker() -> None:
        for _ in remaining:
            latencies.append(1000 * (await one_request(client, path))[0])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def concurrent(clients: dict[str, AsyncOpenAI], total: int, concurrency: int,
                     rounds: int) -> dict[str, dict[str, Any]]:
    paths = list(clients)
    walls: dict[str, list[float]] = {p: [] for p in paths}
    latencies: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(rounds):
        for path in rotated(paths, r):
            wall, lat = await closed_loop(clients[path], path, total, concurrency)
            walls[path].append(wall)
            latencies[path] += lat
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        wall = statistics.median(walls[path])
        out[path] = {"concurrency": concurrency, "requests": total, "rounds": rounds, "wall_s": wall,
                     "wall_s_rounds": walls[path], "requests_per_s": total / wall,
                     "latency_ms_p50": statistics.median(latencies[path])}
    for path in paths:
        row, direct = out[path], out["direct"]
        row["slower_than_direct"] = row["wall_s"] / direct["wall_s"] - 1
        row["slower_than_direct_rounds"] = [w / d - 1 for w, d in zip(row["wall_s_rounds"], direct["wall_s_rounds"],
                                                                          strict=True)]
    return out


async def measure(bases: dict[str, tuple[str, str]], args: argparse.Namespace,
                  not_measured: dict[str, str]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=2 * args.concurrency, max_keepalive_connections=2 * args.concurrency)
    clients = {p: AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=60,
                              http_client=httpx.AsyncClient(limits=limits, trust_env=False))
               for p, (url, key) in bases.items()}
    try:
        images: dict[str, dict[str, Any]] = {}
        for path in list(clients):
            try:
                for _ in range(args.warmup):
                    _, b64, _ = await one_request(clients[path], path)
                await closed_loop(clients[path], path, args.concurrency, args.concurrency)  # opens the connections
                images[path] = {"size": png_size(b64), "b64_chars": len(b64)}
            except Exception as exc:  # a peer that does not work is reported, not fatal
                if path != "litellm":
                    raise
                not_measured[path] = f"its warm-up failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                await clients.pop(path).close()
        seq = await sequential(clients, args.requests)
        conc = await concurrent(clients, args.concurrent_requests, args.concurrency, args.rounds)
    finally:
        for client in clients.values():
            await client.close()
    return {"images": images, "sequential": seq, "concurrent": conc}


def litellm_version(cli: Path) -> str | None:
    """Read with the interpreter that runs the CLI (its shebang), not this venv's."""
    with contextlib.suppress(OSError, IndexError, subprocess.SubprocessError):
        python = cli.read_text(errors="replace").splitlines()[0].removeprefix("#!").strip()
        out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60, env=_clean_env())
        return out.stdout.strip() or None
    return None


def source_state() -> dict[str, Any]:
    """Which imageserve code was measured: the commit, and what differed from it under server/ and pipelines/."""
    def git(*argv: str) -> list[str]:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout.split()
        return []
    changed = git("diff", "--name-only", "HEAD", "--", "server", "pipelines")
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "server", "pipelines")
    return {"commit": (git("rev-parse", "HEAD") or ["unknown"])[0], "uncommitted_changes": changed + untracked}


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}  # other work on the machine skews every path


async def run(args: argparse.Namespace) -> dict[str, Any]:
    not_measured: dict[str, str] = {}
    litellm_ver, start_machine = None, machine()
    if args.litellm is None:
        not_measured["litellm"] = "no --litellm given (path to the `litellm` CLI in its own venv)"
    elif not args.litellm.is_file():
        not_measured["litellm"] = f"--litellm {args.litellm} is not a file"
    else:
        litellm_ver = litellm_version(args.litellm)
    with tempfile.TemporaryDirectory(prefix="vendor-overhead-") as tmp, Processes(Path(tmp)) as procs:
        emulator = start_emulator(procs, args.upstream_latency_ms, args.image)
        bases = {"direct": (emulator + "/v1", VENDOR_KEY),
                 "imageserve": (start_imageserve(procs, emulator) + "/v1", IMAGESERVE_KEY)}
        if "litellm" not in not_measured:
            try:
                bases["litellm"] = (start_litellm(procs, args.litellm, emulator) + "/v1", LITELLM_KEY)
            except RuntimeError as exc:
                not_measured["litellm"] = f"its proxy did not start: {' '.join(str(exc).split())[:600]}"
        async with asyncio.timeout(args.max_seconds):
            results = await measure(bases, args, not_measured)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**start_machine, "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "versions": {"imageserve": importlib.metadata.version("imageserve"), "litellm": litellm_ver,
                     "openai": importlib.metadata.version("openai")},
        "imageserve_source": source_state(),
        "command": " ".join(["python", "benchmarks/vendor_overhead.py", *args.argv]),
        "setup": {
            "emulator": f"tests/support/emulators/openai_api.py in one uvicorn process; dall-e-3, 1024x1024 "
                        f"{'photo-like' if args.image == 'photo' else 'single-colour'} PNG, b64_json, answering "
                        f"after {args.upstream_latency_ms:g} ms",
            "imageserve": "auth on (IMAGESERVE_API_KEYS), quotas on (tier 'bench': 1,000,000/min, 100,000,000/day), "
                          "usage ledger in SQLite, [providers.openai] defaults (max_concurrency 64), b64_json",
            "litellm": f"proxy, --num_workers 1, master key, no database, LITELLM_LOCAL_MODEL_COST_MAP=True; "
                       f"{MODEL} -> {LITELLM_UPSTREAM}, no response_format sent (refused for OpenAI image models)",
            "client": "official openai AsyncOpenAI, max_retries 0, one client per path, in the benchmark process",
        },
        "paths_measured": list(results["sequential"]),
        "not_measured": not_measured,
        "goals": GOALS,
        "earlier_session": EARLIER,
        **results,
    }


def _goal(value: float | None, goal: float, unit: str, scale: float = 1.0) -> str:
    if value is None:
        return "not measured"
    return f"{value * scale:.1f} {unit} (goal <= {goal * scale:g} {unit}: {'met' if value <= goal else 'not met'})"


def to_markdown(report: dict[str, Any]) -> str:
    m, v, seq, conc = report["machine"], report["versions"], report["sequential"], report["concurrent"]
    first = next(iter(conc.values()))
    lines = [
        "# Vendor request overhead: imageserve beside LiteLLM's proxy, on one loopback emulator", "",
        f"Date: {report['date']}. Machine: {m['platform']}, {m['processor']}, nproc {m['nproc']} "
        f"({m['usable_cpus']} usable), Python {m['python']}; 1-minute load average {m['loadavg_1m_at_start']} at "
        f"the start, {m['loadavg_1m_at_end']} at the end.",
        f"Versions: imageserve {v['imageserve']} (commit {report['imageserve_source']['commit'][:12]}, "
        f"{len(report['imageserve_source']['uncommitted_changes'])} uncommitted files under server/ and pipelines/), "
        f"litellm {v['litellm'] or '-'}, openai {v['openai']}.",
        f"Command: `{report['command']}`", "",
        f"Concurrency 1: {next(iter(seq.values()))['requests']} sequential requests per path, interleaved. "
        f"Concurrency {first['concurrency']}: {first['requests']} requests per path, median of {first['rounds']} "
        "rounds. Added = path p50 - direct p50; slower than direct = wall / direct wall - 1.", "",
        f"| path | c=1 p50 ms | c=1 p90 ms | added p50 ms | c={first['concurrency']} wall s | requests/s "
        f"| c={first['concurrency']} p50 ms | slower than direct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in PATHS:
        if path not in seq:
            lines.append(f"| {path} | not measured: {report['not_measured'].get(path, '-')} |||||||")
            continue
        s, c = seq[path], conc[path]
        lines.append(f"| {path} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['added_ms_p50']:+.1f} | "
                     f"{c['wall_s']:.2f} | {c['requests_per_s']:.0f} | {c['latency_ms_p50']:.0f} | "
                     f"{100 * c['slower_than_direct']:+.1f}% |")
    ims = seq.get("imageserve", {}), conc.get("imageserve", {})
    lines += [
        "", "## Issue 11's goals (not asserted)", "",
        f"- imageserve added latency p50: {_goal(ims[0].get('added_ms_p50'), GOALS['imageserve_added_ms_p50'], 'ms')}",
        f"- imageserve at concurrency {first['concurrency']}, slower than direct: "
        f"{_goal(ims[1].get('slower_than_direct'), GOALS['imageserve_slower_than_direct'], '%', 100)}",
        f"- imageserve's own `perf.latency_ms` p50 at concurrency 1: "
        f"{ims[0].get('server_latency_ms_p50', float('nan')):.1f} ms",
        "", "Earlier session (for comparison): direct 15 ms p50, LiteLLM +13.5 ms, imageserve +15 ms; at "
        "concurrency 32 imageserve 14 % slower than direct, LiteLLM 11.5 %.",
        "", "## Setup", "",
        *[f"- {name}: {text}" for name, text in report["setup"].items()],
        "- images: " + ", ".join(f"{p} {i['size']} ({i['b64_chars']} b64 chars)" for p, i in report["images"].items()),
        "- per-round slower than direct: " + "; ".join(
            f"{p} " + ", ".join(f"{100 * x:+.1f}%" for x in conc[p]["slower_than_direct_rounds"])
            for p in conc if p != "direct"),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--litellm", type=Path, default=None, help="the `litellm` CLI (in its own venv)")
    parser.add_argument("--requests", type=int, default=100, help="sequential requests per path (concurrency 1)")
    parser.add_argument("--warmup", type=int, default=10, help="unrecorded sequential requests per path first")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--concurrent-requests", type=int, default=200, help="requests per path and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds at concurrency (median wall time)")
    parser.add_argument("--max-seconds", type=float, default=900, help="the measurement stops after this")
    parser.add_argument("--upstream-latency-ms", type=float, default=0.0,
                        help="the emulator answers after this long (a real vendor takes seconds)")
    parser.add_argument("--image", choices=("flat", "photo"), default="flat",
                        help="flat: a single-colour PNG of a few KB; photo: a 1.8 MB PNG like a vendor's image")
    parser.add_argument("--name", default="vendor-overhead", help="result files: NAME.json and NAME.md")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if min(args.requests, args.warmup, args.concurrency, args.concurrent_requests, args.rounds) < 1:
        parser.error("counts must be at least 1")
    report = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (args.out / f"{args.name}.md").write_text(markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()

"""`imageserve serve --ray` as a user runs it: its own local Ray instance, Serve's proxy on --port, the official
`openai` client, then Ctrl-C (SIGINT) stops Serve and Ray. Bounded: about 30 s on two cores."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI

from tests.support.constants import REPO_ROOT

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

CONFIG = """
default_model = "sim"
[models.sim]
kind = "simulated"
time_scale = 0.002
max_batch_images = 2
sizes = ["256x256"]
extra_params = ["seed"]
[models.sim.ray]
num_replicas = 2
num_cpus = 0.1
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}


def _listeners_off_loopback(root: int) -> set[str]:
    """The processes under `root` listening (TCP) on anything but loopback, by process title. Ray Serve 2.60
    replicas are the known exception: each opens its inter-deployment gRPC server on [::] (hard-coded in
    ray/serve/_private/replica.py), which the README tells operators to firewall."""
    import psutil

    tree = {root: "imageserve", **{child.pid: " ".join(child.cmdline()[:1]) for child in
                                   psutil.Process(root).children(recursive=True)}}
    return {tree[conn.pid] for conn in psutil.net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN and conn.pid in tree and conn.laddr.ip not in LOOPBACK
            and not tree[conn.pid].startswith("ray::ServeReplica")}


def test_serve_ray_runs_the_app_on_two_replicas_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "imageserve.toml").write_text(CONFIG)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESERVE_", "RAY_"))}
    env.update(IMAGESERVE_DATA_DIR=str(tmp_path / "data"), IMAGESERVE_MODEL_CACHE=str(tmp_path / "cache"),
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO_ROOT))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        config = str(tmp_path / "imageserve.toml")
        process = subprocess.Popen([sys.executable, "-m", "server.cli.main", "--config", config,
                                    "serve", "--ray", "--port", str(port)], cwd=tmp_path, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops it" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"serve --ray did not start: {log.read_text()[-3000:]}"
            time.sleep(0.5)

        async def sixteen() -> list:
            client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
            try:
                return await asyncio.gather(*(client.images.generate(
                    model="sim", prompt=f"fox {i}", size="256x256", response_format="b64_json") for i in range(16)))
            finally:
                await client.close()

        responses = asyncio.run(sixteen())
        assert _listeners_off_loopback(process.pid) == set()  # Ray's servers, its agents and Serve's proxy
        busy = subprocess.run([sys.executable, "-m", "server.cli.main", "--config", str(tmp_path / "imageserve.toml"),
                               "serve", "--ray", "--port", str(port)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)
        assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
        assert len({r.model_extra["perf"]["device"].split("/")[0] for r in responses}) == 2
        assert httpx.get(base + "/health", timeout=10).status_code == 200
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)  # an impatient second Ctrl-C must not hang it
        assert process.wait(timeout=90) == 0, log.read_text()[-3000:]
        assert "stopping the application" in log.read_text()
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

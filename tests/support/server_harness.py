"""A real uvicorn server on 127.0.0.1, in a background thread or in its own process, for integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from server.app import create_app
from server.settings import Settings, load_settings
from tests.support.constants import REPO_ROOT

ROOT = REPO_ROOT


@dataclass
class RunningServer:
    base_url: str
    settings: Settings
    app: FastAPI

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def running_server(app_factory: Any = create_app, **setting_overrides: Any) -> Iterator[RunningServer]:
    """Start `create_app(settings)` under uvicorn on a free loopback port; stop it on exit."""
    sock = _loopback_socket()
    port = sock.getsockname()[1]
    settings = load_settings(host="127.0.0.1", port=port, **setting_overrides)
    app = app_factory(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def server_process(workdir: Path, config_toml: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`imageserve serve` in its own process (for process-wide state such as environment variables), on a
    free loopback port, without API keys; yields its base URL. Its log is `workdir / "server.log"`."""
    config = workdir / "config.toml"
    config.write_text(config_toml)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clean = {name: value for name, value in os.environ.items() if not name.startswith("IMAGESERVE_")}
    environment = {**clean, "IMAGESERVE_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(ROOT), **(env or {})}
    log = workdir / "server.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "server.cli.main", "--config", str(config), "serve",
                                    "--port", str(port)], cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not _healthy(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

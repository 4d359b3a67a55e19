"""A real uvicorn server on 127.0.0.1 in a background thread, for integration tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from server.app import create_app
from server.settings import Settings, load_settings


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

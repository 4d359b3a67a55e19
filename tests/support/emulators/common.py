"""What the emulators share: a uvicorn thread on a free port, scripted failures, real PNG images."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_HANG_SECONDS = 3.0


@dataclass(frozen=True)
class Fail:
    """Answer with this status (and the vendor's error body); 429 may carry a Retry-After."""

    status: int
    retry_after: str | None = None


@dataclass(frozen=True)
class Hang:
    """Say nothing for this long (capped), then answer normally."""

    seconds: float = MAX_HANG_SECONDS


@dataclass(frozen=True)
class Malformed:
    """A 200 whose body is not the JSON the vendor documents."""

    body: str = "<html>upstream proxy error</html>"


@dataclass(frozen=True)
class Truncated:
    """A hosted image cut short: its header still reads, its pixels do not decode (the `file` route only)."""

    keep: float = 0.5  # the fraction of the bytes that is sent


Behaviour = Fail | Hang | Malformed | Truncated


@lru_cache(maxsize=64)
def png(width: int, height: int, color: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Recorded:
    route: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    behaviour: Behaviour | None = None  # the scripted behaviour this request met, if any


@dataclass
class EmulatorBase:
    """Subclasses add `routes()`; every request is recorded; scripted behaviours run before the handler."""

    key: str
    base_url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    _scripts: dict[str, deque[Behaviour]] = field(default_factory=lambda: defaultdict(deque))
    _files: dict[str, bytes] = field(default_factory=dict)

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError

    # --- scripting ----

    def script(self, route: str, *behaviours: Behaviour) -> None:
        if route != "file" and any(isinstance(b, Truncated) for b in behaviours):
            raise ValueError("Truncated applies to hosted files (the 'file' route) only")
        self._scripts[route].extend(behaviours)

    def reset(self) -> None:
        self.requests.clear()
        self._scripts.clear()
        self._files.clear()

    def calls(self, route: str) -> list[Recorded]:
        return [r for r in self.requests if r.route == route]

    async def record(self, route: str, request: Request) -> tuple[Recorded, Response | None]:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        rec = Recorded(route, request.method, request.url.path, dict(request.headers), body)
        self.requests.append(rec)
        queue = self._scripts.get(route)
        if queue:
            behaviour = rec.behaviour = queue.popleft()
            if isinstance(behaviour, Truncated):
                return rec, None  # the handler answers normally, then cuts its answer short
            if isinstance(behaviour, Hang):
                deadline = time.monotonic() + min(behaviour.seconds, MAX_HANG_SECONDS)
                while time.monotonic() < deadline and not await request.is_disconnected():
                    await asyncio.sleep(0.02)
            elif isinstance(behaviour, Malformed):
                return rec, Response(behaviour.body, status_code=200, media_type="application/json")
            else:
                headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
                # Vendor error bodies may echo what we sent; include the key to prove it never leaks.
                body_out = self.error_body(
                    behaviour.status, f"scripted failure (key seen: {self._seen(rec)})"
                )
                return rec, JSONResponse(body_out, status_code=behaviour.status, headers=headers)
        return rec, None

    def _seen(self, rec: Recorded) -> str:
        return self.key

    # --- hosted files (vendor image links) ----

    def host_file(self, data: bytes, suffix: str = "png") -> str:
        name = f"{uuid.uuid4().hex}.{suffix}"
        self._files[name] = data
        return f"{self.base_url}/files/{name}"

    async def _file(self, request: Request) -> Response:
        rec, scripted = await self.record("file", request)
        if scripted is not None:
            return scripted
        data = self._files.get(request.path_params["name"])
        if data is None:
            return Response("not found", status_code=404)
        if isinstance(rec.behaviour, Truncated):
            data = data[: int(len(data) * rec.behaviour.keep)]
        return Response(data, media_type="image/png")

    def app(self) -> Starlette:
        return Starlette(routes=[*self.routes(), Route("/files/{name}", self._file, methods=["GET"])])


class EmulatorServer:
    """Runs an emulator's app with uvicorn in a thread on 127.0.0.1:<free port>."""

    def __init__(self, emulator: EmulatorBase) -> None:
        self.emulator = emulator
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        emulator.base_url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            emulator.app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> EmulatorBase:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("emulator did not start")
            time.sleep(0.01)
        return self.emulator

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

"""The `Server-Timing` header (W3C Server Timing) of image answers: where a request's time went.

    server-timing: auth;dur=0.4, queue;dur=3.1, device;dur=640.2, encode;dur=151.0, store;dur=2.0, total;dur=801.3

Durations are milliseconds. Only the stages that applied are listed:
- `auth`: the `authenticate` dependency (the key lookup and its failure budget), kept on `request.state`.
- `queue`, `device` (local models): time the images waited in the scheduler before their batch ran, and the
  device time of their batches (`perf.device_ms`); see `pipelines.backend.queue_ms`.
- `upstream` (vendors): the wall time of the vendor call, polling, download and the image check included.
- `encode`, `store`: the wall time of encoding (base64 included) and storing, `store` for url answers only;
  see `ImageService._materialize` for how the parallel work is split between them.
- `total`: from the moment the route is entered (before the request id, the key and the body) until the
  answer's headers are sent, the rendering of the JSON included.

Every answer of a route built with `TimedRoute` carries the header, error answers too: those list `auth`
(when the key was checked) and `total`, so the error table (`server.api.errors`) needs to know nothing of it.
The stages of a successful answer are also observed once in the `imageserve_stage_seconds` histogram.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SERVER_TIMING_HEADER = "server-timing"
STAGES = ("auth", "queue", "device", "upstream", "encode", "store", "total")


def format_server_timing(stages_ms: Mapping[str, float]) -> str:
    """`{"auth": 0.4, "total": 801.3}` -> `auth;dur=0.4, total;dur=801.3`, in the order of `STAGES`."""
    unknown = set(stages_ms) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown Server-Timing stage(s): {', '.join(sorted(unknown))}")
    return ", ".join(f"{name};dur={_duration(stages_ms[name])}" for name in STAGES if name in stages_ms)


def _duration(ms: float) -> str:
    """One decimal, never negative, never `nan` (not a number the header's grammar allows)."""
    return f"{max(ms, 0.0):.1f}" if math.isfinite(ms) else "0.0"


def record_auth(request: Request, auth_ms: float) -> None:
    request.state.auth_ms = auth_ms


def record_stages(request: Request, model: str, stages_ms: Mapping[str, float]) -> None:
    """What the service measured for a successful answer (queue, device, upstream, encode, store)."""
    request.state.timed_model = model
    request.state.timed_stages = dict(stages_ms)


class TimedRoute(APIRoute):
    """A route whose every answer, error answers included, carries `Server-Timing`: the header is added as the
    headers go out, whoever built them (the handler, or the error table for an error the route raised)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _timed(super().handle)(scope, receive, send)


def _timed(app: ASGIApp) -> ASGIApp:
    async def timed_app(scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope)

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = request.state
                stages: dict[str, float] = {}
                if (auth_ms := getattr(state, "auth_ms", None)) is not None:
                    stages["auth"] = auth_ms
                ok = message["status"] == 200 and getattr(state, "timed_stages", None) is not None
                if ok:
                    stages.update(state.timed_stages)
                stages["total"] = (time.perf_counter() - started) * 1000
                MutableHeaders(scope=message).append(SERVER_TIMING_HEADER, format_server_timing(stages))
                if ok:
                    request.app.state.metrics.observe_stages(state.timed_model, stages)
            await send(message)

        await app(scope, receive, send_with_timing)

    return timed_app

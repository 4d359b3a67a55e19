"""The `Server-Timing` header: its formatting, and a `TimedRoute` putting it on every answer, errors included."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from server.api.deps import authenticate
from server.api.errors import install_error_handlers
from server.api.timing import STAGES, TimedRoute, format_server_timing, record_stages
from server.errors import AuthenticationError, InvalidRequest
from tests.support.server_timing import parse_server_timing


def test_stages_come_in_a_fixed_order_with_one_decimal() -> None:
    stages = {"total": 801.34, "store": 2.0, "encode": 151.0, "device": 640.25, "queue": 3.1, "auth": 0.44}
    assert format_server_timing(stages) == (
        "auth;dur=0.4, queue;dur=3.1, device;dur=640.2, encode;dur=151.0, store;dur=2.0, total;dur=801.3"
    )


def test_only_the_stages_given_are_listed() -> None:
    assert format_server_timing({"upstream": 1234.56, "encode": 0.04, "auth": 0.2, "total": 1300}) == (
        "auth;dur=0.2, upstream;dur=1234.6, encode;dur=0.0, total;dur=1300.0"
    )
    assert format_server_timing({"total": 5}) == "total;dur=5.0"


def test_what_is_written_reads_back() -> None:
    stages = {name: float(index) * 10.5 for index, name in enumerate(STAGES)}
    assert parse_server_timing(format_server_timing(stages)) == pytest.approx(stages, abs=0.05)


def test_a_duration_is_never_negative_nor_nan() -> None:
    assert format_server_timing({"queue": -0.2, "device": math.nan, "total": math.inf}) == (
        "queue;dur=0.0, device;dur=0.0, total;dur=0.0"
    )


def test_an_unknown_stage_is_a_bug_not_a_header() -> None:
    with pytest.raises(ValueError, match="load"):
        format_server_timing({"load": 1.0, "total": 2.0})


class FakeMetrics:
    def __init__(self) -> None:
        self.observed: list[tuple[str, dict[str, float]]] = []

    def observe_stages(self, model: str, stages_ms: Mapping[str, float]) -> None:
        self.observed.append((model, dict(stages_ms)))


class FakeAuthenticator:
    async def authenticate(self, header: str | None, client_ip: str | None) -> str:
        if header != "Bearer good":
            raise AuthenticationError("Incorrect API key provided.")
        return "principal"


def _app() -> FastAPI:
    router = APIRouter(route_class=TimedRoute)

    @router.post("/work")
    async def work(request: Request, principal: str = Depends(authenticate), fail: bool = False) -> Response:
        if fail:
            raise InvalidRequest("no", param="fail")
        record_stages(request, "m", {"queue": 1.0, "device": 2.0, "encode": 3.0})
        return Response(b"{}", media_type="application/json")

    app = FastAPI()
    app.state.metrics = FakeMetrics()
    app.state.authenticator = FakeAuthenticator()
    install_error_handlers(app)
    app.include_router(router)
    return app


async def _post(app: FastAPI, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.post("/work", **kwargs)


async def test_a_success_lists_auth_its_stages_and_total_and_is_observed_once() -> None:
    app = _app()
    response = await _post(app, headers={"Authorization": "Bearer good"})
    assert response.status_code == 200
    stages = parse_server_timing(response.headers["server-timing"])
    assert list(stages) == ["auth", "queue", "device", "encode", "total"]
    assert stages["device"] == 2.0 and stages["total"] >= stages["auth"] >= 0
    assert [(model, list(observed)) for model, observed in app.state.metrics.observed] == [
        ("m", ["auth", "queue", "device", "encode", "total"])
    ]


@pytest.mark.parametrize(("headers", "params", "status"), [
    ({"Authorization": "Bearer bad"}, {}, 401),  # the key check ran (and failed): it is timed
    ({"Authorization": "Bearer good"}, {"fail": "true"}, 400),
])
async def test_an_error_answer_carries_auth_and_total_and_is_not_observed(headers, params, status) -> None:
    app = _app()
    response = await _post(app, headers=headers, params=params)
    assert response.status_code == status
    assert list(parse_server_timing(response.headers["server-timing"])) == ["auth", "total"]
    assert app.state.metrics.observed == []


async def test_other_routes_are_left_alone() -> None:
    app = FastAPI()
    app.state.authenticator = SimpleNamespace()

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert "server-timing" not in (await client.get("/plain")).headers

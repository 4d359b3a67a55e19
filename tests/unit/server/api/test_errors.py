"""The one table from errors to HTTP: every error class has its status, headers and body shape."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import GenerationFailed, ImageServeError, ModelUnavailable, OutOfDeviceMemory, QueueFull
from server.api.errors import HttpError, body_of, error_response, headers_of, status_of
from server.errors import (
    AuthenticationError,
    ClientClosedRequest,
    ContentPolicyViolation,
    InvalidRequest,
    LinkExpired,
    LinkForbidden,
    NotFound,
    RateLimitExceeded,
    UpstreamError,
)


@pytest.mark.parametrize(("error", "status", "type_"), [
    (InvalidRequest("bad", param="n"), 400, "invalid_request"),
    (ContentPolicyViolation(), 400, "content_policy_violation"),
    (AuthenticationError("no key"), 401, "authentication_error"),
    (LinkForbidden("bad signature"), 403, "invalid_signature"),
    (NotFound("nope", param="model", code="model_not_found"), 404, "not_found"),
    (LinkExpired("old"), 410, "expired"),
    (RateLimitExceeded("slow down", retry_after=2.5), 429, "rate_limit_exceeded"),
    (ClientClosedRequest("gone"), 499, "client_closed_request"),
    (GenerationFailed("failed"), 500, "generation_failed"),
    (ImageServeError("bug"), 500, "server_error"),
    (UpstreamError("vendor down"), 502, "upstream_error"),
    (ModelUnavailable("no weights"), 503, "model_unavailable"),
    (QueueFull("busy", retry_after=7), 503, "server_overloaded"),
    (OutOfDeviceMemory("too big"), 503, "insufficient_resources"),
    (HttpError("Method Not Allowed", 405), 405, "method_not_allowed"),
])
def test_each_error_has_its_status_and_type(error: ImageServeError, status: int, type_: str) -> None:
    assert status_of(error) == status
    assert body_of(error)["error"]["type"] == type_


def test_the_body_always_has_param_and_code() -> None:
    assert body_of(ImageServeError("x")) == {"error": {"message": "x", "type": "server_error", "param": None,
                                                       "code": None}}
    assert body_of(ModelUnavailable("no weights"))["error"]["param"] == "model"


def test_retry_headers_come_from_the_error() -> None:
    limited = RateLimitExceeded("daily cap", retry_after=3600.2, should_retry=False)
    assert headers_of(limited) == {"Retry-After": "3601", "retry-after-ms": "3600200", "x-should-retry": "false"}
    assert body_of(limited)["error"]["retry_after"] == 3601
    assert headers_of(RateLimitExceeded("x", retry_after=float("inf")))["Retry-After"] == "86400"
    assert headers_of(QueueFull("busy", retry_after=7)) == {"Retry-After": "7"}
    assert headers_of(AuthenticationError("no key")) == {"WWW-Authenticate": "Bearer"}
    assert headers_of(UpstreamError("down")) == {}


def test_error_response_carries_the_request_id() -> None:
    response = error_response(QueueFull("busy", retry_after=3), "req_img_1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3" and response.headers["x-request-id"] == "req_img_1"
    assert json.loads(response.body)["error"]["type"] == "server_overloaded"

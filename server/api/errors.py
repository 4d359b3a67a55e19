"""The one table from errors to HTTP: status, headers and the `{"error": {...}}` body, and the handlers.

The engine (`pipelines.errors`) and the server's layers (`server.errors`) raise errors that know nothing
of HTTP. Here each error class gets its status; `Retry-After` (and `retry-after-ms`, `x-should-retry`) come
from the error's own fields. Nothing else builds an error body, and no traceback ever reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.errors import GenerationFailed, ImageServeError, ModelUnavailable, OutOfDeviceMemory, QueueFull
from server.errors import (
    AuthenticationError,
    ClientClosedRequest,
    ContentPolicyViolation,
    InvalidRequest,
    LinkExpired,
    LinkForbidden,
    NotFound,
    PayloadTooLarge,
    PolicyUnavailable,
    RateLimitExceeded,
    UpstreamError,
)

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"

# Most specific class first; `status_of` walks each error's class hierarchy.
STATUS: dict[type[ImageServeError], int] = {
    InvalidRequest: 400,
    ContentPolicyViolation: 400,
    AuthenticationError: 401,
    LinkForbidden: 403,
    NotFound: 404,
    LinkExpired: 410,
    PayloadTooLarge: 413,
    RateLimitExceeded: 429,
    ClientClosedRequest: 499,
    GenerationFailed: 500,
    UpstreamError: 502,
    ModelUnavailable: 503,
    PolicyUnavailable: 503,  # a QueueFull: Retry-After comes with it
    QueueFull: 503,
    OutOfDeviceMemory: 503,
    ImageServeError: 500,
}


class HttpError(ImageServeError):
    """What the framework itself answers (an unknown path, a wrong method), in our error format."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.type = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")


def status_of(error: ImageServeError) -> int:
    if isinstance(error, HttpError):
        return error.status
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def headers_of(error: ImageServeError) -> dict[str, str]:
    if isinstance(error, RateLimitExceeded):
        headers = {"Retry-After": str(error.retry_after),
                   "retry-after-ms": str(max(1, int(error.retry_after_exact * 1000)))}
        if not error.should_retry:
            headers["x-should-retry"] = "false"
        return headers
    if isinstance(error, QueueFull):
        return {"Retry-After": str(error.retry_after)}
    if isinstance(error, AuthenticationError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(error, ModelUnavailable):  # a setup problem (no key, no weights, no device): retrying won't help
        return {"x-should-retry": "false"}
    return {}


def body_of(error: ImageServeError) -> dict[str, Any]:
    """OpenAI's shape: `param` and `code` are always there, null when they do not apply."""
    body: dict[str, Any] = {"message": error.message, "type": error.type, "param": error.param, "code": error.code}
    if isinstance(error, RateLimitExceeded):
        body["retry_after"] = error.retry_after
    return {"error": body}


def error_response(error: ImageServeError, request_id: str | None = None) -> JSONResponse:
    headers = headers_of(error)
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(body_of(error), status_code=status_of(error), headers=headers)


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def install_error_handlers(app: FastAPI, on_error: Any = None) -> None:
    """Every failure becomes our error body. `on_error(route, error_type)` observes each (metrics)."""

    def observe(request: Request, error: ImageServeError) -> None:
        if on_error is not None:
            on_error(_route_of(request), error.type)

    @app.exception_handler(ImageServeError)
    async def _known(request: Request, exc: ImageServeError) -> JSONResponse:
        observe(request, exc)
        return error_response(exc, getattr(request.state, "request_id", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        param = location[0] if location else None
        return error_response(InvalidRequest(f"Invalid value for '{param}': {first.get('msg', 'invalid')}",
                                             param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _framework(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = HttpError(str(exc.detail), exc.status_code)
        observe(request, error)
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(ImageServeError("The server had an error while processing your request."),
                              getattr(request.state, "request_id", None))

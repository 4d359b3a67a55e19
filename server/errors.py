"""One error type for the whole server, rendered by one handler as `{"error": {...}}`.

Everything that can go wrong for a client raises an `ApiError` (or a subclass). The handler in
`server.app` turns it into JSON with the right status and headers; nothing else builds error bodies,
and no traceback ever reaches a client.
"""

from __future__ import annotations

import math
from typing import Any

MAX_RETRY_AFTER_SECONDS = 86_400.0  # a day: the longest wait a quota window asks for


class ApiError(Exception):
    status: int = 500
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """OpenAI's shape: `param` and `code` are always there, null when they do not apply."""
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        error.update(self.extra)
        return {"error": error}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request"


class ContentPolicyViolation(ApiError):
    status = 400
    type = "content_policy_violation"

    def __init__(self, message: str = "Your request was rejected as a result of our safety system.", **kw: Any):
        super().__init__(message, code="content_policy_violation", **kw)


class AuthenticationError(ApiError):
    status = 401
    type = "authentication_error"

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("code", "invalid_api_key")
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kw)


class NotFound(ApiError):
    status = 404
    type = "not_found"


class RateLimitExceeded(ApiError):
    """429 with the seconds to wait, in the body and in `Retry-After` / `retry-after-ms`."""

    status = 429
    type = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, should_retry: bool = True, **kw: Any) -> None:
        if not math.isfinite(retry_after):
            retry_after = MAX_RETRY_AFTER_SECONDS
        retry_after = min(retry_after, MAX_RETRY_AFTER_SECONDS)
        seconds = max(1, int(-(-retry_after // 1)))  # whole seconds, rounded up, at least 1
        headers = {"Retry-After": str(seconds), "retry-after-ms": str(max(1, int(retry_after * 1000)))}
        if not should_retry:
            headers["x-should-retry"] = "false"
        headers.update(kw.pop("headers", {}) or {})
        super().__init__(message, headers=headers, extra={"retry_after": seconds}, **kw)
        self.retry_after = seconds


class UpstreamError(ApiError):
    status = 502
    type = "upstream_error"


class ModelUnavailable(ApiError):
    status = 503
    type = "model_unavailable"

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("param", "model")
        super().__init__(message, **kw)


class ServerOverloaded(ApiError):
    """The queue for a model is full: come back later rather than queue forever."""

    status = 503
    type = "server_overloaded"

    def __init__(self, message: str, *, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **kw)


class InsufficientResources(ApiError):
    status = 503
    type = "insufficient_resources"


class GenerationFailed(ApiError):
    status = 500
    type = "generation_failed"

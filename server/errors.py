"""The server's own errors (requests, keys, quotas, vendors, image links), beside the engine's.

Like `pipelines.errors`, which they extend, they carry no HTTP: `server.api.errors` is the one table that
maps every error to its status, type, code and headers (`Retry-After` and friends), and renders the body.
"""

from __future__ import annotations

import math

from pipelines.errors import ImageServeError, QueueFull

MAX_RETRY_AFTER_SECONDS = 86_400.0  # a day: the longest wait a quota window asks for


class InvalidRequest(ImageServeError):
    type = "invalid_request"


class ContentPolicyViolation(ImageServeError):
    type = "content_policy_violation"

    def __init__(self, message: str = "Your request was rejected as a result of our safety system.", *,
                 param: str | None = None) -> None:
        super().__init__(message, param=param, code="content_policy_violation")


class AuthenticationError(ImageServeError):
    type = "authentication_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "invalid_api_key") -> None:
        super().__init__(message, param=param, code=code)


class NotFound(ImageServeError):
    type = "not_found"


class RateLimitExceeded(ImageServeError):
    """Over a quota (or throttled): `retry_after` whole seconds (at least 1, at most a day) until it fits.
    `should_retry` is False when waiting makes no sense for a client that retries on its own (a daily cap)."""

    type = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, should_retry: bool = True,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        if not math.isfinite(retry_after):
            retry_after = MAX_RETRY_AFTER_SECONDS
        self.retry_after_exact = min(retry_after, MAX_RETRY_AFTER_SECONDS)
        self.retry_after = max(1, int(-(-self.retry_after_exact // 1)))  # whole seconds, rounded up
        self.should_retry = should_retry


class UpstreamError(ImageServeError):
    """A vendor failed or answered something unusable."""

    type = "upstream_error"


class LinkForbidden(ImageServeError):
    """An image link whose signature does not match."""

    type = "invalid_signature"


class LinkExpired(ImageServeError):
    """An image link past its expiry (the file is gone too)."""

    type = "expired"


class ClientClosedRequest(ImageServeError):
    """The client went away before its answer was ready; its work was cancelled. Nobody reads it, but access
    logs and metrics record it (as nginx's 499)."""

    type = "client_closed_request"


class ReplicaLost(QueueFull):
    """The replica running the request stopped mid-way (it crashed, or the cluster replaced it): nothing was
    made or billed, and a retry goes to a live replica. A 503 with `Retry-After`, like a full queue."""

    type = "replica_lost"

    def __init__(self, message: str, *, retry_after: int = 2) -> None:
        super().__init__(message, retry_after=retry_after, code="replica_lost")


class StorageUnavailable(QueueFull):
    """The image store (object storage) did not answer in time or refused to: a 503 with `Retry-After`;
    the images of the request are not billed."""

    type = "storage_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after, code="storage_unavailable")


class PayloadTooLarge(ImageServeError):
    """A request body (or one part of it, e.g. an uploaded image) over its configured size: refused while it is
    read, before any of it is parsed. `param` names what was too large; `limit` is the allowance in bytes."""

    type = "payload_too_large"

    def __init__(self, message: str, *, param: str | None = None, limit: int | None = None) -> None:
        super().__init__(message, param=param, code="payload_too_large")
        self.limit = limit


class PolicyUnavailable(QueueFull):
    """The content policy's moderation service did not answer (or answered an error) and the policy fails
    closed: a 503 with `Retry-After`; nothing was made or billed."""

    type = "policy_unavailable"

    def __init__(self, message: str = "The content policy service is unavailable; please try again later.", *,
                 retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after, code="policy_unavailable")

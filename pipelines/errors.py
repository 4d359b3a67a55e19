"""The engine's errors: what can go wrong making images, with no HTTP in them.

Every error a client can see derives from `ImageServeError`: a message, the request parameter it is
about (if any), a short machine-readable `code`, and `type`, the error's stable name (OpenAI's error
types where one fits). Only the HTTP edge (`server.api.errors`) knows which status and headers each
one means, so the same engine runs unchanged behind another front end (a Ray Serve replica, a CLI).
"""

from __future__ import annotations


class ImageServeError(Exception):
    """Base of every error a client can be told about; anything else is a bug, logged and masked."""

    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ModelUnavailable(ImageServeError):
    """The model cannot run now: no weights, no vendor key, a failed load, a device it cannot use."""

    type = "model_unavailable"

    def __init__(self, message: str, *, param: str | None = "model", code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)


class QueueFull(ImageServeError):
    """Too much work is waiting (a model's queue, or the slots for a vendor): come back in `retry_after` s."""

    type = "server_overloaded"

    def __init__(self, message: str, *, retry_after: int = 5, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class OutOfDeviceMemory(ImageServeError):
    """Even a single image does not fit in the device's memory at this size."""

    type = "insufficient_resources"


class GenerationFailed(ImageServeError):
    """The pipeline failed for this batch; the cause is logged, never shown."""

    type = "generation_failed"

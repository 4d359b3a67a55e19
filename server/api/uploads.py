"""Multipart uploads of `POST /v1/images/edits` and `/variations`: read within limits, decode safely.

The body is counted while it is read and refused with 413 as soon as it passes what an image, a mask and the
text fields may take (`max_upload_bytes` each, `max_json_bytes` for the rest); each file is then held to
`max_upload_bytes` (413 naming it). Files are spooled by Starlette's parser (memory, then disk), never held
whole twice. Decoding: PNG, JPEG or WebP only, the pixel count checked from the header before any pixel is
decoded (decompression bombs), anything that does not decode a 400 naming `image` or `mask`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import Message

from server.errors import InvalidRequest, PayloadTooLarge

FORMATS = {"PNG", "JPEG", "WEBP"}
MAX_FIELDS = 40


class _LimitedReceive:
    """An ASGI `receive` that counts body bytes and refuses the request once they pass `limit`."""

    def __init__(self, receive: Any, limit: int) -> None:
        self._receive, self._limit, self.received = receive, limit, 0

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self._limit:
                raise PayloadTooLarge(f"The request body is larger than {self._limit} bytes.", param="image")
        return message


async def read_form(request: Request, max_upload_bytes: int, max_field_bytes: int, max_images: int = 1) -> FormData:
    """The multipart form, read within the limits (see the module docs): `max_images` images and a mask."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("This endpoint takes multipart/form-data (the image as a file field named 'image').",
                             param="image", code="invalid_content_type")
    limit = (max_images + 1) * max_upload_bytes + max_field_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.", param="image")
    limited = Request(request.scope, receive=_LimitedReceive(request.receive, limit))
    try:
        form = await limited.form(max_files=max_images + 1, max_fields=MAX_FIELDS, max_part_size=max_field_bytes)
    except (PayloadTooLarge, ClientDisconnect):
        raise
    except Exception as exc:  # noqa: BLE001 - Starlette's MultiPartException and malformed bodies
        raise InvalidRequest(f"The multipart body could not be read: {exc}", param="image") from None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile) and (value.size or 0) > max_upload_bytes:
            raise PayloadTooLarge(f"'{_param(name)}' is larger than {max_upload_bytes} bytes.", param=_param(name))
    return form


def _param(name: str) -> str:
    return name.removesuffix("[]")


@dataclass(frozen=True)
class Upload:
    image: Image.Image
    param: str


async def decode_upload(value: Any, param: str, max_pixels: int) -> Upload:
    """A file field decoded as a PNG, JPEG or WebP image of at most `max_pixels` pixels, or a 400."""
    if not isinstance(value, UploadFile):
        raise InvalidRequest(f"'{param}' must be a file (PNG, JPEG or WebP), not a text field.", param=param)
    data = await value.read()
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise InvalidRequest(f"'{param}' is {width}x{height}: more than the {max_pixels} pixels allowed.",
                                 param=param, code="image_too_large")
        if image.format not in FORMATS:
            raise InvalidRequest(f"'{param}' is a {image.format} image; send PNG, JPEG or WebP.", param=param,
                                 code="invalid_image_format")
        image.load()
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        raise InvalidRequest(f"'{param}' could not be decoded as a PNG, JPEG or WebP image.", param=param,
                             code="invalid_image") from None
    return Upload(image, param)

"""Turning images into bytes: PNG (default), JPEG or WebP, as OpenAI's `output_format` allows."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from PIL.Image import Image

EXTENSIONS = {"png": "png", "jpeg": "jpeg", "webp": "webp"}
MIME_TO_FORMAT = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


def encode_image(image: Image, output_format: str = "png", compression: int | None = None) -> bytes:
    """Encode a PIL image. `compression` is 0-100 (OpenAI's meaning: higher = smaller file)."""
    buffer = io.BytesIO()
    if output_format == "png":
        level = 6 if compression is None else max(0, min(9, round(compression / 100 * 9)))
        image.save(buffer, format="PNG", compress_level=level)
    elif output_format == "jpeg":
        quality = 90 if compression is None else max(1, 100 - compression)
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        quality = 90 if compression is None else max(1, 100 - compression)
        image.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()


def encode_pixels(pixels: NDArray[np.uint8], output_format: str = "png", compression: int | None = None) -> bytes:
    """Encode a local model's (height, width, 3) uint8 pixels; the PIL image is made here, on the caller's
    (encoder) thread, not on the device's."""
    from PIL import Image as PILImage

    return encode_image(PILImage.fromarray(pixels, "RGB"), output_format, compression)


def transcode(data: bytes, output_format: str, compression: int | None = None) -> bytes:
    """Re-encode vendor bytes when the client asked for another format; pass them through otherwise."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as image:
        current = (image.format or "").lower()
        if current == output_format and compression is None:
            return data
        image.load()
        return encode_image(image, output_format, compression)

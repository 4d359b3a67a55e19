"""Turning images into bytes: PNG (default), JPEG or WebP, as OpenAI's `output_format` allows.

PNG is most of what the server itself adds to a request (issue 11), so it gets its own encoder: libpng from
`imagecodecs`, with zlib's RLE strategy and the Paeth filter on every row. benchmarks/results/png-encoders.md
measured it at 13-23 ms for 1024x1024 on one core where Pillow's default level 6 took 150-390 ms, with files
within 2% of level 6's (smaller on textured images). zlib's RLE strategy only looks one byte back, which is
all a Paeth-filtered photo offers anyway; higher zlib levels change nothing under it, so the effort that
`output_compression` buys is the filter choice and, at the top, zlib's full search.

`output_compression` (0-100, OpenAI's meaning: higher = smaller file) maps to a zlib level
round(c / 100 * 9), as before, and each level to what actually shrinks files:

| level | PNG: what is tried (the smallest result is kept)             | 1024x1024, one core |
|-------|--------------------------------------------------------------|---------------------|
| 0     | stored, no compression (the largest file)                    | a few ms            |
| 1-5   | RLE + Paeth (also the default when none is asked for)        | ~20 ms              |
| 6-8   | that, and RLE with libpng's adaptive filter choice per row   | ~65 ms              |
| 9     | those, zlib level 9 with adaptive filters (wins on smooth    | 1-3 s               |
|       | images), and stored (wins on noise)                          |                     |

Each level tries what the level below tries, so a higher `output_compression` never gives a larger file.

Without `imagecodecs` (an optional install can lack it) PNG falls back to Pillow, logged once: Pillow also
accepts zlib's RLE strategy (`compress_type`) and filters adaptively, so its files match level 6's at about
half its time. JPEG and WebP are Pillow's.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from PIL.Image import Image

logger = logging.getLogger(__name__)

EXTENSIONS = {"png": "png", "jpeg": "jpeg", "webp": "webp"}
MIME_TO_FORMAT = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}

DEFAULT_PNG_LEVEL = 1  # the RLE + Paeth tier: level 6's size at a seventh of its time
Z_RLE = 3  # zlib's strategy constant, as both libpng (imagecodecs) and Pillow (`compress_type`) take it
_FAST_MODES = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}  # PIL mode -> channels imagecodecs encodes as is

_codecs: Any = None
_codecs_checked = False


def _imagecodecs() -> Any:
    """The imagecodecs module, or None (then PNG goes through Pillow); looked up and logged once."""
    global _codecs, _codecs_checked
    if not _codecs_checked:
        try:
            import imagecodecs

            _codecs = imagecodecs if imagecodecs.PNG.available else None
        except ImportError:
            _codecs = None
        if _codecs is None:
            logger.warning("imagecodecs is not installed: PNG is encoded by Pillow, 2-3x slower "
                           "(pip install imagecodecs)")
        _codecs_checked = True
    return _codecs


def png_level(compression: int | None) -> int:
    """OpenAI's `output_compression` (0-100, higher = smaller) as a zlib level 0-9."""
    if compression is None:
        return DEFAULT_PNG_LEVEL
    return max(0, min(9, round(compression / 100 * 9)))


# What each zlib level tries, keeping the smallest result; each set holds the one below it, so more
# `output_compression` never gives a larger file (libpng's per-row filter heuristic alone can lose to Paeth).
_STORED, _FAST, _ADAPTIVE, _FULL = "stored", "rle+paeth", "rle+adaptive", "zlib9+adaptive"
_PNG_TRIES = {0: (_STORED,), 1: (_FAST,), 6: (_FAST, _ADAPTIVE), 9: (_FAST, _ADAPTIVE, _FULL, _STORED)}


def _tries(level: int) -> tuple[str, ...]:
    return _PNG_TRIES[max(tier for tier in _PNG_TRIES if tier <= level)]


def _png_libpng(codecs: Any, pixels: NDArray[np.uint8], level: int) -> bytes:
    import numpy as np

    pixels = np.ascontiguousarray(pixels)
    strategy, filters = codecs.PNG.STRATEGY, codecs.PNG.FILTER
    options = {_STORED: {"level": 0, "filter": filters.NONE},
               _FAST: {"level": 1, "strategy": strategy.RLE, "filter": filters.PAETH},
               _ADAPTIVE: {"level": 1, "strategy": strategy.RLE, "filter": filters.ALL},
               _FULL: {"level": 9, "strategy": strategy.DEFAULT, "filter": filters.ALL}}
    return min((codecs.png_encode(pixels, **options[name]) for name in _tries(level)), key=len)


def _png_pillow(image: Image, level: int) -> bytes:
    """Pillow picks a filter per row itself (like libpng's adaptive choice); only zlib's settings are ours."""
    options = {_STORED: {"compress_level": 0}, _FAST: {"compress_level": 1, "compress_type": Z_RLE},
               _FULL: {"compress_level": 9}}

    def save(name: str) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", **options[name])
        return buffer.getvalue()

    return min((save(name) for name in _tries(level) if name != _ADAPTIVE), key=len)


def _encode_lossy(image: Image, output_format: str, compression: int | None) -> bytes:
    buffer = io.BytesIO()
    quality = 90 if compression is None else max(1, 100 - compression)
    if output_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()


def encode_image(image: Image, output_format: str = "png", compression: int | None = None) -> bytes:
    """Encode a PIL image. `compression` is 0-100 (OpenAI's meaning: higher = smaller file)."""
    if output_format != "png":
        return _encode_lossy(image, output_format, compression)
    codecs = _imagecodecs()
    if codecs is not None and image.mode in _FAST_MODES:
        import numpy as np

        return _png_libpng(codecs, np.asarray(image), png_level(compression))
    return _png_pillow(image, png_level(compression))  # palette, 16-bit and other modes keep Pillow's writer


def encode_pixels(pixels: NDArray[np.uint8], output_format: str = "png", compression: int | None = None) -> bytes:
    """Encode a local model's (height, width, 3) uint8 pixels on the caller's (encoder) thread, not the
    device's. PNG goes straight from the array to libpng, without a PIL image."""
    if output_format == "png":
        codecs = _imagecodecs()
        if codecs is not None:
            return _png_libpng(codecs, pixels, png_level(compression))
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

"""Input images for the edit tests: PNG bytes, noise photos and OpenAI-style masks."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def photo(width: int, height: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def quarter_mask(width: int, height: int) -> bytes:
    """OpenAI's mask: fully transparent (edit) in the top-left quarter, opaque elsewhere."""
    alpha = np.full((height, width), 255, np.uint8)
    alpha[: height // 2, : width // 2] = 0
    return png(np.dstack([np.zeros((height, width, 3), np.uint8), alpha]))

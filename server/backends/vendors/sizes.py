"""Map a requested width x height onto what a vendor can make.

Vendors take either a fixed list of sizes, a list of aspect ratios, or any size within bounds on a grid.
Everything here picks the nearest shape first (by log aspect ratio, so 2:1 and 1:2 are equally far from
1:1) and, among equal shapes, the nearest area.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Size = tuple[int, int]


def _aspect_distance(a: Size, b: Size) -> float:
    return abs(math.log(a[0] / a[1]) - math.log(b[0] / b[1]))


def _area_distance(a: Size, b: Size) -> float:
    return abs(math.log((a[0] * a[1]) / (b[0] * b[1])))


def nearest_size(width: int, height: int, sizes: Iterable[Size]) -> Size:
    """The listed size closest in shape, then in area, to `width` x `height`."""
    wanted = (width, height)
    return min(sizes, key=lambda s: (round(_aspect_distance(wanted, s), 6), _area_distance(wanted, s)))


def parse_ratio(ratio: str) -> Size:
    w, h = ratio.split(":")
    return int(w), int(h)


def nearest_aspect_ratio(width: int, height: int, ratios: Sequence[str]) -> str:
    """The `"W:H"` ratio from `ratios` closest in shape to `width` x `height`."""
    return min(ratios, key=lambda r: _aspect_distance((width, height), parse_ratio(r)))


def fit_to_grid(width: int, height: int, *, lo: int, hi: int, multiple: int) -> Size:
    """Scale into [lo, hi] on both sides, keeping the shape, then snap each side to `multiple`."""
    scale = min(1.0, hi / max(width, height))
    if min(width, height) * scale < lo:
        scale = lo / min(width, height)

    def snap(side: int) -> int:
        snapped = int(round(side * scale / multiple)) * multiple
        return max(lo, min(hi, snapped))

    return snap(width), snap(height)


# --- the vendors' tables ----

DALL_E_3_SIZES: tuple[Size, ...] = ((1024, 1024), (1792, 1024), (1024, 1792))
DALL_E_2_SIZES: tuple[Size, ...] = ((256, 256), (512, 512), (1024, 1024))
GPT_IMAGE_SIZES: tuple[Size, ...] = ((1024, 1024), (1536, 1024), (1024, 1536))

# Imagen on the Gemini API: five ratios, each a fixed size (Imagen 3 model card).
IMAGEN_RATIOS: dict[str, Size] = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}
# Gemini image models (`generateContent` with `imageConfig.aspectRatio`).
GEMINI_IMAGE_RATIOS: tuple[str, ...] = (
    "1:1",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "16:9",
    "21:9",
)

# FLUX1.1 [pro]: width and height in [256, 1440], multiples of 32.
BFL_MIN, BFL_MAX, BFL_MULTIPLE = 256, 1440, 32

# Ideogram 2.0 (`/generate`, model V_2): the `resolution` enum, RESOLUTION_<W>_<H>.
_IDEOGRAM_TALL = (
    (512, 1536), (576, 1408), (576, 1472), (576, 1536), (640, 1024), (640, 1344), (640, 1408), (640, 1472),
    (640, 1536), (704, 1152), (704, 1216), (704, 1280), (704, 1344), (704, 1408), (704, 1472), (720, 1280),
    (736, 1312), (768, 1024), (768, 1088), (768, 1152), (768, 1216), (768, 1232), (768, 1280), (768, 1344),
    (832, 960), (832, 1024), (832, 1088), (832, 1152), (832, 1216), (832, 1248), (864, 1152), (896, 960),
    (896, 1024), (896, 1088), (896, 1120), (896, 1152), (960, 1024), (960, 1088),
)  # fmt: skip
IDEOGRAM_RESOLUTIONS: tuple[Size, ...] = (
    *_IDEOGRAM_TALL,
    (1024, 1024),
    *((h, w) for w, h in _IDEOGRAM_TALL),
    (1280, 800),
)


def ideogram_resolution(size: Size) -> str:
    return f"RESOLUTION_{size[0]}_{size[1]}"

"""PNG through libpng (imagecodecs) or, without it, Pillow: lossless, `output_compression` honoured both ways;
JPEG and WebP exactly as Pillow writes them."""

from __future__ import annotations

import io
import logging
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines.simulated import synthesize_pixels
from server.media import encoding
from server.media.encoding import encode_image, encode_pixels, png_level, transcode

SIZES = [(1, 1), (7, 5), (33, 17), (255, 3), (256, 256), (1023, 64)]  # (width, height), odd widths included
COMPRESSIONS = [None, 0, 1, 50, 60, 89, 100]


def decode(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.format or "", np.asarray(image)


@pytest.fixture(params=["imagecodecs", "pillow"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the imagecodecs encoder and again with it made unimportable (the Pillow fallback)."""
    monkeypatch.setattr(encoding, "_codecs", None)
    monkeypatch.setattr(encoding, "_codecs_checked", False)
    if request.param == "pillow":
        monkeypatch.setitem(sys.modules, "imagecodecs", None)  # `import imagecodecs` now raises ImportError
    else:
        pytest.importorskip("imagecodecs")
    return request.param


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_png_is_lossless(backend: str, width: int, height: int, compression: int | None) -> None:
    pixels = synthesize_pixels(width, height, seed=width * 31 + height)
    fmt, decoded = decode(encode_pixels(pixels, "png", compression))
    assert fmt == "PNG"
    assert decoded.shape == (height, width, 3)
    assert np.array_equal(decoded, pixels)


def test_png_takes_a_non_contiguous_array(backend: str) -> None:
    pixels = synthesize_pixels(64, 48, seed=3)[:, ::-1]  # a view with negative strides
    assert np.array_equal(decode(encode_pixels(pixels))[1], pixels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16"])
def test_png_from_a_pil_image_keeps_its_mode_and_pixels(backend: str, mode: str) -> None:
    rgb = Image.fromarray(synthesize_pixels(37, 21, seed=5), "RGB")
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(rgb.convert("L")).astype("<u2") * 257)
    with Image.open(io.BytesIO(encode_image(image, "png", 100))) as decoded:
        decoded.load()
        if mode == "P":
            decoded = decoded.convert("RGB")
            image = image.convert("RGB")
        assert np.array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize("kind", ["simulated", "smooth", "noise"])
def test_more_compression_is_never_larger(backend: str, kind: str) -> None:
    pixels = synthesize_pixels(128, 96, seed=11)
    if kind == "smooth":
        pixels = np.repeat(np.repeat(pixels[::8, ::8] & 0xF0, 8, axis=0), 8, axis=1)
    elif kind == "noise":
        pixels = np.random.default_rng(0).integers(0, 256, pixels.shape, dtype=np.uint8)
    size = {c: len(encode_pixels(pixels, "png", c)) for c in (0, 50, 80, 100)}
    assert size[100] <= size[80] <= size[50]
    assert size[100] <= size[0]
    assert len(encode_pixels(pixels, "png")) == size[50]  # the default is the fast tier
    if kind != "noise":
        assert size[50] < size[0] * 0.8  # real compression, not stored blocks


def test_png_levels_map_openai_compression() -> None:
    assert png_level(None) == encoding.DEFAULT_PNG_LEVEL
    assert [png_level(c) for c in (0, 5, 6, 50, 100, 150, -3)] == [0, 0, 1, 4, 9, 9, 0]


def test_fallback_is_logged_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(encoding, "_codecs", None)
    monkeypatch.setattr(encoding, "_codecs_checked", False)
    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    pixels = synthesize_pixels(16, 16, seed=1)
    with caplog.at_level(logging.WARNING, logger=encoding.__name__):
        for _ in range(3):
            assert np.array_equal(decode(encode_pixels(pixels))[1], pixels)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "imagecodecs" in caplog.records[0].getMessage()


@pytest.mark.parametrize("compression", [None, 0, 35, 100])
@pytest.mark.parametrize(("output_format", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_jpeg_and_webp_are_pillows(compression: int | None, output_format: str, pil_format: str) -> None:
    pixels = synthesize_pixels(40, 24, seed=2)
    buffer = io.BytesIO()
    quality = 90 if compression is None else max(1, 100 - compression)
    Image.fromarray(pixels, "RGB").save(buffer, format=pil_format, quality=quality)
    encoded = encode_pixels(pixels, output_format, compression)
    assert encoded == buffer.getvalue()
    assert decode(encoded)[0] == pil_format


def test_transcode_passes_through_or_reencodes() -> None:
    pixels = synthesize_pixels(20, 10, seed=4)
    png = encode_pixels(pixels)
    assert transcode(png, "png") is png
    assert np.array_equal(decode(transcode(png, "png", 100))[1], pixels)
    fmt, decoded = decode(transcode(png, "webp"))
    assert fmt == "WEBP"
    assert decoded.shape == (10, 20, 3)

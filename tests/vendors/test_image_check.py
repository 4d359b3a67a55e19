"""The vendor image check: structure and checksums instead of a full decode, with the old decode's verdicts."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image

from server.api.errors import status_of
from server.backends.vendors.connection import Vendor, inspect_image
from server.backends.vendors.image_check import BadImage, ImageInfo, check_image, decode_image
from server.errors import UpstreamError
from server.settings import Settings


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Incompressible pixels, so the files are long (several IDAT chunks, long scans)."""
    pixel_bytes = len(Image.new(mode, (1, 1)).tobytes())
    data = random.Random(seed).randbytes(width * height * pixel_bytes)
    return Image.frombytes(mode, (width, height), data)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def exif_with_thumbnail() -> bytes:
    """A JPEG whose APP1 segment holds another whole JPEG (SOI ... EOI), as camera files do."""
    exif = Image.Exif()
    exif[0x010E] = "a thumbnail follows"
    thumbnail = encode(noise(16, 16), "JPEG")
    return encode(noise(64, 48), "JPEG", exif=exif.tobytes() + thumbnail)


def animated_webp() -> bytes:
    frames = [noise(40, 30, seed=s) for s in range(3)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)


VALID = {
    "png-rgb": (lambda: encode(noise(64, 48), "PNG"), ("image/png", 64, 48)),
    "png-many-idat": (lambda: encode(noise(300, 300), "PNG"), ("image/png", 300, 300)),
    "png-rgba": (lambda: encode(noise(33, 17, "RGBA"), "PNG"), ("image/png", 33, 17)),
    "png-gray": (lambda: encode(noise(20, 10, "L"), "PNG"), ("image/png", 20, 10)),
    "png-palette": (lambda: encode(noise(20, 10).convert("P"), "PNG"), ("image/png", 20, 10)),
    "png-16bit": (lambda: encode(noise(20, 10, "I;16"), "PNG"), ("image/png", 20, 10)),
    "png-1bit": (lambda: encode(noise(21, 11).convert("1"), "PNG"), ("image/png", 21, 11)),
    "png-text-after-idat": (
        lambda: encode(noise(20, 10), "PNG") + b"trailing bytes after IEND",
        ("image/png", 20, 10),
    ),
    "jpeg-baseline": (lambda: encode(noise(64, 48), "JPEG"), ("image/jpeg", 64, 48)),
    "jpeg-progressive": (lambda: encode(noise(64, 48), "JPEG", progressive=True), ("image/jpeg", 64, 48)),
    "jpeg-optimized": (lambda: encode(noise(64, 48), "JPEG", optimize=True), ("image/jpeg", 64, 48)),
    "jpeg-gray": (lambda: encode(noise(30, 20, "L"), "JPEG"), ("image/jpeg", 30, 20)),
    "jpeg-cmyk": (lambda: encode(noise(30, 20, "CMYK"), "JPEG"), ("image/jpeg", 30, 20)),
    "jpeg-restart-markers": (lambda: encode(noise(64, 48), "JPEG", restart_marker_blocks=1), ("image/jpeg", 64, 48)),
    "jpeg-exif-thumbnail": (exif_with_thumbnail, ("image/jpeg", 64, 48)),
    "webp-lossy": (lambda: encode(noise(50, 30), "WEBP"), ("image/webp", 50, 30)),
    "webp-lossless": (lambda: encode(noise(50, 30), "WEBP", lossless=True), ("image/webp", 50, 30)),
    "webp-alpha": (lambda: encode(noise(50, 30, "RGBA"), "WEBP"), ("image/webp", 50, 30)),
    "webp-animated": (animated_webp, ("image/webp", 40, 30)),
    # Formats the structural check leaves to the full decode, accepted as before.
    "gif": (lambda: encode(noise(20, 10).convert("P"), "GIF"), ("image/gif", 20, 10)),
    "bmp": (lambda: encode(noise(20, 10), "BMP"), ("image/bmp", 20, 10)),
}


@pytest.mark.parametrize("name", list(VALID))
def test_whole_images_report_format_and_size_like_the_full_decode(name):
    make, (mime, width, height) = VALID[name]
    data = make()
    assert check_image(data) == ImageInfo(mime, width, height) == decode_image(data)


@pytest.mark.parametrize("name", [n for n in VALID if n.split("-")[0] in ("png", "jpeg", "webp")])
def test_every_truncation_is_refused_like_the_full_decode(name):
    """Cut every few bytes (headers, mid-data, mid-scan) and in the last 20: all refused."""
    data = VALID[name][0]()
    end = len(data) - len(b"trailing bytes after IEND") if name == "png-text-after-idat" else len(data)
    cuts = sorted({*range(0, end, max(1, end // 400)), *range(end - 20, end)})
    for cut in cuts:
        with pytest.raises(BadImage):
            check_image(data[:cut])
    # The old check agrees (a sample: it is the slow one), except that it accepted a PNG cut in its last
    # 20 bytes: the zlib stream's Adler-32, the last IDAT's CRC and IEND are never read by Pillow's decoder.
    last = end - 20 if name.startswith("png") else end
    for cut in [c for c in cuts if c < last][:: max(1, len(cuts) // 40)]:
        with pytest.raises(BadImage):
            decode_image(data[:cut])


def test_a_png_cut_before_its_checksums_is_refused_where_the_full_decode_accepted_it():
    data = encode(noise(64, 48), "PNG")
    cut = data[:-20]  # without the Adler-32 of the pixel data, the last CRC and IEND
    assert decode_image(cut) == ImageInfo("image/png", 64, 48)
    with pytest.raises(BadImage):
        check_image(cut)


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset of the chunk, offset past its CRC) for each chunk."""
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.append((kind, pos, pos + 12 + length))
        pos += 12 + length
    return chunks


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_any_flipped_byte_in_a_png_is_refused():
    """Every byte of a PNG is in the signature, a length, a type, a payload or a CRC: each flip is caught."""
    data = encode(noise(12, 9), "PNG")
    for offset in range(len(data)):
        broken = bytearray(data)
        broken[offset] ^= 0x10
        with pytest.raises(BadImage):
            check_image(bytes(broken))


def test_a_flipped_byte_in_idat_fails_its_crc():
    data = encode(noise(300, 300), "PNG")
    kind, start, end = next(c for c in png_chunks(data) if c[0] == b"IDAT")
    broken = bytearray(data)
    broken[(start + end) // 2] ^= 0x01
    with pytest.raises(BadImage, match="CRC"):
        check_image(bytes(broken))


def test_png_structure_rules():
    data = encode(noise(300, 300), "PNG")
    chunks = png_chunks(data)
    iend = chunks[-1]
    idats = [c for c in chunks if c[0] == b"IDAT"]
    assert len(idats) > 1 and iend[0] == b"IEND"
    without_iend = data[: iend[1]]
    with pytest.raises(BadImage, match="before IEND"):
        check_image(without_iend)
    no_idat = b"".join([data[:8], *(data[s:e] for k, s, e in chunks if k != b"IDAT")])
    with pytest.raises(BadImage, match="no image data"):
        check_image(no_idat)
    text = png_chunk(b"tEXt", b"Comment\x00split")
    split = data[: idats[0][2]] + text + data[idats[0][2] :]
    with pytest.raises(BadImage, match="not consecutive"):
        check_image(split)
    ihdr_second = data[:8] + text + data[8:]
    with pytest.raises(BadImage, match="IHDR"):
        check_image(ihdr_second)
    # A chunk with a correct CRC but an impossible bit depth for its colour type (RGB at 4 bits).
    ihdr = bytearray(data[16:29])
    ihdr[8] = 4
    bad_depth = data[:8] + png_chunk(b"IHDR", bytes(ihdr)) + data[33:]
    with pytest.raises(BadImage, match="invalid fields"):
        check_image(bad_depth)


def test_jpeg_without_eoi_or_cut_mid_scan_is_refused():
    data = encode(noise(64, 48), "JPEG")
    assert data.endswith(b"\xff\xd9")
    sos = data.index(b"\xff\xda")
    for broken in (data[:-2], data[:-1], data[: (sos + len(data)) // 2], data[: sos + 10]):
        with pytest.raises(BadImage):
            check_image(broken)
        with pytest.raises(BadImage):
            decode_image(broken)


def test_progressive_jpeg_cut_between_scans_is_refused():
    data = encode(noise(64, 48), "JPEG", progressive=True)
    scans = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    assert len(scans) > 2
    for cut in scans[1:]:
        with pytest.raises(BadImage):
            check_image(data[:cut])


def test_webp_riff_size_must_fit_the_data():
    data = encode(noise(50, 30), "WEBP")
    too_long = data[:4] + struct.pack("<I", len(data)) + data[8:]  # claims 8 bytes more than there are
    with pytest.raises(BadImage, match="RIFF size"):
        check_image(too_long)
    assert check_image(data + b"\x00" * 6) == ImageInfo("image/webp", 50, 30)  # trailing bytes, as libwebp


def test_jpeg_variants_it_does_not_parse_fall_back_to_the_full_decode():
    """Junk between segments: libjpeg skips it with a warning, so the old check accepted it; so does this."""
    data = encode(noise(32, 16), "JPEG")
    app0_end = 4 + int.from_bytes(data[4:6], "big")
    junk = data[:app0_end] + b"\x00\x00" + data[app0_end:]
    assert check_image(junk) == decode_image(junk) == ImageInfo("image/jpeg", 32, 16)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image",
        bytes(4096),
        random.Random(1).randbytes(4096),
        b"\x89PNX" + encode(noise(12, 9), "PNG")[4:],  # wrong signature
        b"\x89PNG\r\n\x1a\n",  # a signature and nothing else
        b"\xff\xd8\xff",
        b"RIFF\x04\x00\x00\x00WEBP",
        b"GIF89a" + bytes(20),  # an unparsed format's header, then nothing: the full decode refuses it
    ],
    ids=["empty", "text", "zeros", "random", "wrong-signature", "png-signature-only", "jpeg-soi-only",
         "webp-empty-riff", "gif-header-only"],
)
def test_non_images_are_refused(data):
    with pytest.raises(BadImage):
        check_image(data)


def test_decompression_bombs_are_refused_as_pillow_refused_them():
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"x") + png_chunk(b"IEND", b"")
    with pytest.raises(BadImage, match="decompression-bomb"):
        check_image(bomb)


async def test_inspect_image_maps_a_bad_image_to_the_vendors_502():
    settings = Settings(providers={"openai": {"api_key": "k"}})
    vendor = Vendor("openai", settings.providers.openai)
    try:
        data = encode(noise(300, 300), "PNG")
        assert inspect_image(data, vendor) == ImageInfo("image/png", 300, 300)
        for broken in (data[:100], data[: len(data) // 2], data[:-12], b""):
            with pytest.raises(UpstreamError) as caught:
                inspect_image(broken, vendor)
            assert status_of(caught.value) == 502 and caught.value.code == "upstream_bad_response"
            assert caught.value.message == "OpenAI sent a malformed answer to the image."
    finally:
        await vendor.aclose()

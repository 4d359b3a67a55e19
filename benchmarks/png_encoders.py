"""PNG encoders side by side: encode time and file size on the pixels the server actually encodes.

Issue 11 found that a 1024x1024 PNG at zlib level 6 (Pillow) is most of what the server adds to a request.
This measures, in one run and on one machine, every encoder a maintained library offers us:

- Pillow at compress_level 0-9 (`optimize=False`): today's encoder (level 6 is the reference size), and
  Pillow with zlib's RLE strategy (`compress_type=3`);
- imagecodecs' libpng (`png_encode`) at levels 1-9, with libpng's default strategy and adaptive filters,
  with the fast settings its docs give (zlib strategy RLE, the SUB filter only), and RLE with other filters;
- imagecodecs' libspng (`spng_encode`) at levels 1, 6, 9;
- fpng (`fpng.from_ndarray`), a special-purpose fast encoder;
- pymtpng (multithreaded) when it imports (1.1.0 needs Python >= 3.12 and has no aarch64 wheel).

Content, all uint8 (H, W, 3) like a local model's output:
- `simulated`: `pipelines.simulated.synthesize_pixels` (gradient + 4 bits of noise, compresses like a photo);
- `textured`: multi-octave value noise plus 1 bit of noise (a smooth, photo-like image with detail);
- `smooth`: the simulated image blurred (radius 3): large soft areas, the easy case;
- `noise`: uniform random bytes, the worst case (nothing compresses).

Every encoding is decoded back (Pillow) and compared with the input: only lossless encoders are listed.
Writes benchmarks/results/png-encoders.json and .md with the machine and date.
Usage: python benchmarks/png_encoders.py [--repeat 7] [--sizes 1024,256]
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from pipelines.simulated import synthesize_pixels  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = "pillow L6"  # today's encoder and level: sizes are reported relative to it
CHOSEN = "libpng L1 rle+paeth"  # server/media/encoding.py's default PNG
FALLBACK = "pillow L1 rle"  # its fallback when imagecodecs is missing
Encoder = Callable[[np.ndarray], bytes]


def content(kind: str, size: int, seed: int = 7) -> np.ndarray:
    if kind == "simulated":
        return synthesize_pixels(size, size, seed)
    if kind == "smooth":
        from PIL import ImageFilter

        image = Image.fromarray(synthesize_pixels(size, size, seed)).filter(ImageFilter.GaussianBlur(3))
        return np.asarray(image).copy()
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if kind == "textured":
        total = np.zeros((size, size, 3), np.float32)
        for octave, weight in ((4, 96.0), (16, 48.0), (64, 24.0), (256, 12.0)):
            cells = min(octave, size)
            coarse = rng.random((cells, cells, 3), dtype=np.float32)
            layers = [np.asarray(Image.fromarray(coarse[..., c], "F").resize((size, size), Image.BICUBIC))
                      for c in range(3)]
            total += weight * np.stack(layers, axis=-1)
        total += rng.integers(0, 2, total.shape)  # one bit of sensor noise
        return total.clip(0, 255).astype(np.uint8)
    raise ValueError(kind)


def pillow(level: int, strategy: int = -1) -> Encoder:
    def encode(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=level, compress_type=strategy,
                                            optimize=False)
        return buffer.getvalue()

    return encode


def encoders() -> tuple[dict[str, Encoder], dict[str, str]]:
    """The encoders that import here, and why the others are missing."""
    found: dict[str, Encoder] = {f"pillow L{level}": pillow(level) for level in range(10)}
    found["pillow L1 rle"] = pillow(1, strategy=3)  # zlib's Z_RLE through Pillow's `compress_type`
    missing: dict[str, str] = {}
    try:
        import imagecodecs as ic

        for level in range(1, 10):
            found[f"libpng L{level}"] = lambda p, level=level: ic.png_encode(p, level=level)
        for level in (1, 9):
            found[f"libpng L{level} rle+sub"] = lambda p, level=level: ic.png_encode(
                p, level=level, strategy=ic.PNG.STRATEGY.RLE, filter=ic.PNG.FILTER.SUB)
        found["libpng L1 sub"] = lambda p: ic.png_encode(p, level=1, filter=ic.PNG.FILTER.SUB)
        rle = ic.PNG.STRATEGY.RLE
        for filter_name in ("up", "avg", "paeth", "all"):
            code = getattr(ic.PNG.FILTER, filter_name.upper())
            for level in (1, 9) if filter_name in ("paeth", "all") else (1,):
                found[f"libpng L{level} rle+{filter_name}"] = lambda p, level=level, code=code: ic.png_encode(
                    p, level=level, strategy=rle, filter=code)
        for level in (3, 6, 9):
            found[f"libpng L{level} paeth"] = lambda p, level=level: ic.png_encode(
                p, level=level, filter=ic.PNG.FILTER.PAETH)
        for level in (1, 6, 9):
            found[f"libspng L{level}"] = lambda p, level=level: ic.spng_encode(p, level=level)
    except ImportError as error:
        missing["imagecodecs"] = str(error)
    for name, call in (("fpng", "from_ndarray"), ("pymtpng", "encode_png")):
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            missing[name] = f"{error} (pymtpng 1.1.0: Python >= 3.12, manylinux_2_34 x86_64 wheel only)" \
                if name == "pymtpng" else str(error)
            continue
        if name == "pymtpng":
            found[name] = lambda p, m=module: _pymtpng(m, p)
        else:
            found[name] = getattr(module, call)
    return found, missing


def _pymtpng(module: Any, pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    module.encode_png(pixels, buffer)
    return buffer.getvalue()


def check(encode: Encoder, pixels: np.ndarray) -> int:
    """Encode once (the warm-up), decode with Pillow, insist on the same pixels; the size in bytes."""
    data = encode(pixels)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if decoded.shape != pixels.shape or not np.array_equal(decoded, pixels):
        raise AssertionError("not lossless")
    return len(data)


def measure(found: dict[str, Encoder], pixels: np.ndarray, repeat: int) -> dict[str, dict[str, Any]]:
    """Round-robin: each round times every encoder once, so a busy neighbour slows all of them alike."""
    sizes = {name: check(encode, pixels) for name, encode in found.items()}
    times: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(repeat):
        for name, encode in found.items():
            start = time.perf_counter()
            encode(pixels)
            times[name].append(time.perf_counter() - start)
    return {name: {"ms": statistics.median(t) * 1000, "ms_min": min(t) * 1000, "bytes": sizes[name]}
            for name, t in times.items()}


def machine() -> dict[str, Any]:
    cpu = cpu_name()
    versions = {}
    for name in ("PIL", "imagecodecs", "fpng", "pymtpng", "numpy"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            versions[name] = None
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "platform": platform.platform(), "cpu": cpu,
            "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "versions": versions, "load_average": [round(x, 2) for x in os.getloadavg()]}


def run(sizes: list[int], kinds: list[str], repeat: int) -> dict[str, Any]:
    found, missing = encoders()
    rows: list[dict[str, Any]] = []
    for size in sizes:
        for kind in kinds:
            pixels = content(kind, size)
            results = measure(found, pixels, repeat if size > 512 else repeat * 3)
            for name, result in results.items():
                rows.append({"size": size, "content": kind, "encoder": name, **result})
                print(f"{size:5d} {kind:10s} {name:24s} {result['ms']:8.1f} ms {result['bytes']:>10,d} B", flush=True)
    for row in rows:
        reference = next(r for r in rows if r["size"] == row["size"] and r["content"] == row["content"]
                         and r["encoder"] == REFERENCE)
        row["size_vs_pillow6"] = row["bytes"] / reference["bytes"]
        row["speedup_vs_pillow6"] = reference["ms"] / row["ms"]
    return {"machine": machine(), "repeat": repeat, "reference": REFERENCE, "missing": missing, "rows": rows}


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Today's encoder against what server/media/encoding.py uses (and its fallback without imagecodecs)."""
    lines = ["## Chosen: libpng (imagecodecs), zlib RLE strategy, Paeth filter", "",
             f"The server's default PNG is `{CHOSEN}`; without imagecodecs it falls back to `{FALLBACK}`.", "",
             "| size | content | " + " | ".join(f"{name} ms" for name in (REFERENCE, CHOSEN, FALLBACK))
             + f" | {CHOSEN} size / {REFERENCE} size | {FALLBACK} size / {REFERENCE} size |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for size in sorted({r["size"] for r in rows}, reverse=True):
        for kind in dict.fromkeys(r["content"] for r in rows):
            pick = {r["encoder"]: r for r in rows if r["size"] == size and r["content"] == kind}
            if not all(name in pick for name in (REFERENCE, CHOSEN, FALLBACK)):
                continue
            times = " | ".join(f"{pick[name]['ms']:.1f}" for name in (REFERENCE, CHOSEN, FALLBACK))
            lines.append(f"| {size} | {kind} | {times} | {pick[CHOSEN]['size_vs_pillow6']:.3f} "
                         f"| {pick[FALLBACK]['size_vs_pillow6']:.3f} |")
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["# PNG encoders: time and size", "",
             f"Date: {m['date']}. Machine: {m['cpu']}, {m['platform']}, nproc {m['nproc']} "
             f"({m['usable_cpus']} usable, load average {m.get('load_average', '?')} at the end: other work shares "
             f"the CPUs, so the encoders are timed round-robin), Python {m['python']}. Versions: "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
             f"Command: `python benchmarks/png_encoders.py`. Median of {report['repeat']} encodes at 1024x1024 "
             f"(x3 at 256x256), one call at a time, after one warm-up; every output decoded back and compared.",
             "Size and speed are relative to today's encoder, Pillow at compress_level 6 (`pillow L6`).", ""]
    if report["missing"]:
        lines += ["Not measured: " + "; ".join(f"{k}: {v}" for k, v in report["missing"].items()) + ".", ""]
    rows = report["rows"]
    lines += summary(rows)
    for size in sorted({r["size"] for r in rows}, reverse=True):
        kinds = list(dict.fromkeys(r["content"] for r in rows if r["size"] == size))
        lines += [f"## {size}x{size}", "",
                  "| encoder | " + " | ".join(f"{k} ms | {k} size" for k in kinds) + " |",
                  "|---|" + "---:|---:|" * len(kinds)]
        for name in dict.fromkeys(r["encoder"] for r in rows):
            cells = []
            for kind in kinds:
                row = next(r for r in rows if r["size"] == size and r["content"] == kind and r["encoder"] == name)
                cells += [f"{row['ms']:.1f}", f"{row['bytes'] / 1000:,.0f} kB ({row['size_vs_pillow6']:.3f})"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", default="1024,256")
    parser.add_argument("--contents", default="simulated,textured,smooth,noise")
    parser.add_argument("--out", default="png-encoders")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    if args.markdown_only:
        report = json.loads((RESULTS / f"{args.out}.json").read_text())
        (RESULTS / f"{args.out}.md").write_text(markdown(report) + "\n")
        return
    report = run([int(s) for s in args.sizes.split(",")], args.contents.split(","), args.repeat)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (RESULTS / f"{args.out}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

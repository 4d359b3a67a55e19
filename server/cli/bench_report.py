"""What `imageserve bench` records and reports: the options of a run, one record per request, the summary
per target (p50, p95, images/s, cost per image) and the Markdown table (the chart: bench_chart.py).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PROMPT = "A lighthouse on a cliff at dawn, waves below, photorealistic"


@dataclass(frozen=True)
class BenchOptions:
    size: str = "1024x1024"
    n: int = 1
    concurrency: int = 4
    requests: int = 16
    warmup: int = 0
    response_format: str | None = "b64_json"  # None: not sent, the endpoint's default answers
    prompt: str = DEFAULT_PROMPT
    quality: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0
    progress: bool = True


@dataclass
class RequestRecord:
    target: str
    index: int
    started_s: float  # since the target's run began
    latency_s: float
    ok: bool
    images: int = 0
    cost_usd: float | None = None
    cost_source: str | None = None  # "perf", "flag", "table" or None when unknown
    error: str | None = None
    perf: dict[str, Any] = field(default_factory=dict)
    returned: str | None = None  # what the answer carried: "b64_json", "url" or "mixed"
    image_bytes: int | None = None  # decoded image bytes, when the answer carried them (b64_json)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(records: list[RequestRecord], wall_s: float) -> dict[str, Any]:
    ok = [record for record in records if record.ok]
    latencies = [record.latency_s for record in ok]
    images = sum(record.images for record in ok)
    costs = [record.cost_usd for record in ok if record.cost_usd is not None]
    known_cost = bool(ok) and len(costs) == len(ok)
    total_cost = sum(costs) if known_cost else None
    with_bytes = [record for record in ok if record.image_bytes is not None and record.images]
    byte_images = sum(record.images for record in with_bytes)
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "images": images,
        "wall_s": round(wall_s, 3),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_mean_s": statistics.fmean(latencies) if latencies else None,
        "images_per_s": images / wall_s if wall_s > 0 else None,
        "cost_usd_total": total_cost,
        "cost_usd_per_image": total_cost / images if total_cost is not None and images else None,
        "cost_sources": sorted({record.cost_source for record in ok if record.cost_source}),
        "returned": sorted({record.returned for record in ok if record.returned}),
        "image_bytes_per_image": (sum(record.image_bytes or 0 for record in with_bytes) / byte_images
                                  if byte_images else None),
        "first_error": next((record.error for record in records if not record.ok), None),
    }


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def markdown_table(results: list[dict[str, Any]], options: BenchOptions) -> str:
    lines = [
        f"# imageserve bench: {options.size}, n={options.n}, {options.response_format or 'no response_format'}, "
        f"concurrency {options.concurrency}, {options.requests} requests per target",
        "",
        "| target | ok/requests | p50 latency (s) | p95 latency (s) | images/s | cost per image (USD) |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        s = result["summary"]
        cost = _fmt(s["cost_usd_per_image"], "{:.4f}")
        if s["cost_sources"] and s["cost_sources"] != ["perf"]:
            cost += f" ({'/'.join(s['cost_sources'])})"
        lines.append(f"| {result['label']} | {s['ok']}/{s['requests']} | {_fmt(s['latency_p50_s'], '{:.2f}')} | "
                     f"{_fmt(s['latency_p95_s'], '{:.2f}')} | {_fmt(s['images_per_s'], '{:.3f}')} | {cost} |")
    errors = [(result["label"], result["summary"]["first_error"]) for result in results
              if result["summary"]["first_error"]]
    if errors:
        lines += ["", "First error per target:", ""] + [f"- {label}: {error}" for label, error in errors]
    return "\n".join(lines) + "\n"


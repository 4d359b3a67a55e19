"""The PNG chart of `imageserve bench` (matplotlib, the `bench` extra): latency per request, images/s and cost
per image per target, under a title that says what was measured and when.

The chart never leaves the reader guessing: costs that are all $0 or unreported leave their panel out and say
so, failed requests are drawn as markers (time to error) and counted ("k of N requests failed"), and a run in
which every request failed shows those markers and the first error (redacted), not an empty chart.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.cli.bench_report import BenchOptions, RequestRecord
from server.redaction import redact

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CHART_SKIPPED = ("chart skipped (no bench.png): matplotlib is not installed; "
                 "pip install 'imageserve[bench]' adds it")

PANEL_WIDTH_IN = 5.0
PLOT_HEIGHT_IN = 4.2
TITLE_LINE_IN = 0.24
NOTE_LINE_IN = 0.21
ERROR_CHARS = 200  # of the first error, in the note
FAILED_STYLE = {"marker": "x", "linestyle": "none", "color": "tab:red", "markersize": 7}


def chart_title(results: list[dict[str, Any]], options: BenchOptions, created: datetime, width: int = 110) -> str:
    """What was measured: the targets, size, n, concurrency, requests and the date (UTC)."""
    targets = textwrap.fill("imageserve bench: " + ", ".join(result["label"] for result in results), width,
                            break_long_words=False, break_on_hyphens=False)
    total = sum(result["summary"]["requests"] for result in results)
    return (f"{targets}\n{options.size}, n={options.n} per request, concurrency {options.concurrency}, "
            f"{options.requests} requests per target ({total} in all), "
            f"{created.astimezone(UTC):%Y-%m-%d %H:%M} UTC")


def _first_error(records: list[RequestRecord], secrets: Iterable[str]) -> str:
    error = next((record.error for record in records if not record.ok and record.error), None) or "no error text"
    error = " ".join(redact(error, secrets).split())
    return error if len(error) <= ERROR_CHARS else error[:ERROR_CHARS - 1] + "…"


def chart_notes(results: list[dict[str, Any]], records: list[RequestRecord],
                secrets: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(text, kind) lines under the title: failures ("failed") and why there is no cost panel ("cost")."""
    secrets = tuple(secrets)
    failed = [record for record in records if not record.ok]
    if not records:
        return [("no requests were recorded", "failed")]
    if len(failed) == len(records):
        return [(f"all {len(records)} requests failed: {_first_error(records, secrets)}", "failed")]
    notes: list[tuple[str, str]] = []
    if failed:
        notes.append((f"{len(failed)} of {len(records)} requests failed (red x: time to error); first error: "
                      f"{_first_error(records, secrets)}", "failed"))
    costs = {result["label"]: result["summary"]["cost_usd_per_image"] for result in results}
    if not any(costs.values()):  # every cost is 0 or unknown: no cost panel, and why
        unknown = [label for label, cost in costs.items() if cost is None]
        if len(unknown) == len(costs):
            notes.append(("no cost reported (no perf.cost_usd, --price or price table entry): no cost panel",
                          "cost"))
        else:
            note = "all costs are $0 (local models): no cost panel"
            notes.append((note + (f"; no cost reported for {', '.join(unknown)}" if unknown else ""), "cost"))
    return notes


def _ticks(axis: Axes, labels: list[str]) -> None:
    axis.set_xticks(range(1, len(labels) + 1), labels, rotation=20, ha="right", fontsize=8)
    axis.set_xlim(0.4, len(labels) + 0.6)


def _failed_markers(axis: Axes, labels: list[str], records: list[RequestRecord]) -> bool:
    """A red x per failed request at its target, at its time to error; whether there were any."""
    drawn = False
    for position, label in enumerate(labels, start=1):
        times = [record.latency_s for record in records if record.target == label and not record.ok]
        if times:
            axis.plot([position] * len(times), times, label=None if drawn else "failed (time to error)",
                      **FAILED_STYLE)
            drawn = True
    return drawn


def _latency_panel(axis: Axes, labels: list[str], records: list[RequestRecord]) -> None:
    samples = {position: [r.latency_s for r in records if r.target == label and r.ok]
               for position, label in enumerate(labels, start=1)}
    drawn = {position: values for position, values in samples.items() if values}
    if drawn:
        axis.boxplot(list(drawn.values()), positions=list(drawn), showfliers=True)
    if _failed_markers(axis, labels, records):
        axis.legend(loc="upper right", fontsize=8)
    _ticks(axis, labels)
    axis.set_ylabel("latency (s)")
    axis.set_title("latency per request")


def _bar_panel(axis: Axes, labels: list[str], values: list[float | None], color: str, title: str,
               unit: str) -> None:
    positions = range(1, len(labels) + 1)
    axis.bar(positions, [value or 0.0 for value in values], color=color)
    for position, value in zip(positions, values, strict=True):
        if value is None:
            axis.text(position, 0, "n/a", ha="center", va="bottom", fontsize=8, color="dimgray")
    _ticks(axis, labels)
    axis.set_ylabel(unit)
    axis.set_title(title)


def build_figure(results: list[dict[str, Any]], records: list[RequestRecord], options: BenchOptions,
                 created: datetime, secrets: Iterable[str] = ()) -> Figure:
    """The chart as a matplotlib Figure (no pyplot, so no global state); write_chart saves it."""
    from matplotlib.figure import Figure

    labels = [result["label"] for result in results]
    notes = chart_notes(results, records, secrets)
    all_failed = not any(record.ok for record in records)
    panels = ["failed"] if all_failed else ["latency", "rate"]
    if not all_failed and any(result["summary"]["cost_usd_per_image"] for result in results):
        panels.append("cost")
    width_in = max(7.0, PANEL_WIDTH_IN * len(panels))
    chars = int(width_in * 12)  # about 12 characters an inch at 10 pt
    title = chart_title(results, options, created, width=chars)
    wrapped = [(textwrap.fill(text, chars, break_long_words=False, break_on_hyphens=False), kind)
               for text, kind in notes]
    header_in = 0.15 + TITLE_LINE_IN * (title.count("\n") + 1)
    header_in += NOTE_LINE_IN * sum(text.count("\n") + 1 for text, _ in wrapped) + 0.45
    height_in = PLOT_HEIGHT_IN + header_in
    figure = Figure(figsize=(width_in, height_in))
    figure.suptitle(title, y=1 - 0.15 / height_in, va="top", fontsize=11, parse_math=False)
    offset_in = 0.15 + TITLE_LINE_IN * (title.count("\n") + 1) + 0.05
    for text, kind in wrapped:
        figure.text(0.5, 1 - offset_in / height_in, text, ha="center", va="top", fontsize=10, parse_math=False,
                    color="tab:red" if kind == "failed" else "dimgray")
        offset_in += NOTE_LINE_IN * (text.count("\n") + 1)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    figure.subplots_adjust(left=0.8 / width_in, right=1 - 0.3 / width_in, bottom=1.1 / height_in,
                           top=1 - header_in / height_in, wspace=0.35)
    for axis, panel in zip(axes, panels, strict=True):
        if panel == "failed":
            _failed_markers(axis, labels, records)
            _ticks(axis, labels)
            axis.set_ylabel("time to error (s)")
            axis.set_title("failed requests (no successful request to chart)")
        elif panel == "latency":
            _latency_panel(axis, labels, records)
        elif panel == "rate":
            _bar_panel(axis, labels, [result["summary"]["images_per_s"] for result in results], "tab:green",
                       "throughput", "images/s")
        else:
            _bar_panel(axis, labels, [result["summary"]["cost_usd_per_image"] for result in results],
                       "tab:orange", "cost per image", "cost per image (USD)")
        axis.set_ylim(bottom=0)
    return figure


def write_chart(results: list[dict[str, Any]], records: list[RequestRecord], path: Path, options: BenchOptions,
                created: datetime, secrets: Iterable[str] = ()) -> str | None:
    """Save the chart as a PNG; returns the one line saying it was skipped (no matplotlib), or None."""
    try:
        import matplotlib.figure  # noqa: F401  (the `bench` extra)
    except ImportError:
        return CHART_SKIPPED
    figure = build_figure(results, records, options, created, secrets)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return None

"""The `imageserve bench` chart, inspected through matplotlib itself (titles, axes, limits, notes), not pixels:
what was measured in the title, axes from 0 with units, no empty cost panel, and failures said in words.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from server.cli.bench_chart import CHART_SKIPPED, build_figure, write_chart
from server.cli.bench_report import BenchOptions, RequestRecord, summarize

pytest.importorskip("matplotlib")

OPTIONS = BenchOptions(size="512x512", n=2, concurrency=3, requests=4)
# 09:08 at UTC+2 is 07:08 UTC: the title gives the date in UTC.
CREATED = datetime(2025, 5, 6, 9, 8, tzinfo=timezone(timedelta(hours=2)))
SECRET = "sk-chart-SECRET-77aa"


def ok(target: str, index: int, latency: float, cost: float | None) -> RequestRecord:
    return RequestRecord(target, index, 0.1 * index, latency, True, images=2, cost_usd=cost,
                         cost_source=None if cost is None else "perf")


def failed(target: str, index: int, error: str = "HTTP 500: boom") -> RequestRecord:
    return RequestRecord(target, index, 0.1 * index, 0.05 + 0.01 * index, False, error=error)


def run(*targets: tuple[str, list[RequestRecord]]) -> tuple[list[dict[str, Any]], list[RequestRecord]]:
    """The results and records as run_bench hands them to the chart."""
    results = [{"label": label, "summary": summarize(records, wall_s=2.0)} for label, records in targets]
    return results, [record for _, records in targets for record in records]


def texts(figure: Any) -> str:
    """Every text on the figure and its axes (titles, notes, labels), whitespace folded (notes are wrapped)."""
    found = [text.get_text() for text in figure.texts]
    for axis in figure.axes:
        found += [axis.get_title(), axis.get_xlabel(), axis.get_ylabel(), *(t.get_text() for t in axis.texts)]
        found += [t.get_text() for t in axis.get_xticklabels()]
        legend = axis.get_legend()
        if legend is not None:
            found += [t.get_text() for t in legend.get_texts()]
    return " ".join(" ".join(found).split())


def check_title_and_axes(figure: Any, labels: list[str]) -> None:
    title = " ".join(figure._suptitle.get_text().split())
    for label in labels:
        assert label in title
    for part in ("512x512", "n=2", "concurrency 3", "4 requests per target", f"({4 * len(labels)} in all)",
                 "2025-05-06 07:08 UTC"):
        assert part in title
    for axis in figure.axes:
        assert axis.get_title()
        assert axis.get_ylim()[0] >= 0 and axis.get_ylim()[1] > axis.get_ylim()[0]
        assert "(s)" in axis.get_ylabel() or "/s" in axis.get_ylabel() or "(USD)" in axis.get_ylabel()


def test_mixed_costs_three_panels_with_units_and_unknown_cost_marked() -> None:
    results, records = run(
        ("local @ 127.0.0.1:8000", [ok("local @ 127.0.0.1:8000", i, 1.0 + i, 0.0) for i in range(4)]),
        ("dall-e-3 @ api.openai.com", [ok("dall-e-3 @ api.openai.com", i, 5.0 + i, 0.08) for i in range(4)]),
        ("mystery @ h", [ok("mystery @ h", i, 0.01, None) for i in range(4)]),
    )
    figure = build_figure(results, records, OPTIONS, CREATED)
    check_title_and_axes(figure, ["local @ 127.0.0.1:8000", "dall-e-3 @ api.openai.com", "mystery @ h"])
    latency, rate, cost = figure.axes
    assert (latency.get_ylabel(), rate.get_ylabel(), cost.get_ylabel()) == (
        "latency (s)", "images/s", "cost per image (USD)")
    assert latency.get_ylim()[0] == 0 and cost.get_ylim()[0] == 0  # from 0, not from the lowest sample
    assert cost.get_ylim()[1] >= 0.04  # dall-e-3's 0.08 for 2 images a request: 0.04 per image
    assert [t.get_text() for t in cost.texts] == ["n/a"]  # the unknown cost, not a silent 0
    words = texts(figure)
    assert "failed" not in words and "no cost" not in words and "$0" not in words


@pytest.mark.parametrize(("cost", "note"), [
    (0.0, "all costs are $0 (local models)"),
    (None, "no cost reported"),
])
def test_no_cost_to_show_leaves_the_cost_panel_out_and_says_why(cost: float | None, note: str) -> None:
    results, records = run(("a @ h", [ok("a @ h", i, 1.0, cost) for i in range(4)]),
                           ("b @ h", [ok("b @ h", i, 2.0, cost) for i in range(4)]))
    figure = build_figure(results, records, OPTIONS, CREATED)
    check_title_and_axes(figure, ["a @ h", "b @ h"])
    assert [axis.get_ylabel() for axis in figure.axes] == ["latency (s)", "images/s"]
    assert note in texts(figure)


def test_zero_and_unknown_costs_name_the_unknown_ones() -> None:
    results, records = run(("a @ h", [ok("a @ h", i, 1.0, 0.0) for i in range(4)]),
                           ("b @ h", [ok("b @ h", i, 2.0, None) for i in range(4)]))
    figure = build_figure(results, records, OPTIONS, CREATED)
    assert len(figure.axes) == 2
    assert "all costs are $0 (local models): no cost panel; no cost reported for b @ h" in texts(figure)


def test_all_failed_shows_the_failures_and_the_first_error_redacted() -> None:
    error = f"HTTP 401: Incorrect API key provided: {SECRET}. You can find your API key at ..."
    results, records = run(("gpt-image-1 @ api.openai.com", [failed("gpt-image-1 @ api.openai.com", i, error)
                                                             for i in range(4)]))
    figure = build_figure(results, records, OPTIONS, CREATED, secrets=[SECRET])
    check_title_and_axes(figure, ["gpt-image-1 @ api.openai.com"])
    [axis] = figure.axes  # no empty latency, throughput or cost panels
    assert axis.get_ylabel() == "time to error (s)"
    [markers] = axis.get_lines()
    assert list(markers.get_ydata()) == pytest.approx([0.05, 0.06, 0.07, 0.08])
    words = texts(figure)
    assert "all 4 requests failed: HTTP 401: Incorrect API key provided: ***. You can find" in words
    assert SECRET not in words
    assert "costs are $0" not in words and "no cost reported" not in words


def test_some_failed_says_how_many_and_marks_them() -> None:
    results, records = run(
        ("a @ h", [ok("a @ h", 0, 1.0, 0.01), failed("a @ h", 1, "HTTP 500: boom"), ok("a @ h", 2, 1.5, 0.01),
                   ok("a @ h", 3, 1.2, 0.01)]),
        ("b @ h", [failed("b @ h", i, "HTTP 503: busy") for i in range(4)]),  # one target all failed
    )
    figure = build_figure(results, records, OPTIONS, CREATED)
    check_title_and_axes(figure, ["a @ h", "b @ h"])
    latency, _rate, cost = figure.axes
    assert "5 of 8 requests failed" in texts(figure) and "first error: HTTP 500: boom" in texts(figure)
    assert "failed (time to error)" in texts(figure)  # the legend of the red markers
    marked = [line for line in latency.get_lines() if line.get_marker() == "x"]
    assert sum(len(line.get_ydata()) for line in marked) == 5
    assert [t.get_text() for t in cost.texts] == ["n/a"]  # b: no successful request, no cost


@pytest.mark.parametrize("case", ["mixed", "failed"])
def test_write_chart_saves_a_png(tmp_path: Path, case: str) -> None:
    records = [ok("a @ h", 0, 1.0, 0.01)] if case == "mixed" else [failed("a @ h", 0)]
    results, records = run(("a @ h", records))
    assert write_chart(results, records, tmp_path / "bench.png", OPTIONS, datetime.now(UTC)) is None
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_chart_is_skipped_with_how_to_get_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    results, records = run(("a @ h", [ok("a @ h", 0, 1.0, 0.01)]))
    assert write_chart(results, records, tmp_path / "bench.png", OPTIONS, CREATED) == CHART_SKIPPED
    assert "pip install 'imageserve[bench]'" in CHART_SKIPPED and "\n" not in CHART_SKIPPED
    assert not (tmp_path / "bench.png").exists()

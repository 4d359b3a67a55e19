"""benchmarks/preview_overhead.py in small form: its report's structure, and that only the jobs that asked got
previews (no timing thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import preview_overhead
from pipelines.previews import preview_steps


def test_preview_steps_are_evenly_spaced_never_the_last_and_never_twice() -> None:
    assert preview_steps(3, 28) == [7, 14, 21]
    assert preview_steps(1, 4) == [2]
    assert preview_steps(3, 2) == [1]  # fewer steps than previews: as many as fit
    assert preview_steps(0, 28) == []


@pytest.mark.slow
def test_a_tiny_run_reports_the_floor_and_the_measured_cost(tmp_path: Path) -> None:
    preview_overhead.main(["--repeats", "1", "--size", "128", "--steps", "4", "--batch", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "preview-overhead.json").read_text())
    assert {row["model"] for row in report["floor"]} == {"flux-dev", "sd3-medium"}
    assert all(0 < row["added_fraction"] < 1 for row in report["floor"])
    for row in report["measured"]:
        # The warm-up asks for none; then 1 image x 3 previews, then 2 images x 3 previews (steps 1, 2, 3 of 4).
        assert row["previews_decoded"] == 3 + 2 * 3
        assert {"added_fraction_1_asking", "added_fraction_2_asking"} <= set(row)
    assert (tmp_path / "preview-overhead.md").read_text().startswith("# What streamed previews cost a batch")

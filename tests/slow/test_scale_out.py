"""benchmarks/scale_out.py in small form: one model on 1 and 2 simulated cards in a real server process; the
report's structure and that both cards took work (no timing thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scale_out


@pytest.mark.slow
def test_a_tiny_scale_out_run_reports_each_device_count(tmp_path: Path) -> None:
    scale_out.main(["--devices", "1,2", "--time-scale", "0.005", "--batches-per-device", "3", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "scale-out.json").read_text())
    runs = {run["devices"]: run for run in report["runs"]}
    assert set(runs) == {1, 2}
    assert set(runs[1]["images_per_device"]) == {"sim0"} and set(runs[2]["images_per_device"]) == {"sim0", "sim1"}
    for run in runs.values():
        assert run["ideal_images_per_s"] == pytest.approx(run["devices"] * run["one_device_ideal_images_per_s"])
        assert run["efficiency"] == pytest.approx(run["achieved_images_per_s"] / run["ideal_images_per_s"])
    assert "Goal (issue 12" in (tmp_path / "scale-out.md").read_text()

"""benchmarks/serving_efficiency.py end to end, small: a real server process on the simulated FLUX device.

Checks that the benchmark runs and reports consistent numbers; the recorded result in benchmarks/results/
comes from the full-size run. No timing thresholds: only relations between the numbers it reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import serving_efficiency


@pytest.mark.slow
def test_small_run_reports_efficiency_and_added_latency(tmp_path: Path) -> None:
    serving_efficiency.main(["--time-scale", "0.05", "--clients", "8", "--requests", "48",
                             "--low-load-requests", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "serving_efficiency.json").read_text())
    saturation, low = report["saturation"], report["low_load"]
    assert saturation["requests"] == 48 and saturation["steady_batches"] >= 2
    assert 1 <= saturation["batch_size_mean"] <= 4  # the profile's max_batch_images
    assert saturation["efficiency"] == pytest.approx(
        saturation["achieved_images_per_s"] / saturation["ideal_images_per_s"])
    assert 0 < saturation["efficiency"] < 1.5 and 0 < saturation["device_busy_fraction"] <= 1.05
    assert low["requests"] == 2 and low["added_latency_ms_median"] > 0  # encoding a 1024x1024 PNG costs time
    assert report["device_busy_seconds_total"] > 0  # read back from the server's /metrics
    assert report["command"].startswith("python benchmarks/serving_efficiency.py --time-scale 0.05")
    markdown = (tmp_path / "serving_efficiency.md").read_text()
    assert "## Saturation (8 clients, 48 requests)" in markdown and report["date"] in markdown

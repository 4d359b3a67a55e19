"""benchmarks/local_overhead.py end to end, tiny: the report's structure and the relations between its numbers
(added latency is what the client waited beyond the device; no wall-clock thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import local_overhead


@pytest.mark.slow
def test_small_run_reports_added_latency_per_stage(tmp_path: Path) -> None:
    assert local_overhead.main(["--requests", "2", "--warmup", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "local-overhead.json").read_text())
    tiny, simulated = report["results"]["tiny-flux 256x256"], report["results"]["simulated FLUX/H100 1024x1024"]
    assert tiny["requests"] == 2 and simulated["requests"] == 5
    for result in (tiny, simulated):
        stages = result["stage_p50_ms"]
        assert {"auth", "device", "encode", "total"} <= set(stages) and "store" not in stages  # b64 answers
        assert 0 < result["added_p50_ms"] < result["client_p50_ms"]
        assert stages["total"] <= result["client_p50_ms"]  # the server's total is inside the client's wait
    assert tiny["direct_pipeline_p50_ms"] > 0
    assert "What the server adds" in (tmp_path / "local-overhead.md").read_text()

"""benchmarks/vendor_overhead.py end to end, tiny and without LiteLLM: the emulator and imageserve in their own
processes on 127.0.0.1, the report's structure and the relations between its numbers. No timing thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import vendor_overhead


@pytest.mark.slow
def test_tiny_run_without_litellm_reports_both_paths(tmp_path: Path) -> None:
    vendor_overhead.main(["--requests", "5", "--warmup", "1", "--concurrency", "8", "--concurrent-requests", "8",
                          "--rounds", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "vendor-overhead.json").read_text())

    assert report["paths_measured"] == ["direct", "imageserve"]
    assert "--litellm" in report["not_measured"]["litellm"]
    assert report["versions"]["litellm"] is None and report["versions"]["imageserve"] and report["versions"]["openai"]
    assert report["machine"]["nproc"] >= 1 and report["machine"]["python"] and report["date"]
    assert report["goals"] == vendor_overhead.GOALS
    for image in report["images"].values():  # what each path returned: the emulator's PNG, as b64_json
        assert image["size"] == "1024x1024" and image["b64_chars"] == report["images"]["direct"]["b64_chars"]

    seq, conc = report["sequential"], report["concurrent"]
    for path in ("direct", "imageserve"):
        s, c = seq[path], conc[path]
        assert s["requests"] == 5 and 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["max_ms"]
        assert s["added_ms_p50"] == pytest.approx(s["p50_ms"] - seq["direct"]["p50_ms"])
        assert (c["concurrency"], c["requests"], c["rounds"], len(c["wall_s_rounds"])) == (8, 8, 2, 2)
        assert min(c["wall_s_rounds"]) <= c["wall_s"] <= max(c["wall_s_rounds"])
        assert c["requests_per_s"] == pytest.approx(8 / c["wall_s"])
        assert c["slower_than_direct"] == pytest.approx(c["wall_s"] / conc["direct"]["wall_s"] - 1)
    assert seq["direct"]["added_ms_p50"] == 0 and conc["direct"]["slower_than_direct"] == 0
    # imageserve's own view (perf.latency_ms) of a request is part of what its client waited for.
    assert 0 < seq["imageserve"]["server_latency_ms_p50"] < seq["imageserve"]["max_ms"]

    markdown = (tmp_path / "vendor-overhead.md").read_text()
    assert report["date"] in markdown and "| litellm | not measured" in markdown
    assert "imageserve added latency p50" in markdown and "goal <= 7 ms" in markdown


@pytest.mark.slow
def test_the_vendor_like_setup_answers_late_with_a_photo_sized_image(tmp_path: Path) -> None:
    vendor_overhead.main(["--requests", "2", "--warmup", "1", "--concurrency", "4", "--concurrent-requests", "4",
                          "--rounds", "1", "--upstream-latency-ms", "200", "--image", "photo",
                          "--name", "vendor-like", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "vendor-like.json").read_text())
    assert (tmp_path / "vendor-like.md").is_file() and not (tmp_path / "vendor-overhead.json").exists()
    assert "answering after 200 ms" in report["setup"]["emulator"] and "photo-like" in report["setup"]["emulator"]
    for image in report["images"].values():  # a photo-sized PNG went through both paths unchanged
        assert image["size"] == "1024x1024" and image["b64_chars"] > 1_000_000
    for row in report["sequential"].values():  # no answer can come before the emulator's delay
        assert row["min_ms"] >= 200

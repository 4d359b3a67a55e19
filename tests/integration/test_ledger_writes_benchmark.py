"""benchmarks/ledger_writes.py, tiny: it runs the real ledger on SQLite and reports both writes."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import ledger_writes


def test_small_run_reports_admit_and_settle(tmp_path: Path) -> None:
    assert ledger_writes.main(["--requests", "5", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "ledger-writes.json").read_text())
    (name, result), = report["results"].items()
    assert name.startswith("sqlite") and report["requests"] == 5
    assert 0 < result["admit_p50_ms"] <= result["admit_p90_ms"] and result["settle_p50_ms"] > 0

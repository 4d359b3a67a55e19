"""`imageserve usage --format table|csv|json`: the usage totals exported for other tools, on SQLite and
PostgreSQL, identical before and after old rows are folded into per-day totals."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.accounts.database import Database
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger
from server.accounts.outcome import Outcome
from server.cli.main import main
from server.settings import load_settings
from tests.support.usage_fixtures import FakeClock, request, settle_ok

RANGE = ("--start", "2026-11-20", "--end", "2026-11-21")
HEADER = ["start", "end", "key_id", "name", "tier", "model", "day", "requests", "images", "cost_usd"]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def ledger(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UsageLedger]:
    """The CLI's database (SQLite or PostgreSQL) with two keys' usage over 2026-11-20 and 11-21."""
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGESERVE_DATABASE_URL", db_url)
    clock = FakeClock()
    database = Database(db_url)
    ledger = UsageLedger(database, load_settings().tiers, clock=clock)
    store = KeyStore(database, clock=clock)
    alice = store.create("pro", "alice")[1].principal()
    bob = store.create("enterprise", "bob")[1].principal()
    for key, n, model, cost in ((alice, 2, "tiny-flux", 0.000001), (alice, 1, "dall-e-2", 0.02),
                                (bob, 3, "tiny-flux", 0.3)):
        req = request(n, model)
        ledger.admit_sync(key, req)
        settle_ok(ledger, key, req, cost=cost)
    failed = request(4)
    ledger.admit_sync(bob, failed)
    ledger.settle_sync(Outcome(bob, failed.request_id, failed.model, 0, failed.size, failed.quality, 0.0, 2.0,
                               "upstream_error"), 4)
    clock.advance(86_400)  # 2026-11-21
    req = request(1)
    ledger.admit_sync(alice, req)
    settle_ok(ledger, alice, req, cost=0.01)
    yield ledger
    database.dispose()


def read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def test_csv_has_a_header_and_one_row_per_key_and_model_or_day(ledger: UsageLedger,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "usage", *RANGE, "--format", "csv", "--by", "model")
    assert code == 0 and err == ""
    fields, rows = read_csv(out)
    assert fields == [name for name in HEADER if name != "day"]
    by_model = {(row["name"], row["model"]): row for row in rows}
    assert set(by_model) == {("alice", "tiny-flux"), ("alice", "dall-e-2"), ("bob", "tiny-flux")}
    alice = by_model[("alice", "tiny-flux")]
    assert alice.pop("key_id") == by_model[("alice", "dall-e-2")]["key_id"] != by_model[("bob", "tiny-flux")]["key_id"]
    assert alice == {"start": "2026-11-20", "end": "2026-11-21", "name": "alice", "tier": "pro", "model": "tiny-flux",
                     "requests": "2", "images": "3", "cost_usd": "0.010001"}  # six decimals, never 1e-06
    assert by_model[("bob", "tiny-flux")]["requests"] == "2" and by_model[("bob", "tiny-flux")]["images"] == "3"

    code, out, _ = cli(capsys, "usage", *RANGE, "--format", "csv", "--by", "day")
    fields, rows = read_csv(out)
    assert code == 0 and fields == [name for name in HEADER if name != "model"]
    assert {(row["name"], row["day"]): row["images"] for row in rows} == {
        ("alice", "2026-11-20"): "3", ("alice", "2026-11-21"): "1", ("bob", "2026-11-20"): "3"}

    code, out, _ = cli(capsys, "usage", *RANGE, "--format", "csv")  # --by both: key, model and day
    fields, rows = read_csv(out)
    assert code == 0 and fields == HEADER
    assert sorted((row["name"], row["model"], row["day"], row["images"]) for row in rows) == [
        ("alice", "dall-e-2", "2026-11-20", "1"), ("alice", "tiny-flux", "2026-11-20", "2"),
        ("alice", "tiny-flux", "2026-11-21", "1"), ("bob", "tiny-flux", "2026-11-20", "3")]


def test_json_is_an_array_of_the_same_rows(ledger: UsageLedger, capsys: pytest.CaptureFixture[str]) -> None:
    for by in ("model", "day", "both"):
        code, out, err = cli(capsys, "usage", *RANGE, "--format", "json", "--by", by)
        assert code == 0 and err == ""
        exported = json.loads(out)
        _, rows = read_csv(cli(capsys, "usage", *RANGE, "--format", "csv", "--by", by)[1])
        assert isinstance(exported, list) and len(exported) == len(rows) > 0
        for item, row in zip(exported, rows, strict=True):
            assert list(item) == list(row)
            assert {name: str(value) for name, value in item.items() if name != "cost_usd"} == {
                name: value for name, value in row.items() if name != "cost_usd"}
            assert f"{item['cost_usd']:.6f}" == row["cost_usd"]
            assert item["start"] == "2026-11-20" and item["end"] == "2026-11-21"
            assert isinstance(item["images"], int) and isinstance(item["requests"], int)
    code, out, _ = cli(capsys, "usage", *RANGE, "--format", "json", "--by", "model")
    totals = {(item["name"], item["model"]): item["cost_usd"] for item in json.loads(out)}
    assert totals[("alice", "tiny-flux")] == 0.010001 and totals[("bob", "tiny-flux")] == 0.3


def test_the_table_stays_the_default(ledger: UsageLedger, capsys: pytest.CaptureFixture[str]) -> None:
    code, default, _ = cli(capsys, "usage", *RANGE)
    assert code == 0 and default.startswith("usage from 2026-11-20 to 2026-11-21")
    code, table, _ = cli(capsys, "usage", *RANGE, "--format", "table")
    assert code == 0 and table == default
    assert default.split("\n\n")[1].splitlines()[-1].split() == ["TOTAL", "5", "7", "0.3300"]


def test_exports_are_the_same_after_old_rows_are_folded(ledger: UsageLedger,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = {(fmt, by): cli(capsys, "usage", *RANGE, "--format", fmt, "--by", by)[1]
              for fmt in ("table", "csv", "json") for by in ("model", "day", "both")}
    ledger.clock.advance(3 * 86_400)  # type: ignore[attr-defined]  # 2026-11-24: both days are old
    assert ledger.apply_retention(1) == 5
    after = {(fmt, by): cli(capsys, "usage", *RANGE, "--format", fmt, "--by", by)[1]
             for fmt in ("table", "csv", "json") for by in ("model", "day", "both")}
    assert after == before


def test_an_empty_range_is_a_header_or_an_empty_array(ledger: UsageLedger, capsys: pytest.CaptureFixture[str]) -> None:
    empty = ("--start", "2020-01-01", "--end", "2020-01-31")
    code, out, _ = cli(capsys, "usage", *empty, "--format", "csv", "--by", "day")
    assert code == 0 and out == ",".join(name for name in HEADER if name != "model") + "\n"
    code, out, _ = cli(capsys, "usage", *empty, "--format", "json")
    assert code == 0 and json.loads(out) == []


@pytest.mark.parametrize(("argv", "expected"), [
    (("--format", "xml"), "--format must be one of table, csv, json, not 'xml'"),
    (("--format", "CSV"), "--format must be one of table, csv, json"),
    (("--format", "csv", "--start", "last-week"), "'start'"),
    (("--format", "json", "--start", "2026-11-22", "--end", "2026-11-21"), "after end"),
])
def test_bad_input_is_one_error_line_and_exit_2(ledger: UsageLedger, capsys: pytest.CaptureFixture[str],
                                                argv: tuple[str, ...], expected: str) -> None:
    code, out, err = cli(capsys, "usage", *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err and "Traceback" not in err


def test_by_still_rejects_an_unknown_grouping(ledger: UsageLedger, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["usage", "--format", "csv", "--by", "week"])
    assert exited.value.code == 2 and "invalid choice: 'week'" in capsys.readouterr().err

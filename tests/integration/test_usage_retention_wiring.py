"""IMAGESERVE_USAGE_RETENTION_DAYS in a running server: old ledger rows are folded at start, and the key's
usage report over those days is the same as before."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from server.accounts.database import Database, usage_daily, usage_ledger
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger
from server.settings import load_settings
from tests.support.server_harness import running_server
from tests.support.usage_fixtures import FakeClock, request, settle_ok

RANGE = {"start": "2026-11-19", "end": "2026-11-21"}  # days long before any run of this test


def _counts(database: Database) -> tuple[int, int]:
    with database.read() as conn:
        return (conn.execute(select(func.count()).select_from(usage_ledger)).scalar_one(),
                conn.execute(select(func.count()).select_from(usage_daily)).scalar_one())


def test_old_rows_are_folded_at_start_and_the_report_is_unchanged(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'imageserve.db'}")
    clock = FakeClock()  # 2026-11-20
    secret, record = KeyStore(database, clock=clock).create("enterprise", "history")
    ledger = UsageLedger(database, load_settings().tiers, clock=clock)
    for n in (1, 2, 3):
        req = request(n)
        ledger.admit_sync(record.principal(), req)
        settle_ok(ledger, record.principal(), req, cost=0.01 * n)
    before = ledger.report(record.key_id, *(ledger.today(),) * 2)
    assert _counts(database) == (3, 0)
    database.dispose()
    auth = {"Authorization": f"Bearer {secret}"}
    with running_server(data_dir=tmp_path, usage_retention_days=1) as server:
        deadline = time.monotonic() + 30
        while _counts(Database(f"sqlite:///{tmp_path / 'imageserve.db'}")) != (0, 1):
            assert time.monotonic() < deadline, "the retention task did not fold the old rows"
            time.sleep(0.1)
        report = httpx.get(server.api_url + "/usage", params=RANGE, headers=auth).json()
    assert report["total"] == before["total"] == {"images": 6, "cost_usd": 0.06, "requests": 3}
    assert report["by_day"] == [{"date": "2026-11-20", "images": 6, "cost_usd": 0.06, "requests": 3}]

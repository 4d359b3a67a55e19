"""Usage retention: old ledger rows folded into per-day totals, on SQLite and a real PostgreSQL, with a fake clock.

The reports must be identical before and after folding (per key, model and day, across the boundary),
folding twice or from two replicas at once must never count a row twice, and quota admission must not
notice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from server.accounts.credentials import Principal
from server.accounts.database import Database, schema_migrations, usage_daily, usage_ledger
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger
from server.accounts.outcome import Outcome
from server.accounts.retention import Cutoff
from server.errors import RateLimitExceeded
from server.settings import load_settings
from tests.support.usage_fixtures import T0, FakeClock, free_key, request, settle_ok

DAY_S = 86_400
MIDNIGHT = T0 - 12 * 3600  # 2026-11-20 00:00 UTC
EVERYTHING = (dt.date(2026, 11, 1), dt.date(2026, 12, 31))
ACROSS = (dt.date(2026, 11, 24), dt.date(2026, 11, 27))  # folded days and kept days in one range


def enterprise_key(database: Database, clock: FakeClock, name: str) -> Principal:
    return KeyStore(database, clock=clock).create("enterprise", name)[1].principal()


def fail(ledger: UsageLedger, key: Principal, n: int, status: str) -> None:
    req = request(n)
    ledger.admit_sync(key, req)
    ledger.settle_sync(Outcome(key, req.request_id, req.model, 0, req.size, req.quality, 0.0, 3.0, status), n)


def ok(ledger: UsageLedger, key: Principal, n: int, model: str, cost: float) -> str:
    req = request(n, model)
    ledger.admit_sync(key, req)
    settle_ok(ledger, key, req, cost=cost)
    return req.request_id


def build_history(ledger: UsageLedger, database: Database, clock: FakeClock, days: int = 8) -> dict[str, Any]:
    """`days` days from 2026-11-20 of every kind of row: ok (two models, float costs), failed, refused,
    abandoned, one left pending, and requests admitted just before midnight and settled just after."""
    alice, bob = enterprise_key(database, clock, "alice"), enterprise_key(database, clock, "bob")
    carol = free_key(database, clock, "carol")  # 5 images a minute: her sixth is refused
    ids: dict[str, Any] = {"keys": (alice, bob, carol), "late": []}
    clock.now = MIDNIGHT + 60
    abandoned = request(2)
    ledger.admit_sync(alice, abandoned)  # its server died; released as stale a quarter of an hour later
    clock.advance(901)
    assert ledger.release_stale(900) == 1
    ids["abandoned"] = abandoned.request_id
    for day in range(days):
        start = MIDNIGHT + day * DAY_S
        clock.now = start + 5
        ok(ledger, alice, 2, "tiny-flux", 0.013 * (day + 1))
        clock.now = start + 11 * 3600
        ok(ledger, alice, 1, "dall-e-2", 0.04)
        fail(ledger, bob, 1, "upstream_error")
        ok(ledger, bob, 1, "dall-e-2", 0.04)
        ok(ledger, carol, 5, "tiny-flux", 0.0)
        with pytest.raises(RateLimitExceeded):
            ledger.admit_sync(carol, request(1))
        if day == 1:
            pending = request(3)
            ledger.admit_sync(alice, pending)  # in flight: never settled, never released
            ids["pending"] = pending.request_id
        clock.now = start + DAY_S - 10
        late = request(3, "dall-e-2")
        ledger.admit_sync(bob, late)
        clock.advance(20)  # settled on the next UTC day: the row stays on the day it was admitted
        settle_ok(ledger, bob, late, cost=0.1 + 0.01 * day)
        ids["late"].append(late.request_id)
    return ids


def reports(ledger: UsageLedger, keys: tuple[Principal, ...]) -> dict[str, Any]:
    every: dict[str, Any] = {}
    for start, end in (EVERYTHING, ACROSS, (dt.date(2026, 11, 21), dt.date(2026, 11, 21))):
        span = f"{start}..{end}"
        for key in keys:
            every[f"report {key.key_id} {span}"] = ledger.report(key.key_id, start, end)
        for by in ("model", "day", "both"):
            every[f"report_all {by} {span}"] = ledger.report_all(start, end, by=by)
    return every


def ledger_rows(database: Database) -> dict[str, tuple[str, str]]:
    with database.read() as conn:
        return {r.request_id: (r.day, r.status) for r in conn.execute(
            select(usage_ledger.c.request_id, usage_ledger.c.day, usage_ledger.c.status))}


def daily_totals(database: Database) -> list[tuple[Any, ...]]:
    """(key_id, model, day, images, cost_usd, requests) of every folded total."""
    with database.read() as conn:
        return [tuple(r) for r in conn.execute(select(usage_daily).order_by(
            usage_daily.c.key_id, usage_daily.c.model, usage_daily.c.day))]


@pytest.mark.parametrize("batch_size", [1000, 1])  # 1: a (key, model, day) total is added to batch after batch
def test_folding_keeps_every_report_exact_across_the_boundary(ledger: UsageLedger, database: Database,
                                                             clock: FakeClock, batch_size: int) -> None:
    ids = build_history(ledger, database, clock)
    clock.now = T0 + 9 * DAY_S  # 2026-11-29 12:00: with 3 days kept, 2026-11-26 is the first day kept
    before = reports(ledger, ids["keys"])
    assert before[f"report {ids['keys'][0].key_id} {EVERYTHING[0]}..{EVERYTHING[1]}"]["total"]["requests"] == 18
    rows_before = ledger_rows(database)

    folded = ledger.apply_retention(3, batch_size=batch_size)

    rows_after = ledger_rows(database)
    assert folded == len(rows_before) - len(rows_after) > 0
    old = {request_id for request_id, (day, _) in rows_after.items() if day < "2026-11-26"}
    # Left: the reservation still in flight, and the request of 11-25 that finished after 11-26 began.
    assert old == {ids["pending"], ids["late"][5]}
    assert rows_after[ids["pending"]] == ("2026-11-21", "pending")
    assert all(day >= "2026-11-26" for request_id, (day, _) in rows_after.items() if request_id not in old)
    assert sum(row[5] for row in daily_totals(database)) == folded  # every folded row counted exactly once
    assert reports(ledger, ids["keys"]) == before

    assert ledger.apply_retention(3, batch_size=batch_size) == 0  # idempotent
    assert reports(ledger, ids["keys"]) == before
    clock.advance(3 * DAY_S)  # three days on: the next days fold, and the late row of 11-25 joins its day
    totals = daily_totals(database)
    assert ledger.apply_retention(3, batch_size=batch_size) > 0
    assert reports(ledger, ids["keys"]) == before
    changed = set(totals) - set(daily_totals(database))
    assert [row[:3] for row in changed] == [(ids["keys"][1].key_id, "dall-e-2", "2026-11-25")]


def test_folded_totals_are_what_the_reports_count(ledger: UsageLedger, database: Database, clock: FakeClock) -> None:
    alice = enterprise_key(database, clock, "alice")
    clock.now = MIDNIGHT + 3600
    for cost in (0.1, 0.2, 0.7):
        ok(ledger, alice, 2, "tiny-flux", cost)
    fail(ledger, alice, 4, "upstream_error")
    fail(ledger, alice, 1, "cancelled")
    clock.now = MIDNIGHT + 5 * DAY_S
    assert ledger.apply_retention(2) == 5
    assert daily_totals(database) == [(alice.key_id, "tiny-flux", "2026-11-20", 6, pytest.approx(1.0), 5)]
    report = ledger.report(alice.key_id, dt.date(2026, 11, 20), dt.date(2026, 11, 20))
    assert report["total"] == {"images": 6, "cost_usd": 1.0, "requests": 5}
    assert report["by_day"] == [{"date": "2026-11-20", "images": 6, "cost_usd": 1.0, "requests": 5}]
    assert ledger.report(alice.key_id, dt.date(2026, 11, 21), dt.date(2026, 11, 30))["total"]["requests"] == 0


def test_pending_reservations_wait_and_a_released_one_folds_once_its_release_is_old(
        ledger: UsageLedger, database: Database, clock: FakeClock) -> None:
    alice = enterprise_key(database, clock, "alice")
    clock.now = MIDNIGHT + 3600
    in_flight = request(3)
    ledger.admit_sync(alice, in_flight)
    clock.now = MIDNIGHT + 10 * DAY_S
    assert ledger.apply_retention(1) == 0
    assert ledger_rows(database) == {in_flight.request_id: ("2026-11-20", "pending")}
    assert ledger.release_stale(900) == 1  # released today: its slow request might still settle it
    assert ledger.apply_retention(1) == 0
    clock.advance(2 * DAY_S)
    assert ledger.apply_retention(1) == 1
    report = ledger.report(alice.key_id, *EVERYTHING)
    assert report["total"] == {"images": 0, "cost_usd": 0.0, "requests": 1}


def test_quota_windows_do_not_notice_the_shortest_retention(ledger: UsageLedger, database: Database,
                                                            clock: FakeClock) -> None:
    key = free_key(database, clock, per_minute=0, per_day=10)
    clock.now = MIDNIGHT + DAY_S - 1  # 11-20 23:59:59: folded with one day kept, 24 hours and 31 s before the end
    oldest = ok(ledger, key, 4, "tiny-flux", 0.0)
    clock.now = MIDNIGHT + DAY_S + 600  # 11-21 00:10: kept, inside the day window
    ok(ledger, key, 3, "tiny-flux", 0.0)
    clock.now = MIDNIGHT + 2 * DAY_S + 30  # 11-22 00:00:30
    ok(ledger, key, 6, "tiny-flux", 0.0)  # the 3 of 11-21 and these 6: 9 of 10 in the last day
    with pytest.raises(RateLimitExceeded) as before:
        ledger.admit_sync(key, request(2))
    limits_before = ledger.report(key.key_id, *EVERYTHING)["limits"]
    assert limits_before["used_last_day"] == 9

    assert ledger.apply_retention(1) == 1  # only the row of 11-20
    assert oldest not in ledger_rows(database)
    with pytest.raises(RateLimitExceeded) as after:
        ledger.admit_sync(key, request(2))
    assert after.value.retry_after == before.value.retry_after == 570  # the 3 of 11-21 00:10 leave at 00:10
    assert ledger.report(key.key_id, *EVERYTHING)["limits"] == limits_before
    ledger.admit_sync(key, request(1))  # the tenth image still fits
    with pytest.raises(RateLimitExceeded):
        ledger.admit_sync(key, request(1))


def test_retention_needs_at_least_one_whole_day() -> None:
    for days in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="at least 1"):
            Cutoff(T0, days)  # type: ignore[arg-type]
    cutoff = Cutoff(T0, 1)
    assert cutoff.day == "2026-11-19" and cutoff.ts == MIDNIGHT - DAY_S


def test_two_replicas_folding_at_once_count_every_row_once(db_url: str, clock: FakeClock) -> None:
    replicas = [Database(db_url), Database(db_url)]
    try:
        ledgers = [UsageLedger(db, load_settings().tiers, clock=clock) for db in replicas]
        ids = build_history(ledgers[0], replicas[0], clock, days=6)
        clock.now = T0 + 9 * DAY_S
        before = reports(ledgers[0], ids["keys"])
        rows_before = len(ledger_rows(replicas[0]))
        folded: list[int] = []
        start = threading.Barrier(4)

        def fold(index: int) -> None:
            start.wait()
            folded.append(ledgers[index % 2].apply_retention(2, batch_size=2))

        threads = [threading.Thread(target=fold, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(folded) == 4
        assert sum(folded) == rows_before - len(ledger_rows(replicas[0])) > 0
        assert sum(row[5] for row in daily_totals(replicas[0])) == sum(folded)
        assert reports(ledgers[1], ids["keys"]) == before
    finally:
        for db in replicas:
            db.dispose()


async def test_retention_forever_folds_at_once_and_survives_database_errors(
        ledger: UsageLedger, database: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    await ledger.retention_forever(None)  # the default: keep everything, nothing runs
    alice = enterprise_key(database, clock, "alice")
    clock.now = MIDNIGHT + 3600
    ok(ledger, alice, 1, "tiny-flux", 0.04)
    clock.now = MIDNIGHT + 5 * DAY_S
    calls: list[int] = []
    fold_once = ledger.fold_once

    def flaky(cutoff: Cutoff, batch_size: int = 1000) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return fold_once(cutoff, batch_size)

    monkeypatch.setattr(ledger, "fold_once", flaky)
    with caplog.at_level(logging.WARNING, logger="server.accounts.ledger"):
        task = asyncio.ensure_future(ledger.retention_forever(1, every=0))
        for _ in range(2000):  # a round: the failure, then (every=0) the fold and the empty batch after it
            if len(calls) >= 4:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(calls) >= 4
    assert "could not fold old usage rows" in caplog.text and "database is locked" in caplog.text
    assert ledger_rows(database) == {}
    assert ledger.report(alice.key_id, *EVERYTHING)["total"] == {"images": 1, "cost_usd": 0.04, "requests": 1}


def test_report_all_groups_by_key_model_and_day(ledger: UsageLedger, database: Database, clock: FakeClock) -> None:
    alice = enterprise_key(database, clock, "alice")
    clock.now = MIDNIGHT + 3600
    ok(ledger, alice, 2, "tiny-flux", 0.02)
    clock.advance(DAY_S)
    ok(ledger, alice, 1, "tiny-flux", 0.01)
    rows = ledger.report_all(*EVERYTHING, by="both")
    assert [(r["name"], r["model"], r["day"], r["images"]) for r in rows] == [
        ("alice", "tiny-flux", "2026-11-20", 2), ("alice", "tiny-flux", "2026-11-21", 1)]
    with pytest.raises(ValueError, match="'model', 'day' or 'both'"):
        ledger.report_all(*EVERYTHING, by="week")


def test_an_existing_database_is_migrated_to_the_daily_totals(db_url: str, clock: FakeClock) -> None:
    first = Database(db_url)
    key = enterprise_key(first, clock, "alice")
    clock.now = MIDNIGHT + 3600
    ok(UsageLedger(first, load_settings().tiers, clock=clock), key, 2, "tiny-flux", 0.5)
    with first.transaction() as conn:  # back to the schema of version 1, with its data
        conn.execute(text("DROP INDEX ix_usage_ledger_day"))
        conn.execute(text("DROP TABLE usage_daily"))
        conn.execute(schema_migrations.delete().where(schema_migrations.c.version == 2))
    first.dispose()
    second = Database(db_url)  # an upgraded server starts
    try:
        with second.read() as conn:
            assert sorted(conn.scalars(select(schema_migrations.c.version))) == [1, 2]
            assert conn.scalar(select(func.count()).select_from(usage_daily)) == 0
        ledger = UsageLedger(second, load_settings().tiers, clock=clock)
        clock.now = MIDNIGHT + 4 * DAY_S
        assert ledger.apply_retention(1) == 1
        assert ledger.report(key.key_id, *EVERYTHING)["total"] == {"images": 2, "cost_usd": 0.5, "requests": 1}
    finally:
        second.dispose()

"""The database-backed quotas and ledger, on SQLite and on a real PostgreSQL, with a fake clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import pytest

from server.accounts.database import Database
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger
from server.accounts.outcome import Outcome
from server.api.errors import headers_of
from server.errors import RateLimitExceeded
from server.settings import load_settings
from tests.support.usage_fixtures import T0, FakeClock, free_key, request, settle_ok

PEPPER = b"test-pepper-" * 3


def test_minute_window_counts_images_and_says_how_long_to_wait(ledger: UsageLedger, database, clock) -> None:
    key = free_key(database, clock)
    first = request(3)
    ledger.admit_sync(key, first)
    clock.advance(20)
    ledger.admit_sync(key, request(2))  # 5 images in the minute: at the limit, admitted
    clock.advance(10)
    with pytest.raises(RateLimitExceeded) as refused:
        ledger.admit_sync(key, request(1))
    assert refused.value.retry_after == 30  # the 3 images of t=0 leave at t=60; now t=30
    assert "x-should-retry" not in headers_of(refused.value)
    clock.advance(30)  # t=60: the first 3 have left the window
    ledger.admit_sync(key, request(3))
    with pytest.raises(RateLimitExceeded) as refused:
        ledger.admit_sync(key, request(1))
    assert refused.value.retry_after == 20  # the 2 of t=20 leave at t=80


def test_daily_limit_refuses_without_retry_and_resets_a_day_later(ledger: UsageLedger, database, clock) -> None:
    key = free_key(database, clock)
    for _ in range(10):  # 50 images, 5 per minute
        ledger.admit_sync(key, request(5))
        clock.advance(61)
    with pytest.raises(RateLimitExceeded) as refused:
        ledger.admit_sync(key, request(1))
    error = refused.value
    assert headers_of(error)["x-should-retry"] == "false"
    assert error.retry_after == 86_400 - 10 * 61  # until the first 5 (at T0) leave the day window
    assert "50 images per day" in error.message
    clock.now = T0 + 86_400  # the first request's images have left the day
    ledger.admit_sync(key, request(5))


def test_failed_images_are_given_back(ledger: UsageLedger, database, clock) -> None:
    key = free_key(database, clock)
    failed = request(4)
    ledger.admit_sync(key, failed)
    ledger.settle_sync(Outcome(key, failed.request_id, failed.model, 0, failed.size, failed.quality, 0.0, 5.0,
                               "model_unavailable"), 4)
    ledger.admit_sync(key, request(5))  # all 5 again: the failed 4 were given back
    with pytest.raises(RateLimitExceeded):
        ledger.admit_sync(key, request(1))


def test_a_pending_request_holds_its_images(ledger: UsageLedger, database, clock) -> None:
    key = free_key(database, clock)
    ledger.admit_sync(key, request(4))  # not settled yet
    with pytest.raises(RateLimitExceeded):
        ledger.admit_sync(key, request(2))


def test_more_than_the_limit_in_one_request_is_never_admitted(ledger: UsageLedger, database, clock) -> None:
    key = free_key(database, clock, per_minute=3)
    with pytest.raises(RateLimitExceeded) as refused:
        ledger.admit_sync(key, request(4))
    assert headers_of(refused.value)["x-should-retry"] == "false" and "at most 3" in refused.value.message


def test_custom_key_limits_and_unlimited_enterprise(ledger: UsageLedger, database, clock) -> None:
    custom = free_key(database, clock, "custom", per_minute=0, per_day=7)
    for _ in range(7):
        ledger.admit_sync(custom, request(1))
    with pytest.raises(RateLimitExceeded) as refused:
        ledger.admit_sync(custom, request(1))
    assert headers_of(refused.value)["x-should-retry"] == "false"
    _, record = KeyStore(database, clock=clock).create("enterprise", "big")
    for _ in range(30):
        ledger.admit_sync(record.principal(), request(10))


def test_counts_survive_a_restart(db_url: str, clock: FakeClock) -> None:
    first = Database(db_url)
    key = free_key(first, clock)
    UsageLedger(first, load_settings().tiers, clock=clock).admit_sync(key, request(5))
    first.dispose()
    second = Database(db_url)  # a new process, as far as the database can tell
    try:
        with pytest.raises(RateLimitExceeded):
            UsageLedger(second, load_settings().tiers, clock=clock).admit_sync(key, request(1))
    finally:
        second.dispose()


def test_concurrent_admission_is_exact_across_connections_and_replicas(db_url: str, clock: FakeClock) -> None:
    """Many threads on two separate engines (two 'replicas') race for a fresh free key: exactly 5 images."""
    replicas = [Database(db_url), Database(db_url)]
    key = free_key(replicas[0], clock)
    ledgers = [UsageLedger(db, load_settings().tiers, clock=clock) for db in replicas]
    admitted: list[int] = []
    refused: list[int] = []
    start = threading.Barrier(16)

    def attempt(index: int) -> None:
        start.wait()
        try:
            ledgers[index % 2].admit_sync(key, request(1 + index % 2))
            admitted.append(1 + index % 2)
        except RateLimitExceeded:
            refused.append(index)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for db in replicas:
        db.dispose()
    assert sum(admitted) <= 5 and len(admitted) + len(refused) == 16
    assert sum(admitted) >= 4  # greedy admission fills the window (a 2 may not fit in the last slot)


def test_ledger_records_every_request_and_reports_per_key(ledger: UsageLedger, database, clock) -> None:
    alice = free_key(database, clock, "alice")
    bob = free_key(database, clock, "bob")
    a1 = request(2)
    ledger.admit_sync(alice, a1)
    settle_ok(ledger, alice, a1, cost=0.08)
    clock.advance(86_400)  # the next day
    a2 = request(1, model="dall-e-2")
    ledger.admit_sync(alice, a2)
    settle_ok(ledger, alice, a2, cost=0.016)
    b1 = request(1)
    ledger.admit_sync(bob, b1)
    ledger.settle_sync(Outcome(bob, b1.request_id, b1.model, 0, b1.size, b1.quality, 0.0, 1.0, "upstream_error"), 1)
    start, end = dt.date(2026, 11, 1), dt.date(2026, 11, 30)
    report = ledger.report(alice.key_id, start, end)
    assert report["total"] == {"images": 3, "cost_usd": 0.096, "requests": 2}
    assert {m["model"]: m["images"] for m in report["by_model"]} == {"tiny-flux": 2, "dall-e-2": 1}
    assert [(d["date"], d["images"]) for d in report["by_day"]] == [("2026-11-20", 2), ("2026-11-21", 1)]
    assert report["key"] == {"name": "alice", "tier": "free"}
    assert report["limits"]["images_per_day"] == 50 and report["limits"]["used_last_day"] == 1
    bob_report = ledger.report(bob.key_id, start, end)
    assert bob_report["total"] == {"images": 0, "cost_usd": 0.0, "requests": 1}
    only_first_day = ledger.report(alice.key_id, dt.date(2026, 11, 20), dt.date(2026, 11, 20))
    assert only_first_day["total"]["images"] == 2
    rows = {(r["name"], r["model"]): r for r in ledger.report_all(start, end)}
    assert rows[("alice", "dall-e-2")]["cost_usd"] == 0.016 and rows[("bob", "tiny-flux")]["images"] == 0


def test_refused_requests_are_in_the_ledger(ledger: UsageLedger, database, clock) -> None:
    key = free_key(database, clock)
    ledger.admit_sync(key, request(5))
    with pytest.raises(RateLimitExceeded):
        ledger.admit_sync(key, request(1))
    report = ledger.report(key.key_id, dt.date(2026, 11, 20), dt.date(2026, 11, 20))
    assert report["total"]["requests"] == 2


def test_keys_store_create_list_revoke_and_env_rows(database: Database, clock: FakeClock) -> None:
    store = KeyStore(database, clock=clock)
    key, record = store.create("pro", "team-a")
    assert key.startswith("isk_") and len(key) > 40
    assert store.find(key) == record and store.find(key + "x") is None
    with pytest.raises(ValueError, match="already exists"):
        store.create("pro", "team-a")
    with pytest.raises(ValueError, match="invalid key name"):
        store.create("pro", "bad name")
    assert store.has_active_keys()
    store.sync_env_keys({"sk-env": "free"}, PEPPER)
    store.sync_env_keys({"sk-env": "pro"}, PEPPER)  # the environment decides an env key's tier
    listed = {r.name: r for r in store.list()}
    env_row = next(r for r in listed.values() if r.source == "env")
    assert env_row.tier == "pro" and env_row.name.startswith("key_")
    with pytest.raises(ValueError, match="IMAGESERVE_API_KEYS"):
        store.revoke(env_row.name)
    assert store.revoke("team-a").name == "team-a"
    assert store.find(key) is not None and not store.find(key).active
    assert not store.has_active_keys()


async def test_a_cancelled_admission_gives_its_images_back(ledger: UsageLedger, database, clock) -> None:
    key = free_key(database, clock)
    admission = asyncio.ensure_future(ledger.admit(key, request(5)))
    await asyncio.sleep(0)  # the reservation is under way in its thread
    admission.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admission
    await ledger.admit(key, request(5))  # the cancelled request's 5 images were given back


def test_reservations_of_a_dead_server_are_released_later(ledger: UsageLedger, database, clock) -> None:
    key = free_key(database, clock)
    ledger.admit_sync(key, request(5))  # never settled: the server "died"
    assert ledger.release_stale() == 0  # too recent: it may still be running on another replica
    clock.advance(3601)
    assert ledger.release_stale() == 1
    clock.now -= 3601 - 1  # back within the minute of the original request
    ledger.admit_sync(key, request(5))

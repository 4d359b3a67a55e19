"""Failure paths of keys, quotas and the ledger: settle failures, stale reservations, SQLite locking,
peppered env-key fingerprints (and their migration), and custom tiers for env keys."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import OperationalError

from server.accounts.authenticator import KeyAuthenticator
from server.accounts.credentials import ANONYMOUS, KEY_PEPPER_FILENAME, bearer_token, key_fingerprint, parse_api_keys
from server.accounts.database import Database, api_keys, usage_ledger
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger, utc_day
from server.accounts.outcome import Outcome
from server.accounts.setup import database_url, key_authenticator, key_pepper
from server.app import create_app
from server.errors import AuthenticationError, RateLimitExceeded
from server.settings import Settings, load_settings
from tests.support.server_harness import running_server
from tests.support.usage_fixtures import FakeClock, free_key, request, settle_ok

PEPPER = b"p" * 32
WEAK_KEY = "change-me"
TEAM = {"team": {"images_per_minute": 2, "images_per_day": 7}}


def unpeppered(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def ledger_status(database: Database, request_id: str) -> tuple[str, int]:
    with database.read() as conn:
        row = conn.execute(select(usage_ledger.c.status, usage_ledger.c.images).where(
            usage_ledger.c.request_id == request_id)).one()
    return row.status, row.images


# --- 1. a failed settle never replaces the outcome; stale reservations are released while running --------


class FlakyLedger(UsageLedger):
    """The real ledger, except that `settle` fails while `broken` (a database that went away)."""

    broken = True

    async def settle(self, outcome: Outcome, reserved: int) -> None:
        if self.broken:
            raise OperationalError("UPDATE usage_ledger", {}, Exception("database is locked"))
        await super().settle(outcome, reserved)


def flaky_app(settings: Settings) -> Any:
    return create_app(settings, usage=FlakyLedger(Database(database_url(settings)), settings.tiers))


def test_a_failed_settle_keeps_the_real_outcome_and_logs_the_request_id(
        tmp_path: Path, model_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny = {"prompt": "a lighthouse", "model": "tiny-flux", "size": "256x256", "num_inference_steps": 1}
    headers = {"Authorization": f"Bearer {WEAK_KEY}"}
    with (caplog.at_level(logging.ERROR, logger="server.service"),
          running_server(flaky_app, data_dir=tmp_path, model_cache=model_cache, api_keys=WEAK_KEY,
                         models={"broken": {"kind": "sd3", "source": str(tmp_path / "no-weights")}}) as server):
        ok = httpx.post(server.api_url + "/images/generations", json=tiny, headers=headers, timeout=300)
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["data"]) == 1
        request_id = ok.json()["perf"]["request_id"]
        failed = httpx.post(server.api_url + "/images/generations", json={"prompt": "x", "model": "broken"},
                            headers=headers, timeout=60)
        assert failed.status_code == 503, failed.text  # the backend's error, not the ledger's
    logged = [r.getMessage() for r in caplog.records if "could not record usage" in r.getMessage()]
    assert len(logged) == 2 and request_id in logged[0]
    assert WEAK_KEY not in caplog.text


def test_a_request_settled_after_its_reservation_was_released_is_still_billed(ledger: UsageLedger, database,
                                                                              clock) -> None:
    key = free_key(database, clock)
    slow = request(2)
    ledger.admit_sync(key, slow)
    clock.advance(901)
    assert ledger.release_stale(900) == 1
    assert ledger_status(database, slow.request_id) == ("abandoned", 0)
    settle_ok(ledger, key, slow, cost=0.08)  # it finished after all
    assert ledger_status(database, slow.request_id) == ("ok", 2)
    report = ledger.report(key.key_id, ledger.today(), ledger.today())
    assert report["total"] == {"images": 2, "cost_usd": 0.08, "requests": 1}


async def test_stale_reservations_are_released_periodically_not_only_at_start(ledger: UsageLedger, database,
                                                                               clock) -> None:
    key = free_key(database, clock)
    lost = request(5)
    ledger.admit_sync(key, lost)  # its server "crashes": never settled
    with pytest.raises(RateLimitExceeded):
        ledger.admit_sync(key, request(1))
    releaser = asyncio.create_task(ledger.release_stale_forever(older_than=120, every=0.01))
    try:
        await asyncio.sleep(0.05)
        assert ledger_status(database, lost.request_id)[0] == "pending"  # younger than the threshold
        clock.advance(121)
        for _ in range(1000):
            if ledger_status(database, lost.request_id)[0] != "pending":
                break
            await asyncio.sleep(0.01)
    finally:
        releaser.cancel()
    assert ledger_status(database, lost.request_id) == ("abandoned", 0)
    assert ledger.report(key.key_id, ledger.today(), ledger.today())["limits"]["used_last_day"] == 0


def test_the_stale_threshold_is_a_setting() -> None:
    assert load_settings().stale_reservation_seconds == 900
    assert load_settings(stale_reservation_seconds=1800).stale_reservation_seconds == 1800
    with pytest.raises(ValueError):
        load_settings(stale_reservation_seconds=5)


# --- 2. on SQLite, reading does not take the write lock -----------------------------------------------


async def test_sqlite_reads_and_wrong_keys_do_not_wait_for_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "imageserve.db"
    database = Database(f"sqlite:///{path}", lock_timeout=0.2)  # a blocked write fails fast
    clock = FakeClock()
    store = KeyStore(database, clock=clock)
    key, record = store.create("free", "reader")
    store.sync_env_keys({"sk-env": "pro"}, PEPPER)
    ledger = UsageLedger(database, load_settings().tiers, clock=clock)
    authenticator = KeyAuthenticator(store, {"sk-env": "pro"}, pepper=PEPPER, allow_open=False)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process admitting: it holds the write lock
    try:
        with pytest.raises(OperationalError, match="locked"):  # writes do wait for it (and here give up)
            ledger.admit_sync(record.principal(), request(1))
        assert store.find(key) == record
        assert store.has_active_keys()
        assert "reader" in {r.name for r in store.list()}
        today = ledger.today()
        assert ledger.report(record.key_id, today, today)["key"]["name"] == "reader"
        assert ledger.report_all(today, today) == []
        assert (await authenticator.authenticate(f"Bearer {key}", "10.0.0.1")).name == "reader"
        with pytest.raises(AuthenticationError, match="Incorrect API key"):
            await authenticator.authenticate("Bearer isk_wrong", "10.0.0.1")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        database.dispose()


# --- 3. env keys: peppered fingerprints and stored hashes, and the migration from plain SHA-256 ---------


def test_env_key_fingerprints_and_hashes_are_peppered(database: Database) -> None:
    store = KeyStore(database)
    store.sync_env_keys({WEAK_KEY: "free"}, PEPPER)
    plain = hashlib.sha256(WEAK_KEY.encode()).hexdigest()
    with database.read() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.source == "env")).one()
    assert row.key_id == key_fingerprint(WEAK_KEY, PEPPER) == row.name
    assert row.key_id != unpeppered(WEAK_KEY) and plain[:16] not in row.key_id
    assert row.key_hash != plain
    assert key_fingerprint(WEAK_KEY, b"another pepper") != row.key_id
    generated, record = store.create("pro", "generated")  # 256 random bits: a plain SHA-256 is fine
    assert record.key_id == unpeppered(generated)


def test_the_pepper_is_configured_or_generated_once_and_private(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    pepper = key_pepper(settings)
    path = tmp_path / KEY_PEPPER_FILENAME
    assert len(pepper) >= 32 and path.read_bytes() == pepper
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_pepper(settings) == pepper  # kept across restarts
    assert key_pepper(load_settings(data_dir=tmp_path, key_pepper="shared-by-replicas")) == b"shared-by-replicas"
    assert not (tmp_path / "none").exists()
    key_authenticator(load_settings(data_dir=tmp_path / "none"), KeyStore(Database("sqlite://")))
    assert not (tmp_path / "none" / KEY_PEPPER_FILENAME).exists()  # no env keys: no pepper needed


def test_env_key_rows_from_before_the_pepper_are_rekeyed_with_their_usage(database: Database, clock) -> None:
    legacy_id = unpeppered(WEAK_KEY)
    with database.transaction() as conn:  # what an older server wrote
        conn.execute(insert(api_keys).values(key_id=legacy_id, name=legacy_id, source="env", tier="free",
                                             key_hash=hashlib.sha256(WEAK_KEY.encode()).hexdigest(),
                                             created_at=clock() - 10))
        conn.execute(insert(usage_ledger).values(
            request_id="req_old", key_id=legacy_id, ts=clock() - 5, day=utc_day(clock()), model="tiny-flux",
            requested=5, images=5, cost_usd=0.0, status="ok", finished_at=clock() - 4))
    store = KeyStore(database, clock=clock)
    store.sync_env_keys({WEAK_KEY: "free"}, PEPPER)
    store.sync_env_keys({WEAK_KEY: "free"}, PEPPER)  # a second start (or replica) changes nothing
    new_id = key_fingerprint(WEAK_KEY, PEPPER)
    with database.read() as conn:
        ids = set(conn.scalars(select(api_keys.c.key_id)))
        ledger_ids = set(conn.scalars(select(usage_ledger.c.key_id)))
    assert ids == {new_id, ANONYMOUS.key_id} and ledger_ids == {new_id}
    ledger = UsageLedger(database, load_settings().tiers, clock=clock)
    principal = next(r for r in store.list() if r.source == "env").principal()
    with pytest.raises(RateLimitExceeded):  # the 5 images used before the upgrade still count
        ledger.admit_sync(principal, request(1))


# --- 5. env keys may use tiers from the config file; 6. one Authorization parser -----------------------


async def test_env_keys_can_use_configured_tiers(tmp_path: Path) -> None:
    configured = load_settings(tiers=TEAM).tiers
    assert parse_api_keys("k1:team,k2:free", configured) == {"k1": "team", "k2": "free"}
    with pytest.raises(ValueError, match=r"unknown tier \(the part after its last ':'\); configured tiers: "
                                         "enterprise, free, pro, team"):
        parse_api_keys("k1:gold", configured)
    settings = load_settings(data_dir=tmp_path, api_keys="sk-team:team", tiers=TEAM)
    database = Database(database_url(settings))
    try:
        authenticator = key_authenticator(settings, KeyStore(database))
        authenticator.prepare()
        principal = await authenticator.authenticate("Bearer sk-team")
        assert principal.tier == "team"
        limits = UsageLedger(database, settings.tiers).limits_for(principal.tier, None, None)
        assert (limits.per_minute, limits.per_day) == (2, 7)
    finally:
        database.dispose()


@pytest.mark.parametrize(("header", "message"), [
    (None, "Missing API key"), ("", "Missing API key"), ("Basic abc", "Malformed"), ("Bearer  ", "Malformed"),
    ("abc", "Malformed"),
])
def test_one_authorization_parser(header: str | None, message: str) -> None:
    with pytest.raises(AuthenticationError, match=message):
        bearer_token(header)
    assert bearer_token(" bearer  isk_abc ") == "isk_abc"


def test_usage_names_an_env_key_by_its_peppered_fingerprint_over_http(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache, api_keys=f"{WEAK_KEY}:team", tiers=TEAM,
                        key_pepper="test-pepper") as server:
        report = httpx.get(server.api_url + "/usage", headers={"Authorization": f"Bearer {WEAK_KEY}"}).json()
    assert report["key"] == {"name": key_fingerprint(WEAK_KEY, b"test-pepper"), "tier": "team"}
    assert report["limits"]["images_per_minute"] == 2 and report["key"]["name"] != unpeppered(WEAK_KEY)

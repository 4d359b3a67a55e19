"""Shared fixtures and helpers for the keys, quotas and ledger tests (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.types import GenerationRequest
from server.accounts.credentials import Principal
from server.accounts.database import Database
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger
from server.accounts.outcome import Outcome
from server.settings import load_settings
from tests.support.pg_harness import postgres

T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC).timestamp()


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'imageserve.db'}"
    return postgres().create_database()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    yield db
    db.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(database: Database, clock: FakeClock) -> UsageLedger:
    return UsageLedger(database, load_settings().tiers, clock=clock)


_counter = iter(range(10**9))


def request(n: int = 1, model: str = "tiny-flux") -> GenerationRequest:
    return GenerationRequest(request_id=f"req_{next(_counter)}", model=model, prompt="p", n=n, width=256, height=256)


def free_key(database: Database, clock: FakeClock, name: str = "free-key", **limits: int) -> Principal:
    _, record = KeyStore(database, clock=clock).create("free", name, limits.get("per_minute"), limits.get("per_day"))
    return record.principal()


def settle_ok(ledger: UsageLedger, principal: Principal, req: GenerationRequest, cost: float = 0.0) -> None:
    ledger.settle_sync(Outcome(principal, req.request_id, req.model, req.n, req.size, req.quality, cost, 12.5, "ok"),
                       req.n)

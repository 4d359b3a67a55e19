"""The PostgreSQL harness skips where PostgreSQL cannot start, but fails when the run requires it (CI)."""

from __future__ import annotations

import os

import pytest

from tests.support import pg_harness

AT_COLLECTION = os.environ.get(pg_harness.REQUIRE_ENV)  # read before the autouse fixture clears IMAGESERVE_*


@pytest.fixture
def no_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh harness whose server cannot start."""
    monkeypatch.setattr(pg_harness, "_server", None)
    monkeypatch.setattr(pg_harness, "_failure", None)
    monkeypatch.setattr(pg_harness, "start_postgres", lambda: (None, "initdb failed: planted for this test"))


@pytest.mark.usefixtures("no_postgres")
def test_skips_when_postgres_cannot_start_and_is_not_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pg_harness.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="initdb failed: planted"):
        pg_harness.postgres()


@pytest.mark.usefixtures("no_postgres")
@pytest.mark.parametrize("value", ["1", "true"])
def test_fails_with_the_reason_when_postgres_is_required(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(pg_harness.REQUIRE_ENV, value)
    with pytest.raises(pytest.fail.Exception, match="IMAGESERVE_TEST_REQUIRE_POSTGRES=1.*initdb failed: planted"):
        pg_harness.postgres()


@pytest.mark.usefixtures("no_postgres")
def test_an_empty_or_zero_switch_means_not_required(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("", "0"):
        monkeypatch.setenv(pg_harness.REQUIRE_ENV, value)
        with pytest.raises(pytest.skip.Exception):
            pg_harness.postgres()


def test_the_switch_survives_the_isolated_environment() -> None:
    """The autouse fixture clears IMAGESERVE_* server settings; the run's own switch must reach the harness."""
    assert os.environ.get(pg_harness.REQUIRE_ENV) == AT_COLLECTION
    assert all(not name.startswith("IMAGESERVE_") or name.startswith("IMAGESERVE_TEST_") for name in os.environ)

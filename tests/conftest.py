from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import RunningServer, running_server

pytest_plugins = ["tests.support.usage_fixtures"]  # database, clock and ledger fixtures



@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own IMAGESERVE_* settings must not leak into tests. IMAGESERVE_TEST_* are switches for
    the test run itself (e.g. IMAGESERVE_TEST_REQUIRE_POSTGRES), not server settings: they stay."""
    for name in list(os.environ):
        if name.startswith("IMAGESERVE_") and not name.startswith("IMAGESERVE_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole run, so each tiny model is built once."""
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningServer]:
    """A server with one API key and the tiny models, shared by a test module."""
    with running_server(
        data_dir=tmp_path_factory.mktemp("data"),
        model_cache=model_cache,
        api_keys=TEST_KEYS,
        default_model="tiny-flux",
    ) as running:
        yield running


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_KEY}"}

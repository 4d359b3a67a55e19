"""Fixtures for the vendor adapter tests: one emulator per vendor (started once), adapters pointed at them.

Timeouts and backoffs are tiny so failure paths take milliseconds, not minutes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from pipelines.errors import ImageServeError
from pipelines.types import GenerationRequest
from server.api.errors import body_of, headers_of
from server.backends.factory import build_backend
from server.backends.vendors.adapter import VendorBackend
from server.registry import ModelRegistry
from server.settings import Settings
from tests.support.emulators.bfl_api import BFLEmulator
from tests.support.emulators.common import EmulatorServer
from tests.support.emulators.google_api import GoogleEmulator
from tests.support.emulators.ideogram_api import IdeogramEmulator
from tests.support.emulators.openai_api import OpenAIEmulator
from tests.support.logs import assert_not_logged, capture_everything

KEYS = {
    "openai": "sk-test-OPENAI-7c1f0e2d9b",
    "bfl": "bfl-test-key-55aa01",
    "ideogram": "ideo-test-key-9931ff",
    "google": "AIzaTestKey-google-0042",
}
# Short backoffs, but a timeout no answer from a loopback emulator reaches even on a loaded machine: tests count
# upstream calls exactly, and a normal answer timed out (and retried) would add one. Tests of hung upstreams set
# their own short timeout, where every call hangs and the count does not depend on the machine.
FAST = {
    "timeout_seconds": 2.0,
    "max_retries": 2,
    "retry_backoff_seconds": 0.01,
    "retry_backoff_max_seconds": 0.02,
    "rate_limit_retry_after_seconds": 7,
}


@pytest.fixture(autouse=True)
def _keys_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every vendor test, retries and failures included, runs with every logger at DEBUG, and no vendor key
    may show in any record: a key logged at INFO on a retry is as much a leak as one logged at ERROR."""
    capture_everything(caplog)
    yield
    capture_everything(caplog)  # a server started inside the test reset uvicorn's levels; the records stand
    assert_not_logged(caplog, *KEYS.values())


def _serve(emulator: Any) -> Iterator[Any]:
    with EmulatorServer(emulator) as running:
        yield running


@pytest.fixture(scope="session")
def _openai_server() -> Iterator[OpenAIEmulator]:
    yield from _serve(OpenAIEmulator(KEYS["openai"]))


@pytest.fixture(scope="session")
def _bfl_server() -> Iterator[BFLEmulator]:
    yield from _serve(BFLEmulator(KEYS["bfl"]))


@pytest.fixture(scope="session")
def _ideogram_server() -> Iterator[IdeogramEmulator]:
    yield from _serve(IdeogramEmulator(KEYS["ideogram"]))


@pytest.fixture(scope="session")
def _google_server() -> Iterator[GoogleEmulator]:
    yield from _serve(GoogleEmulator(KEYS["google"]))


@pytest.fixture
def openai_emu(_openai_server: OpenAIEmulator) -> OpenAIEmulator:
    _openai_server.reset()
    return _openai_server


@pytest.fixture
def bfl_emu(_bfl_server: BFLEmulator) -> BFLEmulator:
    _bfl_server.reset()
    return _bfl_server


@pytest.fixture
def ideogram_emu(_ideogram_server: IdeogramEmulator) -> IdeogramEmulator:
    _ideogram_server.reset()
    return _ideogram_server


@pytest.fixture
def google_emu(_google_server: GoogleEmulator) -> GoogleEmulator:
    _google_server.reset()
    return _google_server


def make_settings(provider: str, base_url: str, **overrides: Any) -> Settings:
    """Settings with only this provider pointed at an emulator (init values beat any IMAGESERVE_* env)."""
    config: dict[str, Any] = {"api_key": KEYS[provider], "base_url": base_url, **FAST}
    if provider == "bfl":
        config["poll_interval_seconds"] = 0.01
    config.update(overrides)
    return Settings(providers={provider: config})


def request(model: str, *, n: int = 1, size: str = "1024x1024", **fields: Any) -> GenerationRequest:
    width, height = (int(side) for side in size.split("x"))
    return GenerationRequest(
        request_id="req_test",
        model=model,
        prompt=fields.pop("prompt", "a red fox"),
        n=n,
        width=width,
        height=height,
        **fields,
    )


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Any]]:
    """`await backends(model_id, settings)` -> a started backend, closed after the test."""
    started: list[Any] = []

    async def build(model_id: str, settings: Settings) -> VendorBackend:
        spec = ModelRegistry.from_overrides({}).get(model_id)
        assert spec is not None
        backend = build_backend(spec, settings)
        await backend.start()
        started.append(backend)
        return backend  # type: ignore[return-value]

    yield build
    for backend in started:
        await backend.close()


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    """Nothing a client or a log could see of this error holds a key."""
    seen = [str(error), repr(error)]
    if isinstance(error, ImageServeError):
        seen += [json.dumps(body_of(error)), json.dumps(headers_of(error))]
    for secret in secrets:
        for text in seen:
            assert secret not in text

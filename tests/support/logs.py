"""Capture every log record, DEBUG and up, for the tests that prove secrets never reach a log.

A leak at INFO or DEBUG is a leak too (operators run with `IMAGESERVE_LOG_LEVEL=debug`), so these tests
must not stop at WARNING, which is all a bare `caplog` sees through the root logger's default level.
"""

from __future__ import annotations

import logging

import pytest

# The root, our two packages, the server under test and the HTTP clients the adapters use.
LOGGERS = ("", "server", "pipelines", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore")


def capture_everything(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Lower every logger that matters to DEBUG for this test (restored afterwards by caplog).

    Call it again after starting a uvicorn server inside a test: uvicorn sets its own loggers' levels
    when it starts."""
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def assert_not_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No record of this test so far (setup, call, and the current phase), message or traceback, at any level,
    holds any of `secrets`. Safe to call from a fixture's teardown, where `caplog.records` alone is empty."""
    for name in LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() <= logging.DEBUG, f"call capture_everything ({name!r})"
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    formatter = logging.Formatter()
    for record in records:
        text = record.getMessage()
        if record.exc_info:
            text += formatter.formatException(record.exc_info)
        for secret in secrets:
            assert secret not in text, f"a {record.levelname} record of {record.name} holds a secret: {text[:300]}"

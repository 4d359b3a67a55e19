"""Keeping secrets out of what is shown: error messages, logs and reports."""

from __future__ import annotations

from collections.abc import Iterable

MASK = "***"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with each (non-empty) secret replaced by `***`, longest first (one may contain another)."""
    for secret in sorted({secret for secret in secrets if secret}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text

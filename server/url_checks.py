"""Checks of URLs the settings take (vendor base URLs, the public URL, S3 endpoints)."""

from __future__ import annotations

from urllib.parse import urlsplit


def check_http_url(value: str, name: str) -> str:
    """An http(s) URL with a host (and, if given, a numeric port), without a trailing slash."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"{name} has a port that is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host")
    return value.rstrip("/")

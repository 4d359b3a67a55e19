"""Sliding-window limits, as pure functions plus one small in-memory limiter.

Image quotas count images per key in a sliding minute and a sliding day: an image admitted at `t`
counts while `t > now - window` and frees its slot at exactly `t + window`. The counting itself runs
in the database (`server.accounts.ledger`) so that it is exact across replicas; this module decides and
works out how long to wait. (Wrong-key throttling is `server.accounts.throttle`.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from server.errors import RateLimitExceeded

MINUTE = 60.0
DAY = 86_400.0


@dataclass(frozen=True)
class Window:
    name: str  # "minute" or "day"
    seconds: float
    limit: int


@dataclass(frozen=True)
class Limits:
    """Images per minute and per day; `None` means no limit."""

    per_minute: int | None
    per_day: int | None

    @classmethod
    def resolve(cls, tier_limits: tuple[int, int], per_minute: int | None, per_day: int | None) -> Limits:
        """A key's own limits win over its tier's; 0 means no limit."""
        minute = tier_limits[0] if per_minute is None else per_minute
        day = tier_limits[1] if per_day is None else per_day
        return cls(minute or None, day or None)

    def windows(self) -> list[Window]:
        found = [Window("minute", MINUTE, self.per_minute), Window("day", DAY, self.per_day)]
        return [w for w in found if w.limit is not None]  # type: ignore[misc]


def seconds_until_fits(events: Iterable[tuple[float, int]], needed: int, window: Window, now: float) -> float | None:
    """Seconds until `needed` more images fit in `window`, given the (time, images) admitted so far.

    0 when they fit now; None when they never can (`needed` is above the limit itself).
    """
    if needed > window.limit:
        return None
    live = sorted((ts, images) for ts, images in events if ts > now - window.seconds and images > 0)
    excess = sum(images for _, images in live) + needed - window.limit
    if excess <= 0:
        return 0.0
    for ts, images in live:
        excess -= images
        if excess <= 0:
            return max(0.0, ts + window.seconds - now)
    return window.seconds  # pragma: no cover - unreachable while needed <= limit


def refusal(window: Window, used: int, needed: int, wait: float | None, tier: str) -> RateLimitExceeded:
    """The 429 for a request that does not fit. A daily wait is too long for clients to retry on their own."""
    per = "per minute" if window.name == "minute" else "per day"
    if wait is None:
        return RateLimitExceeded(
            f"Rate limit exceeded for image generation: this request asks for {needed} images but this key "
            f"(tier {tier}) allows at most {window.limit} images {per}. Ask for fewer images.",
            retry_after=window.seconds, should_retry=False)
    return RateLimitExceeded(
        f"Rate limit exceeded for image generation: this key (tier {tier}) allows {window.limit} images {per}; "
        f"{used} used in the last {window.name}, this request asks for {needed}. "
        f"Retry in {max(1, int(-(-wait // 1)))} s.",
        retry_after=wait, should_retry=window.name == "minute")


def tier_limits(tiers: Mapping[str, object], tier: str) -> tuple[int, int] | None:
    """(per minute, per day) for a tier from the settings' `tiers` table, or None if it is not there."""
    settings = tiers.get(tier)
    if settings is None:
        return None
    return int(settings.images_per_minute), int(settings.images_per_day)  # type: ignore[attr-defined]

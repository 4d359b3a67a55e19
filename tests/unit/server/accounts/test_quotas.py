"""Sliding-window arithmetic and the tier settings: pure, no database."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.accounts.quotas import DAY, MINUTE, Limits, Window, refusal, seconds_until_fits
from server.api.errors import body_of, headers_of, status_of
from server.settings import load_settings


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MINUTE_5 = Window("minute", MINUTE, 5)


@pytest.mark.parametrize(("events", "needed", "now", "expected"), [
    ([], 5, 100.0, 0.0),  # empty window: fits
    ([(90.0, 4)], 1, 100.0, 0.0),  # exactly at the limit: fits
    ([(90.0, 5)], 1, 100.0, 50.0),  # full: wait until the 5 images from t=90 leave at t=150
    ([(50.0, 2), (70.0, 3)], 2, 100.0, 10.0),  # the 2 from t=50 free enough at t=110
    ([(50.0, 2), (70.0, 3)], 3, 100.0, 30.0),  # need 3 slots: both events must go, the last at t=130
    ([(30.0, 5), (70.0, 3)], 3, 100.0, 30.0),  # t=30 is already outside the window: only t=70 counts
    ([(90.0, 3)], 6, 100.0, None),  # more than the limit itself: never
])
def test_seconds_until_fits(events, needed, now, expected) -> None:
    assert seconds_until_fits(events, needed, MINUTE_5, now) == expected


def test_an_image_leaves_the_window_exactly_one_window_later() -> None:
    assert seconds_until_fits([(0.0, 5)], 1, MINUTE_5, 59.999) == pytest.approx(0.001)
    assert seconds_until_fits([(0.0, 5)], 1, MINUTE_5, 60.0) == 0.0


def test_limits_resolve_key_overrides_and_zero_means_unlimited() -> None:
    assert Limits.resolve((5, 50), None, None) == Limits(5, 50)
    assert Limits.resolve((5, 50), 7, None) == Limits(7, 50)
    assert Limits.resolve((5, 50), 0, 3) == Limits(None, 3)
    assert Limits.resolve((0, 0), None, None).windows() == []
    assert [w.name for w in Limits(5, 50).windows()] == ["minute", "day"]


def test_refusal_headers_minute_vs_day() -> None:
    minute = refusal(Window("minute", MINUTE, 5), 5, 1, 12.3, "free")
    assert status_of(minute) == 429 and minute.retry_after == 13
    assert headers_of(minute)["Retry-After"] == "13" and headers_of(minute)["retry-after-ms"] == "12300"
    assert "x-should-retry" not in headers_of(minute)
    body = body_of(minute)["error"]
    assert body["type"] == "rate_limit_exceeded" and body["retry_after"] == 13
    assert "5 images per minute" in body["message"]
    day = refusal(Window("day", DAY, 50), 50, 1, 3600.0, "free")
    assert headers_of(day)["x-should-retry"] == "false" and day.retry_after == 3600
    never = refusal(Window("minute", MINUTE, 5), 0, 6, None, "free")
    assert headers_of(never)["x-should-retry"] == "false" and "at most 5" in never.message


def test_tier_defaults_and_partial_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiers = load_settings().tiers
    assert (tiers["free"].images_per_minute, tiers["free"].images_per_day) == (5, 50)
    assert (tiers["pro"].images_per_minute, tiers["pro"].images_per_day) == (30, 1000)
    assert (tiers["enterprise"].images_per_minute, tiers["enterprise"].images_per_day) == (0, 0)
    config = tmp_path / "imageserve.toml"
    config.write_text("[tiers.free]\nimages_per_minute = 10\n\n[tiers.team]\nimages_per_minute = 100\n"
                      "images_per_day = 2000\n\n[tiers.enterprise]\nimages_per_day = 100000\n")
    tiers = load_settings(config).tiers
    assert (tiers["free"].images_per_minute, tiers["free"].images_per_day) == (10, 50)  # day kept
    assert (tiers["team"].images_per_minute, tiers["team"].images_per_day) == (100, 2000)
    assert tiers["enterprise"].images_per_day == 100000 and tiers["pro"].images_per_day == 1000
    monkeypatch.setenv("IMAGESERVE_TIERS__PRO__IMAGES_PER_DAY", "5000")
    tiers = load_settings().tiers
    assert (tiers["pro"].images_per_minute, tiers["pro"].images_per_day) == (30, 5000)

"""HL7 times against the standard library's calendar, including the per-day cache."""

from __future__ import annotations

import calendar
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aki_alert import timeutil
from aki_alert.timeutil import parse_hl7_time

digits = st.text(alphabet="0123456789", min_size=12, max_size=14).filter(
    lambda t: len(t) in (12, 14) and t[:4] != "0000")     # datetime has no year 0


def reference(text: str) -> int | None:
    """Seconds by datetime (leap second 60 allowed, as in HL7), or None for no such time."""
    fields = [int(text[i:i + w]) for i, w in ((0, 4), (4, 2), (6, 2), (8, 2), (10, 2))]
    sec = int(text[12:14] or 0)
    try:
        dt = datetime(*fields)
    except ValueError:
        return None
    return None if sec > 60 else calendar.timegm(dt.timetuple()) + sec


@given(st.lists(digits, min_size=1, max_size=20))
def test_agrees_with_the_calendar_whatever_the_cache_holds(texts):
    for text in texts:
        want = reference(text)
        if want is None:
            with pytest.raises(ValueError):
                parse_hl7_time(text)
        else:
            assert parse_hl7_time(text) == want


def test_a_cached_day_still_rejects_a_bad_time_of_day():
    assert parse_hl7_time("20240229235959") == calendar.timegm((2024, 2, 29, 23, 59, 59))
    for bad in ("202402292400", "20240229236000", "20240229235961"):
        with pytest.raises(ValueError):
            parse_hl7_time(bad)


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(timeutil, "_MIDNIGHTS_MAX", 3)
    timeutil._midnights.clear()
    for day in range(1, 10):
        parse_hl7_time(f"202401{day:02d}0000")
        assert len(timeutil._midnights) <= 3

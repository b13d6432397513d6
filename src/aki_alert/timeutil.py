"""Hospital timestamps as integer seconds.

The feed's times carry no zone; they are wall-clock times of one hospital. We map them to
seconds on a proleptic UTC-like axis so that differences are exact and cheap, and keep the
original text wherever it is echoed back (the page body).
"""

from __future__ import annotations

DAY = 86_400
HOUR = 3_600


def _days_from_civil(y: int, m: int, d: int) -> int:
    # Howard Hinnant's days_from_civil: days since 1970-01-01, valid for any Gregorian date.
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _checked(y: int, mo: int, d: int, h: int, mi: int, s: int) -> int:
    if not (1 <= mo <= 12 and h < 24 and mi < 60 and s < 61):
        raise ValueError("out-of-range date or time")
    leap = mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not 1 <= d <= _MONTH_DAYS[mo - 1] + leap:
        raise ValueError("no such day in that month")
    return _days_from_civil(y, mo, d) * DAY + h * HOUR + mi * 60 + s


# Seconds at midnight of each `YYYYMMDD` seen lately: a day's messages share it, and it is the
# dearer half of parsing a time (the service parses one or two per message).
_midnights: dict[str, int] = {}
_MIDNIGHTS_MAX = 4_096


def parse_hl7_time(text: str) -> int:
    """Seconds for an HL7 `YYYYMMDDHHMM[SS]` time (12 or 14 digits)."""
    n = len(text)
    if (n != 14 and n != 12) or not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected a 12- or 14-digit time, got {text!r}")
    h, mi, s = int(text[8:10]), int(text[10:12]), int(text[12:14]) if n == 14 else 0
    midnight = _midnights.get(text[:8])
    if midnight is None or h >= 24 or mi >= 60 or s >= 61:
        midnight = _checked(int(text[0:4]), int(text[4:6]), int(text[6:8]), h, mi, s) - (
            h * HOUR + mi * 60 + s)
        if len(_midnights) >= _MIDNIGHTS_MAX:
            _midnights.clear()
        _midnights[text[:8]] = midnight
    return midnight + h * HOUR + mi * 60 + s


def parse_hl7_date(text: str) -> int:
    """Seconds at midnight of an HL7 `YYYYMMDD` date (a date of birth)."""
    if len(text) < 8 or not (text[:8].isascii() and text[:8].isdigit()):
        raise ValueError(f"expected a YYYYMMDD date, got {text!r}")
    return _checked(int(text[0:4]), int(text[4:6]), int(text[6:8]), 0, 0, 0)


def parse_csv_time(text: str) -> int:
    """Seconds for a data file's `YYYY-MM-DD HH:MM[:SS]` time."""
    t = text.strip()
    if (len(t) < 16 or not t.isascii() or t[4] != "-" or t[7] != "-" or t[10] not in " T"
            or t[13] != ":"):
        raise ValueError(f"expected YYYY-MM-DD HH:MM:SS, got {text!r}")
    sec = int(t[17:19]) if len(t) >= 19 else 0
    return _checked(int(t[0:4]), int(t[5:7]), int(t[8:10]), int(t[11:13]), int(t[14:16]), sec)


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719_468
    era = (z if z >= 0 else z - 146_096) // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def format_hl7_time(seconds: int) -> str:
    """`YYYYMMDDHHMMSS` for seconds on the same axis."""
    days, rem = divmod(seconds, DAY)
    y, m, d = _civil_from_days(days)
    return f"{y:04d}{m:02d}{d:02d}{rem // HOUR:02d}{rem % HOUR // 60:02d}{rem % 60:02d}"


def format_csv_time(seconds: int) -> str:
    """`YYYY-MM-DD HH:MM:SS` for seconds on the same axis."""
    s = format_hl7_time(seconds)
    return f"{s[0:4]}-{s[4:6]}-{s[6:8]} {s[8:10]}:{s[10:12]}:{s[12:14]}"


def age_years(birth: int, at: int) -> float:
    """Age in years (365.25-day years) at time `at`."""
    return (at - birth) / (365.25 * DAY)

"""The one feature function, shared by training (`aki-alert train`) and serving (`ModelDetector`).

Features are mostly relative (ratios and rises against the patient's own earlier results, as the
NHS algorithm's RV1/RV2), so they carry over between populations whose absolute creatinine
levels drift. Everything missing is explicit: a ratio without a baseline is 1.0 (no change) with
a `has_*` flag beside it, an unknown age is -1 with `has_age` = 0, an unknown sex is 0 with
`has_sex` = 0, so both a linear model and trees can tell "unknown" from a value.

Pure Python, no numpy: this runs once per result on the service's hot path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

from ..timeutil import DAY, HOUR
from . import LOOKBACK
from .nhs import median

FEATURES_F1: tuple[str, ...] = (
    "value",  # C1, the new result (µmol/L)
    "has_prev",  # any result in the previous 365 days
    "has_rv1",  # any result in the previous 0-7 days
    "has_rv2",  # any result 8-365 days before
    "rv1_ratio",  # C1 / lowest result of the previous 0-7 days (RV1)
    "rv2_ratio",  # C1 / median of results 8-365 days before (RV2)
    "nhs_ratio",  # the higher of the two, as the NHS algorithm
    "min_ratio",  # C1 / lowest result of the previous 365 days
    "median_ratio",  # C1 / median of the previous 365 days
    "last_ratio",  # C1 / the latest previous result
    "rise_48h",  # C1 - lowest result of the previous 48 h (µmol/L)
    "rise_7d",  # C1 - RV1 (µmol/L)
    "n_prev",  # results in the previous 365 days
    "n_7d",  # results in the previous 7 days
    "n_48h",  # results in the previous 48 h
    "days_since_last",  # days since the latest previous result (365 without one)
    "prev_cv",  # coefficient of variation of the previous results (0 with fewer than 2)
    "age",  # years at the time of the result, -1 unknown
    "has_age",
    "sex_f",  # 1 female, 0 male or unknown
    "has_sex",
)

# The demographic features, and their values for a patient whose admission was never seen.
DEMOGRAPHICS = ("age", "has_age", "sex_f", "has_sex")
UNKNOWN_DEMOGRAPHICS = (-1.0, 0.0, 0.0, 0.0)


def _ratio(value: float, base: float | None) -> float:
    return value / base if base is not None and base > 0.0 else 1.0


def features_f1(
    times: Sequence[int],
    values: Sequence[float],
    time: int,
    value: float,
    age: float | None,
    sex: str | None,
) -> list[float]:
    """Feature vector (in FEATURES_F1 order) of a result at `time`, from results strictly before it.

    `times` ascending seconds with `values` beside them; results at or after `time` are ignored.
    `age` in years or None; `sex` "M"/"F" (any case) or None.
    """
    end = bisect_left(times, time)
    start = bisect_left(times, time - LOOKBACK, 0, end)
    week = bisect_left(times, time - 7 * DAY, start, end)
    two_days = bisect_left(times, time - 48 * HOUR, week, end)
    prev = values[start:end]
    n = len(prev)
    recent = values[week:end]
    older = values[start:week]
    rv1 = min(recent) if recent else None
    rv2 = median(older) if older else None
    rv1_ratio = _ratio(value, rv1)
    rv2_ratio = _ratio(value, rv2)
    if n:
        lowest = min(prev)
        mean = sum(prev) / n
        var = sum((x - mean) ** 2 for x in prev) / n if n > 1 else 0.0
        cv = var**0.5 / mean if mean > 0.0 else 0.0
        min_ratio = _ratio(value, lowest)
        median_ratio = _ratio(value, median(prev))
        last_ratio = _ratio(value, prev[-1])
        since = min((time - times[end - 1]) / DAY, 365.0)
    else:
        cv = 0.0
        min_ratio = median_ratio = last_ratio = 1.0
        since = 365.0
    s = sex.upper() if sex else None
    return [
        value,
        1.0 if n else 0.0,
        1.0 if recent else 0.0,
        1.0 if older else 0.0,
        rv1_ratio,
        rv2_ratio,
        max(rv1_ratio if recent else 0.0, rv2_ratio if older else 0.0) if n else 1.0,
        min_ratio,
        median_ratio,
        last_ratio,
        value - min(values[two_days:end]) if two_days < end else 0.0,
        value - rv1 if rv1 is not None else 0.0,
        float(n),
        float(end - week),
        float(end - two_days),
        since,
        cv,
        float(age) if age is not None else -1.0,
        1.0 if age is not None else 0.0,
        1.0 if s == "F" else 0.0,
        1.0 if s in ("F", "M") else 0.0,
    ]


# f2 (models v2 on): f1 plus features that no change of assay moves much. Ratios are unmoved
# by a multiplicative change (×1.15), rises by an additive one (+15 µmol/L); the NHS stage
# (computed here exactly as `nhs.nhs_stage`) gives the model the reference's own verdict.
FEATURES_F2: tuple[str, ...] = FEATURES_F1 + (
    "rise_rv2",  # C1 - RV2 (µmol/L), 0 without RV2
    "rise_min",  # C1 - lowest result of the previous 365 days (µmol/L), 0 without one
    "rise_last",  # C1 - the latest previous result (µmol/L), 0 without one
    "nhs_stage",  # the NHS England stage 0-3 of the result (nhs.nhs_stage)
    "nhs_rise_48h",  # 1 when C1 is more than 26 µmol/L above a result of the previous 48 h
)


def features_f2(
    times: Sequence[int],
    values: Sequence[float],
    time: int,
    value: float,
    age: float | None,
    sex: str | None,
) -> list[float]:
    """Feature vector (in FEATURES_F2 order): f1's, then the assay-robust rises and the NHS
    stage. Same conventions as `features_f1`."""
    x = features_f1(times, values, time, value, age, sex)
    if not x[1]:  # no result in the past year: no baseline, no rise, no stage
        return x + [0.0, 0.0, 0.0, 0.0, 0.0]
    # Baselines back from f1's ratios (value / ratio; a ratio is 1.0 without its baseline).
    rise_rv2 = value - value / x[5] if x[3] else 0.0
    ratio = x[6]  # the NHS ratio: the higher of C1/RV1 and C1/RV2, of those that exist
    rose = 1.0 if x[10] > 26.0 else 0.0
    if ratio >= 1.5:
        stage = 3.0 if ratio >= 3.0 or value > 354.0 else 2.0 if ratio >= 2.0 else 1.0
    else:
        stage = rose
    return x + [rise_rv2, value - value / x[7], value - value / x[9], stage, rose]


# Every feature set a model may have been trained on, by version: a model names its version and
# is served with that function, so older artifacts keep loading after a new set is added.
FEATURE_SETS: dict[str, tuple[tuple[str, ...], Callable[..., list[float]]]] = {
    "f1": (FEATURES_F1, features_f1),
    "f2": (FEATURES_F2, features_f2),
}
# What `aki-alert train` builds now. Bump (adding a set) when the meaning of any feature changes:
# a model trained on other features refuses to load unless its version is in FEATURE_SETS.
FEATURE_VERSION = "f2"
FEATURES = FEATURES_F2
features = features_f2

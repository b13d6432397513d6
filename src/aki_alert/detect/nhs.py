"""The NHS England AKI algorithm (the reference detector), as written in the hospital contract §7.

C1 is the new result. RV1 is the lowest result of the previous 0–7 days; RV2 the median of
results 8–365 days ago. The ratio is C1/RV1 or C1/RV2, the higher where both exist.
ratio >= 3, or C1 > 354 µmol/L with ratio >= 1.5: stage 3; ratio >= 2: stage 2;
ratio >= 1.5: stage 1.
Without such a ratio, a rise of more than 26 µmol/L over any result of the previous 48 hours is
stage 1. No result in the previous 365 days: no ratio, no alert (reference-range check only).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..timeutil import DAY, HOUR
from . import LOOKBACK, Judgement, Patient

VERSION = "nhs-england-2014"


@dataclass(frozen=True, slots=True)
class NhsResult:
    stage: int                # 0 = no AKI
    baseline: float | None    # the RV that gave the ratio
    ratio: float | None


def median(xs: Iterable[float]) -> float:
    s = sorted(xs)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def nhs_stage(times: Sequence[int], values: Sequence[float], time: int,
              value: float) -> NhsResult:
    """Stage of a result at `time` given earlier results (ascending; later ones are ignored)."""
    end = bisect_left(times, time)
    start = bisect_left(times, time - LOOKBACK, 0, end)
    if start == end:
        return NhsResult(0, None, None)
    week = bisect_left(times, time - 7 * DAY, start, end)
    recent = values[week:end]          # 0–7 days before
    older = values[start:week]         # 8–365 days before (more than 7 days ago)
    rv1 = min(recent) if recent else None
    rv2 = median(older) if older else None
    ratio = baseline = None
    for rv in (rv1, rv2):
        if rv is not None and rv > 0 and (ratio is None or value / rv > ratio):
            ratio, baseline = value / rv, rv
    if ratio is not None and ratio >= 1.5:
        if ratio >= 3.0 or value > 354.0:
            stage = 3
        elif ratio >= 2.0:
            stage = 2
        else:
            stage = 1
        return NhsResult(stage, baseline, ratio)
    two_days = bisect_left(times, time - 48 * HOUR, start, end)
    if two_days < end and value - min(values[two_days:end]) > 26.0:
        return NhsResult(1, baseline, ratio)
    return NhsResult(0, baseline, ratio)


# --- which rule gave the stage (explanations; not on the hot path) ---------------------------

# The rules, as an explanation names them. `judge` does not use these: `nhs_stage` keeps its
# literal thresholds (a module global is a dictionary look-up per result on the hot path);
# tests/unit/test_nhs_rules.py checks that `nhs_reason` agrees with it on every input.
RATIO, ABSOLUTE, RISE = "ratio", "absolute", "rise"
ABSOLUTE_LIMIT = 354.0          # µmol/L: above it, a ratio >= 1.5 is stage 3
RISE_LIMIT = 26.0               # µmol/L over the lowest result of the previous 48 hours
RISE_WINDOW = 48 * HOUR


def ratio_stage(ratio: float | None) -> int:
    """The stage the ratio alone gives: 3 (>= 3), 2 (>= 2), 1 (>= 1.5) or 0."""
    if ratio is None:
        return 0
    return 3 if ratio >= 3.0 else 2 if ratio >= 2.0 else 1 if ratio >= 1.5 else 0


def stage_rule(stage: int | None, ratio: float | None) -> str | None:
    """Which rule gave `stage` to a result whose NHS ratio (C1/RV1 or C1/RV2) is `ratio`: a
    page's stored explanation is enough.

    RATIO: the ratio's own stage. ABSOLUTE: stage 3 with a ratio of 1.5 to 3, which only
    C1 > 354 µmol/L gives. RISE: stage 1 without a ratio of 1.5, which only the 48-hour rise
    of more than 26 µmol/L gives. None: no stage, or a stage this ratio cannot have (not the
    NHS algorithm's)."""
    if not stage:
        return None
    by_ratio = ratio_stage(ratio)
    if by_ratio == stage:
        return RATIO
    if stage == 3 and by_ratio in (1, 2):
        return ABSOLUTE
    if stage == 1 and by_ratio == 0:
        return RISE
    return None


@dataclass(frozen=True, slots=True)
class NhsReason:
    """`nhs_stage` with its workings: which rule gave the stage and from what."""

    stage: int
    rule: str | None                    # RATIO, ABSOLUTE, RISE; None for stage 0
    baseline: float | None              # the RV that gave the ratio
    ratio: float | None
    window: str | None                  # "RV1" or "RV2": which reference value the baseline is
    rise_from: tuple[int, float] | None  # the lowest result of the previous 48 hours


def nhs_reason(times: Sequence[int], values: Sequence[float], time: int,
               value: float) -> NhsReason:
    """The NHS stage of a result at `time` (as `nhs_stage`), the rule that gave it, the
    reference value of the ratio and the lowest result of the previous 48 hours."""
    end = bisect_left(times, time)
    start = bisect_left(times, time - LOOKBACK, 0, end)
    if start == end:
        return NhsReason(0, None, None, None, None, None)
    week = bisect_left(times, time - 7 * DAY, start, end)
    ratio = baseline = window = None
    for name, lo, hi in (("RV1", week, end), ("RV2", start, week)):
        if lo == hi:
            continue
        rv = min(values[lo:hi]) if name == "RV1" else median(values[lo:hi])
        if rv > 0 and (ratio is None or value / rv > ratio):
            ratio, baseline, window = value / rv, rv, name
    two_days = bisect_left(times, time - RISE_WINDOW, start, end)
    rise_from = None
    if two_days < end:
        i = min(range(two_days, end), key=lambda k: (values[k], times[k]))
        rise_from = (times[i], values[i])
    stage = ratio_stage(ratio)
    if stage and value > ABSOLUTE_LIMIT:
        stage = 3
    if not stage and rise_from is not None and value - rise_from[1] > RISE_LIMIT:
        stage = 1
    return NhsReason(stage, stage_rule(stage, ratio), baseline, ratio, window, rise_from)


class NhsDetector:
    """Pages on any NHS stage (1–3), the full algorithm; `min_stage=2` is the hospital's variant."""

    name = "nhs"
    version = VERSION

    def __init__(self, min_stage: int = 1) -> None:
        self.min_stage = min_stage

    def judge(self, patient: Patient, time: int, value: float) -> Judgement:
        r = nhs_stage(patient.times, patient.values, time, value)
        return Judgement(
            positive=r.stage >= self.min_stage,
            score=float(r.stage),
            threshold=float(self.min_stage),
            detector=self.name,
            version=self.version,
            stage=r.stage,
            baseline=r.baseline,
            ratio=r.ratio,
        )

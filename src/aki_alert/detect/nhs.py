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

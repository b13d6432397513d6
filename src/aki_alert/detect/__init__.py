"""Detectors judge one new creatinine result against a patient's earlier results.

A detector is a pure object: `judge(patient, time, value)` reads nothing but its arguments.
`patient.times` / `patient.values` are the patient's earlier results in ascending time order;
results at or after `time` must be ignored by the detector (the caller may hold them), and so
must results more than LOOKBACK before it (the caller may not hold those).
"""

from __future__ import annotations

from collections.abc import MutableSequence
from dataclasses import dataclass, field
from typing import Protocol

from ..timeutil import DAY

# How far back a detector reads: the NHS algorithm's RV2 window, and the model's features.
LOOKBACK = 365 * DAY


@dataclass(slots=True)
class Patient:
    """What the service knows of one patient: results in time order, demographics if admitted.
    The results are lists, or typed arrays where many patients are held (the service's)."""

    mrn: str
    times: MutableSequence[int] = field(default_factory=list)    # seconds, ascending
    values: MutableSequence[float] = field(default_factory=list)  # µmol/L, same order
    birth: int | None = None                          # seconds at midnight of the date of birth
    sex: str | None = None                            # "M" or "F"


@dataclass(slots=True)
class Judgement:
    """A detector's verdict on one result, with what a clinician needs to see why. Not frozen:
    one is made per result, and a frozen dataclass takes 2.5× as long to build."""

    positive: bool
    score: float        # the detector's score: the NHS stage, or the model's probability
    threshold: float    # positive when score >= threshold
    detector: str       # "nhs" or "model"
    version: str        # algorithm or model version
    stage: int | None   # NHS stage 0–3, to explain a page (the model: its positives only)
    baseline: float | None  # the NHS baseline used (RV1 or RV2), None without one
    ratio: float | None     # value / baseline


class Detector(Protocol):
    name: str
    version: str

    def judge(self, patient: Patient, time: int, value: float) -> Judgement: ...

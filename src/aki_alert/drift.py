"""An unlabelled drift signal: is the population the model judges still the one it was trained on?

Labels arrive late (or never); a change of assay, of hospital or of case mix shows at once in
what the model sees and says. The model artifact stores, from training time, the histogram of
its score and of creatinine over every result of the training cohort judged in order, and the
share of those results it judged positive (`reference` in model.json, `train.reference`). The
service counts its own results into the same bins over a rolling window (the last
`(SLOTS - 1) × PER_SLOT` to `SLOTS × PER_SLOT` results judged: SLOTS - 1 full slots and the
one filling) and exports, computed at scrape time:

- `aki_drift_psi{quantity="score"|"creatinine"}`: population stability index of the window
  against the training distribution, PSI = Σ (a − e) ln(a / e) over the bins (each share
  floored at FLOOR so an empty bin is finite). Under 0.1 the populations are alike; 0.1–0.25 a
  moderate shift; over 0.25 a major one (the usual reading; `docs/runbook.md#akimodeldrift`).
- `aki_drift_positive_rate` and `aki_drift_expected_positive_rate`: the share of the window's
  results judged positive, and the training share.
- `aki_drift_window_results`: how many results the window holds (the rules wait for it to fill).

Per result: two bisects and three additions (`observe`, once the result's message is committed:
counted.py); PSI is computed only when scraped.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily

SLOTS = 10
PER_SLOT = 500
FLOOR = 1e-4
# Bins of the reference histograms, chosen at training time and stored with them. The score
# bins are finer near 0 and 1, where most results fall; creatinine's are those of
# aki_creatinine_umol_per_litre.
SCORE_BOUNDS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.99)
CREATININE_BOUNDS = (40.0, 60.0, 80.0, 100.0, 120.0, 150.0, 200.0, 300.0, 500.0, 1000.0)


def histogram(values: Sequence[float], bounds: Sequence[float]) -> list[float]:
    """Shares of `values` in the bins `bounds` define (a value equal to a bound goes below it,
    as Prometheus' `le`); len(bounds) + 1 shares summing to 1."""
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect_left(bounds, v)] += 1
    n = len(values) or 1
    return [c / n for c in counts]


def psi(actual: Sequence[float], expected: Sequence[float]) -> float:
    """Population stability index of two histograms (counts or shares, same bins)."""
    ta, te = sum(actual) or 1.0, sum(expected) or 1.0
    out = 0.0
    for a, e in zip(actual, expected, strict=True):
        a, e = max(a / ta, FLOOR), max(e / te, FLOOR)
        out += (a - e) * math.log(a / e)
    return out


class _Window:
    """Bin counts of one quantity over the last observations, in slots of PER_SLOT."""

    __slots__ = ("bounds", "slots")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.slots = [[0] * (len(self.bounds) + 1)]

    def counts(self) -> list[int]:
        return [sum(c) for c in zip(*self.slots, strict=True)]


class DriftMonitor:
    """The rolling window of the service's judged results, against a model's `reference`."""

    def __init__(self, reference: dict[str, Any], slots: int = SLOTS,
                 per_slot: int = PER_SLOT) -> None:
        self.reference = reference
        self.max_slots, self.per_slot = slots, per_slot
        self._score = _Window(reference["score"]["bounds"])
        self._creatinine = _Window(reference["creatinine"]["bounds"])
        self._positives = [0]
        self._n = 0  # results in the current slot
        self._cur_score = self._score.slots[-1]
        self._cur_creatinine = self._creatinine.slots[-1]

    def observe(self, values: Iterable[float], scores: Iterable[float],
                positives: Iterable[bool]) -> None:
        """Counts judged results, in order: each one's creatinine `values`, score and whether
        positive (the per-result cost: two bisects, three additions)."""
        score_bounds, creatinine_bounds = self._score.bounds, self._creatinine.bounds
        for value, score, positive in zip(values, scores, positives, strict=True):
            self._cur_score[bisect_left(score_bounds, score)] += 1
            self._cur_creatinine[bisect_left(creatinine_bounds, value)] += 1
            if positive:
                self._positives[-1] += 1
            self._n += 1
            if self._n >= self.per_slot:
                self._rotate()

    def _rotate(self) -> None:
        for w in (self._score, self._creatinine):
            w.slots.append([0] * (len(w.bounds) + 1))
            if len(w.slots) > self.max_slots:
                del w.slots[0]
        self._positives.append(0)
        if len(self._positives) > self.max_slots:
            del self._positives[0]
        self._cur_score = self._score.slots[-1]
        self._cur_creatinine = self._creatinine.slots[-1]
        self._n = 0

    def results(self) -> int:
        return sum(self._score.counts())

    def snapshot(self) -> dict[str, float]:
        """PSI of score and creatinine, the window's positive rate and the expected one."""
        n = self.results()
        ref = self.reference
        return {
            "psi_score": psi(self._score.counts(), ref["score"]["fractions"]) if n else 0.0,
            "psi_creatinine": (
                psi(self._creatinine.counts(), ref["creatinine"]["fractions"]) if n else 0.0
            ),
            "positive_rate": sum(self._positives) / n if n else 0.0,
            "expected_positive_rate": float(ref["positive_rate"]),
            "results": float(n),
        }


class DriftCollector:
    """Exports the current monitor's figures at scrape time: the families without samples while
    there is none (the NHS detector, or a model artifact without a reference)."""

    # Each family's labels (tests/deploy checks the rules select only on these).
    LABELS: dict[str, tuple[str, ...]] = {
        "aki_drift_psi": ("quantity",),
        "aki_drift_positive_rate": (),
        "aki_drift_expected_positive_rate": (),
        "aki_drift_window_results": (),
    }
    HELP = {
        "aki_drift_psi": "Population stability index of the last results judged against the "
        "model's training distribution, by quantity: score, creatinine (0.1 moderate, 0.25 "
        "major shift)",
        "aki_drift_positive_rate": "Share of the last results judged (the drift window) that "
        "were positive",
        "aki_drift_expected_positive_rate": "Share of results the model judged positive on its "
        "training cohort",
        "aki_drift_window_results": f"Results in the drift window (at most {SLOTS * PER_SLOT})",
    }

    def __init__(self) -> None:
        self.monitor: DriftMonitor | None = None

    def describe(self) -> list:
        return []

    def collect(self) -> list[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(name, self.HELP[name], labels=list(labels))
            for name, labels in self.LABELS.items()
        }
        m = self.monitor
        if m is not None:
            s = m.snapshot()
            families["aki_drift_psi"].add_metric(["score"], s["psi_score"])
            families["aki_drift_psi"].add_metric(["creatinine"], s["psi_creatinine"])
            families["aki_drift_positive_rate"].add_metric([], s["positive_rate"])
            families["aki_drift_expected_positive_rate"].add_metric(
                [], s["expected_positive_rate"])
            families["aki_drift_window_results"].add_metric([], s["results"])
        return list(families.values())

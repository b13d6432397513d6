"""Which shipped model serves this hospital: the default, unless its history shows another
population.

The default model (`models/DEFAULT`) is the best on the hospital it was trained on, and leans on
what is particular to it (absolute creatinine levels, age); at a hospital whose creatinine runs
differently it can fall below the NHS algorithm (docs/model-card.md, *Under shift*), where the
shift-robust model (ratios and rises only) holds up. The history file, imported before the
first message, shows which hospital this is: the population stability index of its creatinine
against the default model's training distribution is ~0.01 for the training hospital's own
history and 0.8-0.9 for another population. Over SHIFT_PSI (the threshold of the AkiModelDrift
alert) the service serves the robust model from the first message.

The decision rests on the state's record of the history's creatinine (meta
`history_creatinine`: bucket counts, written when the history is imported), so every restart
and every replica decides the same; it is logged, and exported as `aki_history_creatinine_psi`
and the model's version. A shift that starts after the history (a new assay) is the drift
alerts' to report (drift.py): the model served does not change under a running service.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .config import ROBUST as ROBUST   # the shipped shift-robust model
from .drift import CREATININE_BOUNDS, psi

log = logging.getLogger(__name__)

SHIFT_PSI = 0.25
# Fewer history results than this tell nothing: the PSI of a small sample of the training
# population itself is noise (about (bins - 1) / n, and far more for a handful of patients).
MIN_RESULTS = 1000
META_KEY = "history_creatinine"


class CreatinineCounts:
    """Counts of creatinine values per CREATININE_BOUNDS bin (the bins of drift.histogram)."""

    def __init__(self, counts: list[int] | None = None) -> None:
        self.counts = counts if counts is not None else [0] * (len(CREATININE_BOUNDS) + 1)

    def add(self, values: Iterable[float]) -> "CreatinineCounts":
        counts, bounds = self.counts, CREATININE_BOUNDS
        for v in values:
            counts[bisect_left(bounds, v)] += 1
        return self

    def counted(self, rows: Iterable[tuple[str, int, float]]
                ) -> Iterator[tuple[str, int, float]]:
        """`rows` (mrn, time, value) passed through, each value counted."""
        counts, bounds = self.counts, CREATININE_BOUNDS
        for row in rows:
            counts[bisect_left(bounds, row[2])] += 1
            yield row

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_json(self) -> str:
        return json.dumps({"bounds": list(CREATININE_BOUNDS), "counts": self.counts})

    @classmethod
    def from_json(cls, text: str | None) -> "CreatinineCounts | None":
        """The counts a state recorded; None when absent or for other bucket bounds."""
        try:
            doc = json.loads(text or "")
            counts = [int(c) for c in doc["counts"]]
        except (ValueError, TypeError, KeyError):
            return None
        if doc.get("bounds") != list(CREATININE_BOUNDS) or len(counts) != len(doc["bounds"]) + 1:
            return None
        return cls(counts)


@dataclass(frozen=True, slots=True)
class Choice:
    detector: object        # the detector to serve
    psi: float | None       # the history's creatinine PSI against the default's training
    reason: str
    history: CreatinineCounts | None = None   # what the choice was made on
    switched: bool = False  # the robust model serves instead of the default

    @property
    def shifted(self) -> bool:
        return self.psi is not None and self.psi > SHIFT_PSI

    def drift_reference(self) -> dict | None:
        """What the served model's drift window compares with (drift.py): its training
        reference; on another population, with this hospital's own history for creatinine (its
        difference from training is known: a further shift is the news)."""
        reference = getattr(self.detector, "reference", None)
        if reference is None or not self.switched or self.history is None:
            return reference
        n = self.history.total
        creatinine = {**reference["creatinine"], "fractions": [c / n for c in self.history.counts]}
        return {**reference, "creatinine": creatinine}


def choose(default, robust, history: CreatinineCounts | None) -> Choice:
    """The model to serve: `robust` when the history's creatinine differs from `default`'s
    training population by more than SHIFT_PSI, else `default`. Without a robust model, a
    reference or a recorded history, the default."""
    reference = getattr(default, "reference", None)
    if history is None or reference is None:
        return Choice(default, None, "no record of the history's creatinine: the default model")
    if history.total < MIN_RESULTS:
        return Choice(default, None, f"the history holds {history.total} results, too few to "
                                     f"tell its population (< {MIN_RESULTS}): the default model")
    value = psi(history.counts, reference["creatinine"]["fractions"])
    if value <= SHIFT_PSI:
        return Choice(default, value, f"the history's creatinine is like the default model's "
                                      f"training population (PSI {value:.3f})", history)
    if robust is None:
        return Choice(default, value, f"the history's creatinine differs from the default model's "
                                      f"training population (PSI {value:.3f} > {SHIFT_PSI}), and "
                                      "no robust model is set", history)
    return Choice(robust, value, f"the history's creatinine differs from the default model's "
                                 f"training population (PSI {value:.3f} > {SHIFT_PSI}): serving "
                                 f"the shift-robust model {robust.version} instead of "
                                 f"{default.version}", history, switched=True)

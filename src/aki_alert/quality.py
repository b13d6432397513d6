"""Online alerting quality: a rolling F3 where confirmed diagnoses arrive later.

Labels come from LABELS_PATH, a CSV of confirmed AKIs in the contract's `aki.csv` shape
(`mrn,date[,aki,…]`; rows with `aki=n` are ignored), refreshed by whoever confirms diagnoses.
Every minute the service scores its own pages against them, strictly as the hospital does,
over the last 30 days of hospital time (the latest result's time, so a replay scores too):
a page at a label's exact time is a true positive, any other page a false positive, a label
whose result the service received but never paged a false negative. Without labels the gauge
is NaN and the drift signals stand in: the alert rate, the share of results with no history,
and the creatinine and score histograms (see docs/runbook.md).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass

from .hospital.scoring import f3
from .timeutil import DAY, parse_csv_time

log = logging.getLogger(__name__)

WINDOW = 30 * DAY


@dataclass(frozen=True, slots=True)
class Quality:
    tp: int
    fp: int
    fn: int

    @property
    def f3(self) -> float:
        return f3(self.tp, self.fp, self.fn)


def score(pages: set[tuple[str, int]], labels: set[tuple[str, int]],
          received: set[tuple[str, int]]) -> Quality | None:
    """Strict scoring of pages against labels; FN only for labelled results received.
    None when there is nothing to score."""
    due = labels & received
    q = Quality(len(pages & labels), len(pages - labels), len(due - pages))
    return q if q.tp + q.fp + q.fn else None


def read_labels(path: str) -> set[tuple[str, int]]:
    """(mrn, time) of confirmed AKIs; malformed rows are skipped and counted in the log."""
    labels: set[tuple[str, int]] = set()
    bad = 0
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            try:
                if (row.get("aki") or "y").strip().lower() != "y":
                    continue
                labels.add((row["mrn"].strip(), parse_csv_time(row["date"])))
            except (KeyError, ValueError, AttributeError):
                bad += 1
    if bad:
        log.warning("labels %s: %d malformed row(s) skipped", path, bad)
    return labels


class LabelsMonitor:
    """Re-reads the labels file when it changes and scores the state's pages against it."""

    def __init__(self, path: str, store) -> None:
        self.path = path
        self.store = store
        self._mtime: float | None = None
        self._labels: set[tuple[str, int]] = set()

    def refresh(self) -> Quality | None:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError as e:
            log.warning("labels file %s cannot be read: %s", self.path, e.strerror or e)
            return None
        if mtime != self._mtime:
            self._labels, self._mtime = read_labels(self.path), mtime
        now = self.store.latest_feed_time()
        if now is None:
            return None
        since = now - WINDOW
        pages = self.store.pages_since(since)
        labels = {lab for lab in self._labels if lab[1] >= since}
        received = {lab for lab in labels if self.store.has_result(*lab)}
        return score(pages, labels, received)

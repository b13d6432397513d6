"""The metrics of judged results, counted once per result, after its message commits.

A message is applied inside a unit that may not last: a savepoint of the service's open batch,
which a failed commit or a failure midway rolls back and the recovery applies again from the
message log (durable.py), or a transaction of its own, retried or re-sent by the hospital when
it fails. So Ingest only notes each judged result, and the note is counted here once the
message's changes are committed: by Ingest after its own transaction, by durable.py after a
batch's commit. A rolled-back unit drops its notes.

A batch of notes is counted in a few passes over it, cheaper than the five metric updates per
result made as each is judged (docs/performance.md).
"""

from __future__ import annotations

from collections import Counter

from . import metrics
from .detect import Judgement
from .drift import DriftMonitor

# A judged result as noted: (value, judgement, whether the patient had earlier results,
# whether its date of birth was known, whether it paged again inside an episode).
Note = tuple[float, Judgement, bool, bool, bool]

_YES_NO = ("no", "yes")


def count(notes: list[Note], detector: str, drift: DriftMonitor | None) -> None:
    """Count the committed results `notes`, all judged by `detector`: creatinine and score
    histograms, results judged, positives, re-pages and the drift window."""
    values = [n[0] for n in notes]
    scores = [n[1].score for n in notes]
    positives = [n[1].positive for n in notes]
    metrics.CREATININE.labels().observe_many(values)
    metrics.child(metrics.SCORES, detector).observe_many(scores)
    if drift is not None:
        drift.observe(values, scores, positives)
    for (history, admission), n in Counter((n[2], n[3]) for n in notes).items():
        metrics.child(metrics.RESULTS_JUDGED, _YES_NO[history], _YES_NO[admission]).inc(n)
    paged = sum(positives)
    if paged:
        metrics.child(metrics.POSITIVES, detector).inc(paged)
        repages = sum(n[4] for n in notes)
        if repages:
            metrics.REPAGES.inc(repages)

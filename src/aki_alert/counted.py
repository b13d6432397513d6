"""The metrics of what a message did, counted once, after its changes commit: each judged
result (histograms, results judged, positives, re-pages, the drift window) and each message's
decision, result actions, duplicate results, merges, dead letters and unrecognised creatinine.

A message is applied inside a unit that may not last: a savepoint of the service's open batch,
which a failed commit or a failure midway rolls back and the recovery applies again from the
message log (durable.py), or a transaction of its own, retried or re-sent by the hospital when
it fails. So Ingest only notes what the message did, and the notes are counted here once the
message's changes are committed: by Ingest after its own transaction, by durable.py after a
batch's commit. A rolled-back unit drops its notes. (What arrived, counted on arrival: messages
received, re-deliveries, unreadable frames; a recovery's re-application skips those.)

A batch of notes is counted in a few passes over it rather than with a metric update per
note as each is made.
"""

from __future__ import annotations

from collections import Counter

from . import metrics
from .drift import DriftMonitor

# Each judged result is noted as FIELDS consecutive items of one flat list: its value, its score,
# whether positive, its kind (below), whether it paged again inside an episode. Flat, so that no
# object per result lives until the commit: the garbage collector would walk each (a tuple
# holding the Judgement cost ~900 instructions a message, measured).
FIELDS = 5
# The labels (history, admission) of aki_results_judged_total by the noted kind:
# (no earlier result) + 2 × (no date of birth).
KINDS = (("yes", "yes"), ("no", "yes"), ("yes", "no"), ("no", "no"))


def count_judged(notes: list, detector: str, drift: DriftMonitor | None) -> None:
    """Count the committed results `notes`, all judged by `detector`: creatinine and score
    histograms, results judged, positives, re-pages and the drift window."""
    values, scores, positives = notes[0::FIELDS], notes[1::FIELDS], notes[2::FIELDS]
    metrics.CREATININE.labels().observe_many(values)
    metrics.child(metrics.SCORES, detector).observe_many(scores)
    if drift is not None:
        drift.observe(values, scores, positives)
    kinds = notes[3::FIELDS]
    for kind, labels in enumerate(KINDS):
        n = kinds.count(kind)
        if n:
            metrics.child(metrics.RESULTS_JUDGED, *labels).inc(n)
    paged = sum(positives)
    if paged:
        metrics.child(metrics.POSITIVES, detector).inc(paged)
        repages = sum(notes[4::FIELDS])
        if repages:
            metrics.REPAGES.inc(repages)


def count_series(series: list) -> None:
    """Add one to each noted counter series (noted n times: n, in one update)."""
    for one, n in Counter(series).items():
        one.inc(n)

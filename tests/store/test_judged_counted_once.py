"""The metrics of judged results (judged.py) count each result once, after its message commits,
on SQLite and PostgreSQL: not while the batch is open, not again when a failed commit or a
message failing midway makes the batch be applied again from the message log, and not again
when a message's own transaction fails to commit and the hospital sends it again."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from aki_alert.detect.nhs import NhsDetector
from aki_alert.drift import CREATININE_BOUNDS, SCORE_BOUNDS, DriftMonitor, histogram
from aki_alert.durable import Durable
from aki_alert.hospital import messages
from aki_alert.ingest import Ingest
from aki_alert.repage import Policy
from aki_alert.timeutil import DAY, parse_hl7_date, parse_hl7_time

T0 = parse_hl7_time("20240301080000")
POLICY = Policy(min_hours=24.0, stage_gain=2)
STEADY = 10


def stream() -> list[bytes]:
    """Patient 7 (admitted) is paged (stage 1), then paged again (stage 3); patients 100..
    (not admitted) are steady."""
    return ([messages.admission(T0 - 31 * DAY, "7", "ANN SMITH", parse_hl7_date("19600101"),
                                "F"),
             messages.result(T0 - 30 * DAY, "7", 100.0), messages.result(T0, "7", 155.0)]
            + [messages.result(T0 + i * 60, str(100 + i), 80.0) for i in range(STEADY)]
            + [messages.result(T0 + 10 * DAY, "7", 400.0)])


# Each counter's advance over the stream: every result judged once (by whether the patient had
# earlier results / a date of birth), two positives, one re-page.
ONCE = {"creatinine": STEADY + 3, "scores": STEADY + 3, "judged no/yes": 1, "judged yes/yes": 2,
        "judged no/no": STEADY, "judged yes/no": 0, "positives": 2, "repages": 1,
        "drift": STEADY + 3, "drift positives": 2}
NONE = dict.fromkeys(ONCE, 0)


def drift_monitor() -> DriftMonitor:
    return DriftMonitor({
        "score": {"bounds": list(SCORE_BOUNDS), "fractions": histogram([0.0], SCORE_BOUNDS)},
        "creatinine": {"bounds": list(CREATININE_BOUNDS),
                       "fractions": histogram([80.0], CREATININE_BOUNDS)},
        "positive_rate": 0.02,
    })


class Counted:
    """The judgement metrics' values now, and their advance since."""

    def __init__(self, drift: DriftMonitor) -> None:
        self.drift = drift
        self.start = self.values()

    def values(self) -> dict[str, float]:
        def get(name, **labels):
            return REGISTRY.get_sample_value(name, labels) or 0.0

        window = self.drift.snapshot()
        return {
            "creatinine": get("aki_creatinine_umol_per_litre_count"),
            "scores": get("aki_detector_score_count", detector="nhs"),
            **{f"judged {h}/{a}": get("aki_results_judged_total", history=h, admission=a)
               for h in ("yes", "no") for a in ("yes", "no")},
            "positives": get("aki_positive_results_total", detector="nhs"),
            "repages": get("aki_repages_total"),
            "drift": self.drift.results(),
            "drift positives": round(window["positive_rate"] * window["results"]),
        }

    def since(self) -> dict[str, float]:
        now = self.values()
        return {k: now[k] - self.start[k] for k in now}


class FailingCommit:
    """The store's connection, whose next COMMIT rolls back and fails (a full disk, a lost
    connection) when `fail` is set."""

    def __init__(self, db, error: Exception) -> None:
        self._db, self.error, self.fail = db, error, False

    def execute(self, sql, *args):
        if self.fail and sql == "COMMIT":
            self.fail = False
            self._db.execute("ROLLBACK")
            raise self.error
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


def storage_error(backend) -> Exception:
    if backend.name == "sqlite":
        import sqlite3
        return sqlite3.OperationalError("disk I/O error")
    import psycopg
    return psycopg.OperationalError("server closed the connection unexpectedly")


def service(backend, tmp_path, commit_each=False):
    store = backend.open()
    store.db = FailingCommit(store.db, storage_error(backend))
    drift = drift_monitor()
    ingest = Ingest(store, NhsDetector(), repage=POLICY, drift=drift)
    return Durable(store, ingest, str(tmp_path), commit_each=commit_each), Counted(drift)


def pages(backend, d) -> list[str]:
    return [b for b, in backend.rows(d.store, "SELECT body FROM outbox ORDER BY id")]


def test_a_batch_counts_once_though_its_commit_fails_once(backend, tmp_path):
    d, counted = service(backend, tmp_path)
    for m in stream():
        d.accept(m, 0.0)
        d.settle()
    assert counted.since() == NONE              # applied, not committed: nothing counted yet
    d.store.db.fail = True
    d.flush()                                   # the commit fails: the batch is rolled back
    assert d.broken and counted.since() == NONE
    d.flush()                                   # applied again from the log, and committed
    assert not d.broken and counted.since() == ONCE
    assert len(pages(backend, d)) == 2
    for m in stream():                          # re-delivered after the commit: duplicates
        d.accept(m, 0.0)
        d.settle()
    d.flush()
    assert counted.since() == ONCE


def page_fails_once(store) -> None:
    """The store's next add_page raises (a bug of ours): after the message's result was
    written and judged, before its page is."""
    def failing(*args):
        del store.add_page
        raise RuntimeError("bug")
    store.add_page = failing


def test_a_batch_rebuilt_after_a_message_failed_midway_counts_once(backend, tmp_path):
    d, counted = service(backend, tmp_path)
    page_fails_once(d.store)
    for m in stream():
        d.accept(m, 0.0)
        d.settle()
    # The paged message failed without a savepoint: the batch was rolled back, and applied
    # again from the log (the failing message, in a savepoint, once more) with the next one.
    assert not d.broken
    d.flush()
    assert counted.since() == ONCE
    assert len(pages(backend, d)) == 2


def test_a_message_failing_midway_on_its_own_counts_once_when_retried(backend, tmp_path):
    d, counted = service(backend, tmp_path, commit_each=True)
    page_fails_once(d.store)
    for m in stream():
        d.accept(m, 0.0)
        d.settle()
    assert counted.since() == ONCE
    assert len(pages(backend, d)) == 2


@pytest.mark.parametrize("failing", [2, 3, STEADY + 3], ids=["paged", "steady", "re-paged"])
def test_a_message_whose_own_commit_fails_counts_once_when_sent_again(backend, tmp_path,
                                                                       failing):
    """Commit-each (replicas sharing PostgreSQL; SQLite takes the same path): a message whose
    transaction does not commit is not acknowledged, and the hospital sends it again."""
    d, counted = service(backend, tmp_path, commit_each=True)
    for i, m in enumerate(stream()):
        if i == failing:
            d.store.db.fail = True
            with pytest.raises(type(d.store.db.error)):
                d.accept(m, 0.0)
        d.accept(m, 0.0)
        d.settle()
    assert counted.since() == ONCE
    assert len(pages(backend, d)) == 2

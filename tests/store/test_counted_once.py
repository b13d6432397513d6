"""The metrics of what messages did (counted.py: judged results, decisions, result actions,
duplicate results, merges, dead letters, unrecognised creatinine) count once, after the
message commits, on SQLite and PostgreSQL: not while the batch is open, not again when a failed
commit or a message failing midway makes the batch be applied again from the message log, and
not again when a message's own transaction fails to commit and the hospital sends it again."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from aki_alert.detect.nhs import NhsDetector
from aki_alert.drift import CREATININE_BOUNDS, SCORE_BOUNDS, DriftMonitor, histogram
from aki_alert.durable import Durable
from aki_alert.hospital import messages
from aki_alert.ingest import Ingest
from aki_alert.repage import Policy
from aki_alert.timeutil import DAY, format_hl7_time, parse_hl7_date, parse_hl7_time

T0 = parse_hl7_time("20240301080000")
POLICY = Policy(min_hours=24.0, stage_gain=2)
STEADY = 10


def oru(mrn: str, t: int, value: str, status: str = "F", code: str = "CREATININE",
        unit: str = "umol/L", sent: int | None = None) -> bytes:
    """A result with OBX-3 `code`, OBX-6 `unit` and OBX-11 `status`, sent at `sent`."""
    return (f"MSH|^~\\&|LAB|RVJ|||{format_hl7_time(sent or t)}||ORU^R01|||2.5\rPID|1||{mrn}\r"
            f"OBR|1||||||{format_hl7_time(t)}\rOBX|1|NM|{code}||{value}|{unit}|||||{status}\r"
            ).encode()


def stream() -> list[bytes]:
    """Patient 7 (admitted) is paged (stage 1), then paged again (stage 3); patients 100..
    (not admitted) are steady; then one of each other thing a message may do."""
    return ([messages.admission(T0 - 31 * DAY, "7", "ANN SMITH", parse_hl7_date("19600101"),
                                "F"),
             messages.result(T0 - 30 * DAY, "7", 100.0), messages.result(T0, "7", 155.0)]
            + [messages.result(T0 + i * 60, str(100 + i), 80.0) for i in range(STEADY)]
            + [messages.result(T0 + 10 * DAY, "7", 400.0),
               oru("100", T0, "80", sent=T0 + DAY),              # a duplicate result
               oru("101", T0 + 60, "", status="D"),              # a withdrawal
               oru("102", T0 + DAY, "90", code="CREA^Creatinine serum^L"),   # unrecognised
               b"MSH|^~\\&|PAS|RVJ|||20240302080000||ADT^A40|||2.5\rPID|1||104\rMRG|103\r",
               oru("105", T0 + DAY, "90", unit="furlongs")])     # a dead letter


# Each counter's advance over the stream: every result judged once (by whether the patient had
# earlier results / a date of birth), two positives, one re-page; one of each other thing.
ONCE = {"creatinine": STEADY + 3, "scores": STEADY + 3, "judged no/yes": 1, "judged yes/yes": 2,
        "judged no/no": STEADY, "judged yes/no": 0, "positives": 2, "repages": 1,
        "drift": STEADY + 3, "drift positives": 2,
        "applied": STEADY + 6, "duplicate": 0, "duplicate-result": 1, "ignored": 1, "dead": 1,
        "re-deliveries": 0, "action duplicate": 1, "action removed": 1, "duplicate results": 1,
        "merges": 1, "dead letters": 1, "results dead-lettered": 1, "unrecognised": 1}
NONE = dict.fromkeys(ONCE, 0)
# The whole stream sent again once committed: each message a re-delivery, but the dead letter
# (journaled as dead, it is no re-delivery).
AGAIN = ONCE | {"duplicate": len(stream()) - 1, "re-deliveries": len(stream()) - 1}


def drift_monitor() -> DriftMonitor:
    return DriftMonitor({
        "score": {"bounds": list(SCORE_BOUNDS), "fractions": histogram([0.0], SCORE_BOUNDS)},
        "creatinine": {"bounds": list(CREATININE_BOUNDS),
                       "fractions": histogram([80.0], CREATININE_BOUNDS)},
        "positive_rate": 0.02,
    })


class Counted:
    """The metrics' values now, and their advance since."""

    def __init__(self, drift: DriftMonitor) -> None:
        self.drift = drift
        self.start = self.values()

    def values(self) -> dict[str, float]:
        def get(name, **labels):
            return REGISTRY.get_sample_value(name, labels) or 0.0

        def total(name):                        # over every label
            return sum(s.value for m in REGISTRY.collect() for s in m.samples if s.name == name)

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
            **{d: get("aki_message_decisions_total", decision=d)
               for d in ("applied", "duplicate", "duplicate-result", "ignored", "dead")},
            "re-deliveries": get("aki_duplicate_messages_total"),
            **{f"action {a}": get("aki_result_actions_total", action=a)
               for a in ("duplicate", "removed")},
            "duplicate results": get("aki_duplicate_results_total"),
            "merges": get("aki_patient_merges_total", outcome="merged"),
            "dead letters": get("aki_dead_letters_total", reason="unparseable"),
            "results dead-lettered": get("aki_results_dead_lettered_total"),
            "unrecognised": total("aki_unrecognised_creatinine_total"),
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
    assert counted.since() == AGAIN


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


@pytest.mark.parametrize("failing", [2, 3, *range(STEADY + 3, len(stream()))], ids=[
    "paged", "steady", "re-paged", "duplicate result", "withdrawal", "unrecognised", "merge",
    "dead letter"])
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

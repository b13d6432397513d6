"""The message log, then the ACK, then the work, with batched commits: a crash or a storage
failure mid-batch loses no acknowledged message and pages nothing twice. Both ways of
running the two halves: in one process (`accept`, `settle`), and as the service does, the
frames logged by the front and handed over (`take`)."""

import sqlite3

import pytest
from prometheus_client import REGISTRY

from aki_alert.detect.nhs import NhsDetector
from aki_alert.durable import BATCH_MAX, Durable
from aki_alert.hospital import messages
from aki_alert.ingest import Ingest
from aki_alert.mllp import FrameError
from aki_alert.store import msglog
from aki_alert.store.msglog import MESSAGE, SegmentWriter, segment_records, segments
from aki_alert.store.sqlite import SqliteStore
from aki_alert.timeutil import DAY, parse_hl7_time

T0 = parse_hl7_time("20240301080000")


def open_service(tmp_path, detector=None):
    store = SqliteStore(str(tmp_path / "state.db"))
    return Durable(store, Ingest(store, detector or NhsDetector()), str(tmp_path))


def logged(tmp_path) -> int:
    """Frames in the message log's segments."""
    return len(segment_records(str(tmp_path))[0])


def handle(d, item):
    """What the reader thread does: accept (→ ACK), then settle; the pages to send."""
    d.accept(item, 0.0)
    return d.settle()


def bodies(pages):
    return [p.body for p in pages]


def stream():
    """Patient 7 rises (one AKI page); patients 100.. are steady."""
    yield messages.result(T0, "7", 100.0)
    for i in range(40):
        yield messages.result(T0 + i * 60, str(100 + i), 80.0)
    yield messages.result(T0 + DAY, "7", 260.0)


def committed(tmp_path, sql):
    db = sqlite3.connect(tmp_path / "state.db")
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()


def test_a_batch_is_committed_only_on_flush(tmp_path):
    d = open_service(tmp_path)
    for m in stream():
        handle(d, m)
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 0     # not yet committed
    assert logged(tmp_path) == 42                                      # but logged
    d.flush()
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42


def test_a_crash_before_commit_is_recovered_from_the_log(tmp_path):
    d = open_service(tmp_path)
    assert [b for m in stream() for b in bodies(handle(d, m))] == ["7,20240302080000"]
    # kill -9: the connection goes without a commit; only the log survives.
    d.store.db.close()
    d.close()
    d = open_service(tmp_path)
    # The outbox row died with the batch: the page is decided again, once.
    assert bodies(d.recover()) == ["7,20240302080000"]
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42
    assert committed(tmp_path, "SELECT group_concat(body) FROM outbox") == "7,20240302080000"
    # The hospital resends what it never saw acknowledged: nothing changes, nothing is paged.
    assert all(handle(d, m) == [] for m in stream())
    d.flush()
    assert committed(tmp_path, "SELECT count(*) FROM outbox") == 1


def deliver(d, body, attempts=1):
    """What the dispatcher does once the pager answered 200."""
    d.store.page_delivered(body, attempts)
    d.delivered(body, attempts)


def test_a_page_delivered_before_a_crash_is_not_sent_again(tmp_path):
    d = open_service(tmp_path)
    assert [b for m in stream() for b in bodies(handle(d, m))] == ["7,20240302080000"]
    deliver(d, "7,20240302080000", attempts=2)
    d.store.db.close()                     # kill -9 before the batch commits
    d.close()
    d = open_service(tmp_path)
    assert d.recover() == []               # decided again, and found delivered
    assert committed(tmp_path, "SELECT status || ' ' || attempts FROM outbox") == "delivered 2"


def test_a_page_delivered_in_a_broken_batch_stays_delivered(tmp_path):
    d = open_service(tmp_path)
    msgs = list(stream())
    for m in msgs:
        handle(d, m)
    deliver(d, "7,20240302080000")
    real = d.ingest.apply
    d.ingest.apply = _fail_apply           # a storage failure: the batch is rolled back
    d.accept(messages.result(T0 + 2 * DAY, "500", 80.0), 0.0)
    assert d.settle() == [] and d.broken
    d.ingest.apply = real
    assert handle(d, messages.result(T0 + 2 * DAY, "501", 80.0)) == []    # rebuilt: no resend
    d.flush()
    assert committed(tmp_path, "SELECT status FROM outbox") == "delivered"
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 44


def test_recovery_is_idempotent_after_a_commit_that_kept_its_log(tmp_path):
    d = open_service(tmp_path)
    for m in stream():
        handle(d, m)
    d.store.commit_batch()                 # committed, then killed before the log was emptied
    d = open_service(tmp_path)
    assert d.recover() == []
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42
    assert committed(tmp_path, "SELECT count(*) FROM outbox") == 1


def test_a_frame_the_log_cannot_take_is_not_acknowledged_and_changes_nothing(tmp_path):
    d = open_service(tmp_path)
    msgs = list(stream())
    for m in msgs[:-1]:
        handle(d, m)
    d.frames.append = _fail                # the log cannot be written (disk full)
    with pytest.raises(OSError):
        d.accept(msgs[-1], 0.0)
    assert d.settle() == [] and not d.broken
    del d.frames.append                    # space again
    # The hospital resends the message: paged once.
    assert bodies(handle(d, msgs[-1])) == ["7,20240302080000"]
    d.flush()
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42
    assert committed(tmp_path, "SELECT count(*) FROM outbox") == 1


def test_a_storage_failure_after_the_ack_is_repaired_from_the_log_and_still_pages(tmp_path):
    d = open_service(tmp_path)
    msgs = list(stream())
    for m in msgs[:-1]:
        handle(d, m)
    real = d.ingest.apply
    d.ingest.apply = _fail_apply           # the database fails while applying the AKI result
    d.accept(msgs[-1], 0.0)                # ...which was logged, so it is acknowledged
    assert d.settle() == [] and d.broken
    d.ingest.apply = real
    # The next message rebuilds the batch from the log first: the acknowledged AKI result is
    # applied and its page comes out with the next settle().
    assert bodies(handle(d, messages.result(T0 + 2 * DAY, "500", 80.0))) == ["7,20240302080000"]
    d.flush()
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 43
    assert committed(tmp_path, "SELECT count(*) FROM outbox") == 1


def _fail_apply(raw, received, isolated=True, again=False):
    raise sqlite3.OperationalError("database or disk is full")


class FailsOnce(NhsDetector):
    """Raises (a bug of ours) the first time it judges patient 7's second result."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def judge(self, patient, time, value):
        if patient.mrn == "7" and len(patient.times) == 1 and not self.failed:
            self.failed = True
            raise RuntimeError("bug")
        return super().judge(patient, time, value)


def test_a_message_failing_midway_is_applied_once_when_the_batch_is_rebuilt(tmp_path):
    d = open_service(tmp_path, FailsOnce())
    failures = REGISTRY.get_sample_value("aki_storage_failures_total")
    msgs = list(stream())
    for m in msgs[:-1]:
        handle(d, m)
    # Its journal row and result were written, without a savepoint, before the detector
    # failed: the batch is rolled back and applied again from the log, each message isolated.
    assert handle(d, msgs[-1]) == [] and d.broken
    assert bodies(d.flush()) == ["7,20240302080000"]
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42
    assert committed(tmp_path, "SELECT count(*) FROM journal WHERE status = 'applied'") == 42
    assert committed(tmp_path, "SELECT count(*) FROM results") == 42
    assert committed(tmp_path, "SELECT count(*) FROM outbox") == 1
    assert REGISTRY.get_sample_value("aki_storage_failures_total") == failures  # not storage


def test_flush_applies_an_accepted_frame_before_emptying_the_log(tmp_path):
    d = open_service(tmp_path)
    msgs = list(stream())
    for m in msgs[:-1]:
        handle(d, m)
    d.accept(msgs[-1], 0.0)                # ACKed; the flush comes before settle()
    assert bodies(d.flush()) == ["7,20240302080000"]
    assert d.settle() == []
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42


def _fail(kind, payload):
    raise OSError(28, "No space left on device")


def test_frame_errors_are_logged_and_recovered_as_dead_letters(tmp_path):
    d = open_service(tmp_path)
    handle(d, FrameError("too big", b"MSH|x"))
    d.store.db.close()
    d = open_service(tmp_path)
    d.recover()
    assert committed(tmp_path, "SELECT reason FROM dead_letters") == "too big"


def test_due_after_batch_max(tmp_path):
    d = open_service(tmp_path)
    for i in range(BATCH_MAX):
        assert not d.due
        handle(d, messages.result(T0 + i, "9", 80.0))
    assert d.due
    d.flush()
    assert not d.due and d.uncommitted == 0


def test_flush_never_raises_while_the_storage_keeps_failing(tmp_path):
    d = open_service(tmp_path)
    for m in stream():
        handle(d, m)
    d.store.commit_batch = _fail_commit
    d.flush()                              # commit fails: restored, marked broken
    assert d.broken
    d.flush()                              # recovery fails too: still no exception
    assert d.broken and logged(tmp_path) == 42
    del d.store.commit_batch
    d.flush()                              # storage back: everything committed once
    assert not d.broken
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42
    assert committed(tmp_path, "SELECT count(*) FROM outbox") == 1


def _fail_commit():
    raise sqlite3.OperationalError("database or disk is full")


# --- as the service runs: the front logs and acknowledges, then hands each frame over ------

def front_logs(tmp_path, msgs):
    """What the front does for each message before handing it over: its log position."""
    writer = SegmentWriter(str(tmp_path))
    try:
        return [writer.append(MESSAGE, m) for m in msgs]
    finally:
        writer.close()


def take_first(d, tmp_path, count):
    """The front logs the whole stream; the service takes its first `count` frames. The
    stream's messages, their log positions, and the pages of what was taken."""
    msgs = list(stream())
    at = front_logs(tmp_path, msgs)
    pages = [b for m, a in zip(msgs[:count], at[:count], strict=True)
             for b in bodies(d.take(m, 0.0, a))]
    return msgs, at, pages


def test_frames_the_front_logged_are_taken_applied_and_paged(tmp_path):
    d = open_service(tmp_path)
    _, _, pages = take_first(d, tmp_path, 42)
    assert pages == ["7,20240302080000"]
    d.flush()
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42


def test_a_rebuild_applies_the_frames_taken_and_not_those_still_on_their_way(tmp_path):
    d = open_service(tmp_path)
    msgs, at, _ = take_first(d, tmp_path, 40)   # the front is ahead: the last not handed over
    real = d.ingest.apply
    d.ingest.apply = _fail_apply           # the storage fails on the 41st
    assert d.take(msgs[40], 0.0, at[40]) == [] and d.broken
    d.ingest.apply = real
    d.recover()                            # up to the 41st, which was taken
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 41
    assert bodies(d.take(msgs[41], 0.0, at[41])) == ["7,20240302080000"]
    d.flush()
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42


def test_take_raises_while_the_broken_batch_cannot_be_rebuilt(tmp_path):
    d = open_service(tmp_path)
    msgs, at, _ = take_first(d, tmp_path, 41)
    d.store.commit_batch = _fail_commit
    d.flush()
    assert d.broken
    with pytest.raises(sqlite3.OperationalError):
        d.take(msgs[41], 0.0, at[41])      # not taken: offered again later
    del d.store.commit_batch
    assert bodies(d.take(msgs[41], 0.0, at[41])) == ["7,20240302080000"]
    d.flush()
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42


def test_after_the_front_died_everything_it_logged_is_applied(tmp_path):
    d = open_service(tmp_path)
    take_first(d, tmp_path, 41)
    # The last was acknowledged, then the front was killed before handing it over.
    assert bodies(d.recover(everything=True)) == ["7,20240302080000"]
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42
    assert segments(str(tmp_path)) == []   # all applied and committed: dropped


def test_committed_segments_are_dropped_and_a_restart_counts_no_duplicates(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(msglog, "SEGMENT_RECORDS", 10)
    d = open_service(tmp_path)
    for m in stream():
        handle(d, m)                       # 42 frames: segments 0-4
    assert segments(str(tmp_path)) == [0, 1, 2, 3, 4]
    d.flush()
    assert segments(str(tmp_path)) == [4]  # the one still written to stays
    d.store.db.close()
    d.close()
    duplicates = REGISTRY.get_sample_value("aki_duplicate_messages_total")
    d = open_service(tmp_path)
    assert d.recover() == []               # its two frames were committed: skipped
    assert REGISTRY.get_sample_value("aki_duplicate_messages_total") == duplicates
    assert segments(str(tmp_path)) == []
    assert committed(tmp_path, "SELECT count(*) FROM journal") == 42

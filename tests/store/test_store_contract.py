"""The state's contract, the same for every backend (SQLite and PostgreSQL, see conftest.py):
what Ingest, Durable and the dispatcher rely on."""

from __future__ import annotations

import json

import pytest

import aki_alert.ingest as ingest_mod
from aki_alert.detect.nhs import NhsDetector
from aki_alert.durable import Durable
from aki_alert.hospital import messages
from aki_alert.hl7 import acknowledgement
from aki_alert.ingest import Ingest
from aki_alert.mllp import FrameError
from aki_alert.store import StateError, is_storage_failure, open_store
from aki_alert.store.rows import PendingPage
from aki_alert.store.sqlite import SCHEMA_VERSION, SqliteStore
from aki_alert.timeutil import DAY, format_hl7_time, parse_hl7_date, parse_hl7_time

T0 = parse_hl7_time("20240301080000")
EMPTY = {"patients": 0, "results": 0, "messages": 0, "dead_letters": 0, "pages_pending": 0,
         "pages_delivered": 0, "pages_dead": 0}


def handle(ing, raw, received):
    """What the service does with one message: its ACK (`Durable.accept`), then applying it."""
    pages = ing.apply(raw, received)
    assert len(pages) <= 1, pages              # these messages decide one page at most
    return acknowledgement(raw), pages[0] if pages else None


def result(mrn, t, value):
    return messages.result(t, str(mrn), value)


def admit(mrn, name="ANN SMITH"):
    return messages.admission(T0 - DAY, str(mrn), name, parse_hl7_date("19600101"), "F")


def msa(ack: bytes) -> bytes:
    return ack.split(b"\r")[1]


def body(mrn, t) -> str:
    return f"{mrn},{format_hl7_time(t)}"


def in_transaction(store) -> bool:
    # PostgresStore has the property; SqliteStore callers read its connection's.
    return store.in_transaction if hasattr(store, "in_transaction") else store.db.in_transaction


def stream():
    """Patient 7 rises (one page); patients 100.. are steady."""
    yield result(7, T0, 100.0)
    for i in range(20):
        yield result(100 + i, T0 + i * 60, 80.0)
    yield result(7, T0 + DAY, 260.0)


class FailsFor:
    """The NHS detector, raising (a bug of ours) for one patient."""

    name, version = "nhs", "test"

    def __init__(self, mrn: str) -> None:
        self.mrn, self.inner = mrn, NhsDetector()

    def judge(self, patient, time, value):
        if patient.mrn == self.mrn:
            raise RuntimeError("bug")
        return self.inner.judge(patient, time, value)


def durable(store, tmp_path, detector=None) -> Durable:
    return Durable(store, Ingest(store, detector or NhsDetector()), str(tmp_path))


def pages_of(d: Durable, msg) -> list[str]:
    """What the service's reader does with a message: accept (→ ACK), settle → pages."""
    d.accept(msg, 0.0)
    return [p.body for p in d.settle()]


# --- paging -----------------------------------------------------------------------------

def test_a_rise_is_paged_once_with_its_explanation(backend, store):
    ing = Ingest(store, NhsDetector())
    assert handle(ing, result(7, T0, 100.0), 0.0)[1] is None
    ack, page = handle(ing, result(7, T0 + DAY, 250.0), 0.0)
    assert msa(ack) == b"MSA|AA"
    assert page is not None and page.body == body(7, T0 + DAY)
    assert [p.body for p in store.pending_pages()] == [page.body]
    (text,), = backend.rows(store, "SELECT explanation FROM outbox")
    exp = json.loads(text)
    assert exp["detector"] == "nhs" and exp["stage"] == 2 and exp["baseline"] == 100.0
    # Still up, same episode, no worse (stage 2 again): not paged again.
    assert handle(ing, result(7, T0 + 2 * DAY, 260.0), 0.0)[1] is None
    assert store.counts()["pages_pending"] == 1
    assert store.load_patient("7")[1] == T0 + DAY


def test_a_redelivered_message_changes_nothing(backend, store):
    ing = Ingest(store, NhsDetector())
    msgs = [admit(7), result(7, T0, 100.0), result(7, T0 + DAY, 250.0)]
    pages = [handle(ing, m, 0.0)[1] for m in msgs]
    assert pages[2] is not None
    before = store.counts()
    again = Ingest(store, NhsDetector())           # after a restart, too
    for m in msgs:
        ack, page = handle(again, m, 0.0)
        assert msa(ack) == b"MSA|AA" and page is None
    assert store.counts() == before
    assert backend.rows(store, "SELECT count(*) FROM admissions") == [(1,)]


def test_journal_knows_a_digest_once(store):
    with store.transaction():
        first = store.journal(b"a" * 16, "result", "7", "applied", None, b"raw")
        assert isinstance(first, int)
        assert store.journal(b"a" * 16, "result", "7", "applied", None, b"raw") is None
        second = store.journal(b"b" * 16, "result", "7", "applied", None, b"raw")
        assert isinstance(second, int) and second != first
    assert store.counts()["messages"] == 2


def test_results_are_unique_per_patient_and_sample_time(backend, store):
    with store.transaction():
        assert store.add_result("7", T0, 100.0) is True
        assert store.add_result("7", T0, 120.0) is False
        assert store.add_result("7", T0 - 60, 90.0) is True
        assert store.add_result("8", T0, 120.0) is True
    p, episode = store.load_patient("7")
    assert (p.mrn, list(p.times), list(p.values), episode) == ("7", [T0 - 60, T0], [90.0, 100.0],
                                                              None)
    assert list(store.load_patient("7", since=T0 - 59)[0].values) == [100.0]
    ing = Ingest(store, NhsDetector())
    assert handle(ing, result(7, T0 + DAY, 250.0), 0.0)[1] is not None
    again = result(7, T0 + DAY, 250.0).replace(b"|250.0", b"|250")
    _, page = handle(ing, again, 0.0)                  # other bytes, same time and value
    assert page is None
    assert backend.rows(store, "SELECT status FROM journal ORDER BY id DESC")[0] == (
        "duplicate-result",)
    assert store.counts()["results"] == 4


def test_demographics_and_episode_are_kept(store):
    ing = Ingest(store, NhsDetector())
    handle(ing, admit(7), 0.0)
    handle(ing, result(7, T0, 100.0), 0.0)
    handle(ing, result(7, T0 + DAY, 250.0), 0.0)
    handle(ing, messages.discharge(T0 + 2 * DAY, "7"), 0.0)
    p, episode = store.load_patient("7")
    assert p.birth == parse_hl7_date("19600101") and p.sex == "F" and episode == T0 + DAY
    assert store.load_patient("404") == (store.load_patient("404")[0], None)
    assert list(store.load_patient("404")[0].times) == []


def test_a_nul_in_a_text_field_does_not_stall_the_feed(store):
    ing = Ingest(store, NhsDetector())
    ack, _ = handle(ing, admit(7, name="ANN\x00SMITH"), 0.0)
    assert msa(ack) == b"MSA|AA"
    assert store.counts()["messages"] == 1 and store.counts()["dead_letters"] == 0


# --- dead letters -----------------------------------------------------------------------

def test_dead_letters_keep_the_message_and_its_reason(backend, store):
    ing = Ingest(store, NhsDetector())
    ack, page = handle(ing, result("a.b", T0, 100.0), 0.0)
    assert msa(ack) == b"MSA|AA" and page is None
    frame = FrameError("frame too big", b"MSH|x")
    ing.set_aside_frame(frame)
    assert msa(acknowledgement(frame)) == b"MSA|AA"
    rows = backend.rows(store, "SELECT kind, reason, raw FROM dead_letters ORDER BY id")
    assert [r[0] for r in rows] == ["unparseable", "oversized-frame"]
    assert "MRN" in rows[0][1] and rows[1][1] == "frame too big"
    assert bytes(rows[1][2]) == b"MSH|x"
    before = store.counts()
    assert before["dead_letters"] == 2 and before["messages"] == 2
    handle(ing, result("a.b", T0, 100.0), 0.0)                    # re-delivered: no new row
    assert store.counts() == before


def test_a_message_failing_every_time_becomes_a_dead_letter(backend, store, caplog):
    ing = Ingest(store, FailsFor("13"))
    ack, page = handle(ing, result(13, T0, 100.0), 0.0)
    assert caplog.text.count("processing failed") == ingest_mod.MAX_ATTEMPTS - 1
    assert msa(ack) == b"MSA|AA" and page is None
    (reason,), = backend.rows(store, "SELECT reason FROM dead_letters")
    assert "RuntimeError" in reason
    assert store.counts()["results"] == 0


# --- transactions and batches -----------------------------------------------------------

def test_in_transaction_follows_batches_and_units(store):
    assert not in_transaction(store)
    with store.transaction():
        assert in_transaction(store)
    assert not in_transaction(store)
    store.begin_batch()
    assert in_transaction(store)
    with store.transaction():
        assert in_transaction(store)
    assert in_transaction(store)
    store.commit_batch()
    assert not in_transaction(store)
    store.commit_batch()                    # nothing open: no-ops
    store.rollback_batch()


def test_a_unit_outside_a_batch_is_its_own_transaction(backend, store):
    with store.transaction():
        store.add_result("7", T0, 100.0)
    with pytest.raises(ZeroDivisionError):
        with store.transaction():
            store.add_result("8", T0, 100.0)
            raise ZeroDivisionError("a bug")
    assert backend.committed("SELECT mrn FROM results") == [("7",)]


def test_a_failing_unit_in_a_batch_rolls_back_alone(backend, store):
    store.begin_batch()
    with store.transaction():
        store.journal(b"a" * 16, "result", "7", "applied", None, b"a")
    with pytest.raises(ZeroDivisionError):
        with store.transaction():
            store.journal(b"b" * 16, "result", "8", "applied", None, b"b")
            store.add_result("8", T0, 1.0)
            raise ZeroDivisionError("a bug")
    # A failing statement (a database error, which aborts a PostgreSQL transaction) too.
    with pytest.raises(Exception) as failed:
        with store.transaction():
            store.add_result("9", T0, 1.0)
            store.admit("9", "X", None, None, None, None)        # journal_id NOT NULL
    assert not is_storage_failure(failed.value)
    with store.transaction():                                    # the batch goes on
        store.add_result("7", T0, 1.0)
    assert backend.committed("SELECT count(*) FROM journal") == [(0,)]   # not yet committed
    store.commit_batch()
    assert backend.committed("SELECT mrn FROM journal") == [("7",)]
    assert backend.committed("SELECT mrn FROM results") == [("7",)]


def test_a_failing_message_in_a_batch_keeps_the_others(backend, store, tmp_path):
    d = durable(store, tmp_path, FailsFor("13"))
    pages_of(d, result(7, T0, 100.0))
    assert pages_of(d, result(13, T0, 100.0)) == []
    # Applied without a savepoint, the failure spoiled the batch: it is rebuilt from the log
    # before the next message, each message isolated, and 13 becomes a dead letter there.
    assert d.broken
    assert pages_of(d, result(7, T0 + DAY, 250.0)) == [body(7, T0 + DAY)]
    assert not d.broken
    d.flush()
    assert backend.committed("SELECT count(*) FROM journal") == [(3,)]
    assert backend.committed("SELECT mrn FROM journal WHERE status = 'dead'") == [("13",)]
    assert backend.committed("SELECT DISTINCT mrn FROM results") == [("7",)]
    assert backend.committed("SELECT body FROM outbox") == [(body(7, T0 + DAY),)]


def test_batch_rollback_discards_everything_since_begin_batch(backend, store):
    ing = Ingest(store, NhsDetector())
    handle(ing, result(7, T0, 100.0), 0.0)                         # committed on its own
    store.begin_batch()
    assert handle(ing, result(7, T0 + DAY, 250.0), 0.0)[1] is not None
    handle(ing, admit(8), 0.0)
    with store.transaction():
        store.set_meta(note="in the batch")
    store.rollback_batch()
    assert not in_transaction(store)
    assert store.counts() == {**EMPTY, "patients": 1, "results": 1, "messages": 1}
    assert store.meta() == {} and store.pending_pages() == []
    # The journal forgot them: the same messages apply again, paged once.
    ing.forget()
    store.begin_batch()
    assert handle(ing, result(7, T0 + DAY, 250.0), 0.0)[1] is not None
    store.commit_batch()
    assert backend.committed("SELECT body FROM outbox") == [(body(7, T0 + DAY),)]


def test_a_crash_before_commit_is_recovered_from_the_message_log(backend, tmp_path):
    store = backend.open()
    d = durable(store, tmp_path)
    pages = [b for m in stream() for b in pages_of(d, m)]
    assert pages == [body(7, T0 + DAY)]
    assert backend.committed("SELECT count(*) FROM journal") == [(0,)]
    store.close()                           # killed: no commit, only the log survives
    d.close()
    store = backend.open()
    d = durable(store, tmp_path)
    assert [p.body for p in d.recover()] == pages    # the outbox row is decided again, once
    assert backend.committed("SELECT count(*) FROM journal") == [(22,)]
    assert backend.committed("SELECT body FROM outbox") == [(pages[0],)]
    assert all(pages_of(d, m) == [] for m in stream())    # resent: nothing new
    d.flush()
    assert backend.committed("SELECT count(*) FROM outbox") == [(1,)]
    assert backend.committed("SELECT count(*) FROM journal") == [(22,)]


def test_a_lost_connection_mid_batch_is_restored_from_the_log(backend, tmp_path):
    if backend.name != "postgres":
        pytest.skip("only a PostgreSQL store has a connection to lose")
    store = backend.open()
    d = durable(store, tmp_path)
    msgs = list(stream())
    for m in msgs[:-1]:
        pages_of(d, m)
    backend.terminate(store)
    # Logged and acknowledged, but the database is gone while applying it.
    assert pages_of(d, msgs[-1]) == [] and d.broken
    # The next message reconnects and re-applies the log first: the AKI is paged then.
    assert pages_of(d, result(8, T0 + DAY, 80.0)) == [body(7, T0 + DAY)]
    d.flush()
    assert backend.committed("SELECT count(*) FROM journal") == [(len(msgs) + 1,)]
    assert backend.committed("SELECT count(*) FROM outbox") == [(1,)]


def test_a_lost_connection_outside_a_transaction_is_reopened(backend):
    """The dispatcher records deliveries between messages: it must not fail until the next
    message begins a transaction."""
    if backend.name != "postgres":
        pytest.skip("only a PostgreSQL store has a connection to lose")
    store = backend.open()
    with store.transaction():
        jid = store.journal(b"p" * 16, "result", "7", "applied", None, b"raw")
        store.add_page("7", T0, "7,a", "{}", jid)
    backend.terminate(store)
    with pytest.raises(Exception) as failed:              # the first use finds it gone
        store.page_delivered("7,a", 1)
    assert is_storage_failure(failed.value)
    store.page_delivered("7,a", 1)                         # the next reconnects by itself
    assert store.counts()["pages_delivered"] == 1


def test_psycopg_errors_are_storage_failures(backend):
    """A lost connection is our storage's failure (the batch is restored from the log), a
    constraint violation the message's."""
    if backend.name != "postgres":
        pytest.skip("about psycopg's errors")
    import psycopg

    assert is_storage_failure(psycopg.OperationalError("server closed the connection"))
    assert not is_storage_failure(psycopg.IntegrityError("duplicate key"))


# --- outbox -----------------------------------------------------------------------------

def test_pages_are_queued_once_and_updated_by_body(backend, store):
    with store.transaction():
        jid = store.journal(b"p" * 16, "result", "7", "applied", None, b"raw")
        a = store.add_page("7", T0, "7,a", "{}", jid)
        assert store.add_page("7", T0, "7,a", "{}", jid) is None
        b = store.add_page("8", T0, "8,b", "{}", jid)
        assert store.add_page("9", T0, "9,c", "{}", jid, "suppressed") is not None
    assert a < b
    assert store.pending_pages() == [PendingPage(a, "7,a", 0), PendingPage(b, "8,b", 0)]
    store.page_failed("7,a", 1, "timeout", dead=False)
    assert store.pending_pages()[0] == PendingPage(a, "7,a", 1)
    store.page_failed("8,b", 2, "400 bad body", dead=True)
    store.page_delivered("7,a", 2)
    assert store.pending_pages() == []
    counts = store.counts()
    assert (counts["pages_pending"], counts["pages_delivered"], counts["pages_dead"]) == (0, 1, 1)
    assert backend.rows(store, "SELECT body, status, attempts, last_error FROM outbox "
                               "ORDER BY id") == [("7,a", "delivered", 2, None),
                                                  ("8,b", "dead", 2, "400 bad body"),
                                                  ("9,c", "suppressed", 0, None)]


def test_the_dispatcher_can_record_while_a_batch_is_open(backend, store):
    with store.transaction():
        jid = store.journal(b"p" * 16, "result", "7", "applied", None, b"raw")
        store.add_page("7", T0, "7,a", "{}", jid)
    store.begin_batch()
    store.page_delivered("7,a", 1)
    store.commit_batch()
    assert backend.committed("SELECT status FROM outbox") == [("delivered",)]


# --- provenance, history ----------------------------------------------------------------

def test_meta_round_trip(backend, store):
    assert store.meta() == {}
    with store.transaction():
        store.set_meta(created_at="1700000000", history_sha256="abc")
    with store.transaction():
        store.set_meta(history_sha256="def")
    expected = {"created_at": "1700000000", "history_sha256": "def"}
    assert store.meta() == expected
    assert backend.open().meta() == expected


def test_import_results_is_idempotent_and_counts_what_it_adds(store):
    rows = [("1", T0, 100.0), ("1", T0 + 60, 110.0), ("1", T0, 999.0), ("2", T0, 80.0)]
    assert store.import_results(iter(rows)) == 3
    assert store.import_results(iter(rows)) == 0
    assert store.import_results([("2", T0, 1.0), ("3", T0, 90.0)]) == 1
    assert store.import_results([]) == 0
    assert store.counts() == {**EMPTY, "patients": 3, "results": 4}
    assert list(store.load_patient("1")[0].values) == [100.0, 110.0]         # the first row wins

    def broken():
        yield ("4", T0, 1.0)
        raise ValueError("truncated file")

    with pytest.raises(ValueError):
        store.import_results(broken())
    assert store.counts()["results"] == 4                                # all or nothing


def test_has_history_sees_only_imported_results(store):
    assert store.has_history() is False
    handle(Ingest(store, NhsDetector()), result(1, T0, 120.0), 0.0)        # feed: not history
    assert store.has_history() is False
    store.import_results([("2", T0, 80.0)])
    assert store.has_history() is True


def test_history_overlap_counts_shared_and_conflicting_rows(store):
    store.import_results([("1", T0, 100.0), ("1", T0 + 60, 110.0), ("2", T0, 80.0)])
    handle(Ingest(store, NhsDetector()), result(1, T0 + 120, 120.0), 0.0)   # feed: not history
    before = store.counts()
    incoming = [("1", T0, 100.0), ("1", T0 + 60, 111.0), ("3", T0, 1.0), ("1", T0 + 120, 120.0)]
    assert store.history_overlap(iter(incoming)) == (3, 1, 1)
    assert store.history_overlap([]) == (3, 0, 0)                          # again: no leftovers
    assert store.counts() == before


def test_counts(store):
    ing = Ingest(store, NhsDetector())
    handle(ing, admit(7), 0.0)
    handle(ing, result(7, T0, 100.0), 0.0)
    handle(ing, result(8, T0, 100.0), 0.0)
    handle(ing, result(7, T0 + DAY, 250.0), 0.0)
    handle(ing, result("x.", T0, 1.0), 0.0)
    assert store.counts() == {**EMPTY, "patients": 2, "results": 3, "messages": 5,
                              "dead_letters": 1, "pages_pending": 1}


# --- lifecycle --------------------------------------------------------------------------

def test_archive_leaves_an_empty_usable_state(backend, store):
    ing = Ingest(store, NhsDetector())
    for m in (admit(7), result(7, T0, 100.0), result(7, T0 + DAY, 250.0)):
        handle(ing, m, 0.0)
    with store.transaction():
        store.set_meta(created_at="1")
    archived = store.archive("archived-20240301T000000Z")
    assert store.counts() == EMPTY and store.meta() == {} and store.pending_pages() == []
    assert backend.archived_rows(archived, "journal") == 3
    # Usable at once, and after reopening.
    ing = Ingest(store, NhsDetector())
    handle(ing, result(7, T0, 100.0), 0.0)
    assert handle(ing, result(7, T0 + DAY, 250.0), 0.0)[1] is not None
    assert backend.open().counts()["messages"] == 2
    # An archive is never overwritten.
    again = store.archive("archived-20240301T000000Z")
    assert again != archived
    assert backend.archived_rows(archived, "journal") == 3
    assert backend.archived_rows(again, "journal") == 2
    assert store.counts() == EMPTY


def test_the_state_survives_reopening_and_a_newer_schema_is_refused(backend, store):
    ing = Ingest(store, NhsDetector())
    handle(ing, admit(7), 0.0)
    handle(ing, result(7, T0, 100.0), 0.0)
    before = store.counts()
    store.close()
    again = backend.open()
    assert again.counts() == before and again.load_patient("7")[0].sex == "F"
    again.close()
    backend.set_schema_version(SCHEMA_VERSION + 1)
    with pytest.raises(StateError, match="newer"):
        backend.open()


def test_open_store_picks_the_backend(backend, tmp_path):
    if backend.name == "sqlite":
        s = open_store(str(tmp_path), None, "process")
        assert isinstance(s, SqliteStore) and s.path == str(tmp_path / "state.db")
    else:
        from aki_alert.store.postgres import PostgresStore

        s = open_store(str(tmp_path), backend.url, "machine")
        assert isinstance(s, PostgresStore)
        # Both durabilities: a COMMIT is on disk when it returns (see postgres.py).
        assert s.db.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    s.close()
    with pytest.raises(StateError, match="STATE_URL"):
        open_store(str(tmp_path), "mysql://localhost/x", "process")

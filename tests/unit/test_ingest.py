"""The per-message path against a real SQLite file: one transaction, ACK after commit."""

import json
import logging
import sqlite3

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aki_alert.detect import LOOKBACK
from aki_alert.detect.nhs import NhsDetector, nhs_stage
from aki_alert.hospital import messages
from aki_alert.hl7 import acknowledgement
from aki_alert.ingest import KEEP, MAX_ATTEMPTS, Ingest
from aki_alert.store.sqlite import SqliteStore
from aki_alert.timeutil import DAY, format_hl7_time, parse_hl7_date, parse_hl7_time

T0 = parse_hl7_time("20240301080000")


def handle(ing, raw, received):
    """What the service does with one message: its ACK (`Durable.accept`), then applying it
    (these messages decide one page at most)."""
    pages = ing.apply(raw, received)
    assert len(pages) <= 1, pages
    return acknowledgement(raw), pages[0] if pages else None


def result(mrn, t, value):
    return messages.result(t, str(mrn), value)


def admit(mrn, dob="19600101", sex="F"):
    return messages.admission(T0 - DAY, str(mrn), "ANN SMITH", parse_hl7_date(dob), sex)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "state.db"))
    yield s
    s.close()


@pytest.fixture
def ingest(store):
    return Ingest(store, NhsDetector())


def pages(store):
    return [r[0] for r in store.db.execute("SELECT body FROM outbox ORDER BY id")]


def test_a_rise_is_paged_once_with_its_explanation(ingest, store):
    ack, page = handle(ingest, result(7, T0, 100.0), 0.0)
    assert ack.split(b"\r")[1] == b"MSA|AA" and page is None
    ack, page = handle(ingest, result(7, T0 + DAY, 250.0), 0.0)
    assert page is not None and page.body == f"7,{format_hl7_time(T0 + DAY)}"
    assert pages(store) == [page.body]
    exp = json.loads(store.db.execute("SELECT explanation FROM outbox").fetchone()[0])
    assert exp["detector"] == "nhs" and exp["stage"] == 2 and exp["baseline"] == 100.0
    assert store.pending_pages()[0].body == page.body


def test_redelivered_message_changes_nothing(ingest, store):
    handle(ingest, result(7, T0, 100.0), 0.0)
    msg = result(7, T0 + DAY, 250.0)
    assert handle(ingest, msg, 0.0)[1] is not None
    before = store.counts()
    ack, page = handle(ingest, msg, 0.0)
    assert page is None and ack.split(b"\r")[1] == b"MSA|AA"
    assert store.counts() == before


def test_later_positives_of_the_same_episode_are_not_paged(ingest, store):
    handle(ingest, result(7, T0, 100.0), 0.0)
    assert handle(ingest, result(7, T0 + DAY, 250.0), 0.0)[1] is not None
    # No worse than the paged result (stage 2 again): not paged (a markedly worse one may
    # be: re-paging, tests/store/test_repage_ingest.py).
    assert handle(ingest, result(7, T0 + 2 * DAY, 260.0), 0.0)[1] is None
    assert handle(ingest, result(7, T0 + 100 * DAY, 90.0), 0.0)[1] is None
    assert handle(ingest, result(7, T0 + 101 * DAY, 300.0), 0.0)[1] is not None  # a new episode
    assert len(pages(store)) == 2


def test_state_survives_reopening(tmp_path):
    path = str(tmp_path / "state.db")
    s = SqliteStore(path)
    handle(Ingest(s, NhsDetector()), admit(7), 0.0)
    handle(Ingest(s, NhsDetector()), result(7, T0, 100.0), 0.0)
    s.close()
    s = SqliteStore(path)
    ing = Ingest(s, NhsDetector())
    _, page = handle(ing, result(7, T0 + DAY, 250.0), 0.0)
    assert page is not None
    p, episode = s.load_patient("7")
    assert list(p.times) == [T0, T0 + DAY] and p.sex == "F" and episode == T0 + DAY
    s.close()


def test_unparseable_message_is_dead_lettered_and_acknowledged(ingest, store):
    ack, page = handle(ingest, result("a.b", T0, 100.0), 0.0)
    assert ack.split(b"\r")[1] == b"MSA|AA" and page is None
    reason, = store.db.execute("SELECT reason FROM dead_letters").fetchone()
    assert "MRN" in reason


def test_full_disk_is_not_acknowledged_and_loses_nothing(ingest, store):
    handle(ingest, result(7, T0, 100.0), 0.0)
    msg = result(7, T0 + DAY, 250.0)
    pages_used = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages_used}")
    before = store.counts()
    # Fill the remaining room so the next insert cannot fit.
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for i in range(10_000):
            handle(ingest, result(8, T0 + i, 100.0 + i % 7), 0.0)
    stuck = store.counts()
    with pytest.raises(sqlite3.OperationalError, match="full"):
        handle(ingest, msg, 0.0)
    assert store.counts() == stuck
    store.db.execute("PRAGMA max_page_count=1073741823")
    _, page = handle(ingest, msg, 0.0)   # the hospital resends: now it goes through, once
    assert page is not None and pages(store) == [page.body]
    assert store.counts()["messages"] > before["messages"]


class FailsTimes:
    name, version = "fails", "0"

    def __init__(self, times: int) -> None:
        self.left = times

    def judge(self, patient, time, value):
        if self.left:
            self.left -= 1
            raise RuntimeError("bug")
        return NhsDetector().judge(patient, time, value)


def test_a_message_that_always_fails_is_dead_lettered_after_retries(store):
    detector = FailsTimes(MAX_ATTEMPTS)
    ack, page = handle(Ingest(store, detector), result(7, T0, 100.0), 0.0)
    assert ack.split(b"\r")[1] == b"MSA|AA" and page is None
    assert detector.left == 0
    assert "RuntimeError" in store.db.execute("SELECT reason FROM dead_letters").fetchone()[0]
    assert store.counts()["results"] == 0


def test_a_message_that_fails_once_is_applied_on_the_retry(store):
    ing = Ingest(store, FailsTimes(MAX_ATTEMPTS - 1))
    handle(ing, result(7, T0, 100.0), 0.0)
    assert store.db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    assert store.counts()["results"] == 1 and store.counts()["messages"] == 1


def test_same_sample_time_and_value_in_other_bytes_is_a_duplicate_result(ingest, store):
    handle(ingest, result(7, T0, 100.0), 0.0)
    handle(ingest, result(7, T0 + DAY, 250.0), 0.0)
    again = result(7, T0 + DAY, 250.0).replace(b"|250.0", b"|250")
    assert again != result(7, T0 + DAY, 250.0)
    _, page = handle(ingest, again, 0.0)
    assert page is None and len(pages(store)) == 1
    status, = store.db.execute("SELECT status FROM journal ORDER BY id DESC").fetchone()
    assert status == "duplicate-result"


def test_same_sample_time_with_another_value_as_final_is_taken_as_a_correction(ingest, store,
                                                                              caplog):
    """A lab that revises a result without OBX-11 C: its latest value stands, loudly."""
    handle(ingest, result(7, T0, 100.0), 0.0)
    handle(ingest, result(7, T0 + DAY, 250.0), 0.0)
    with caplog.at_level(logging.WARNING, logger="aki_alert.ingest"):
        _, page = handle(ingest, result(7, T0 + DAY, 260.0), 0.0)
    assert page is None and len(pages(store)) == 1          # the same episode: not paged again
    assert "taken as a correction, 250 → 260" in caplog.text
    status, reason = store.db.execute(
        "SELECT status, reason FROM journal ORDER BY id DESC").fetchone()
    assert status == "applied" and "taken as a correction" in reason
    assert store.result_at("7", T0 + DAY)[0] == 260.0


def test_other_message_types_are_journaled_as_ignored(ingest, store):
    handle(ingest, admit(7).replace(b"ADT^A01", b"ADT^A02"), 0.0)
    assert store.db.execute("SELECT status, reason FROM journal").fetchone() == (
        "ignored", "message type ADT^A02 is not used")


def test_results_before_page_from_open_their_episode_but_are_not_sent(store):
    ing = Ingest(store, NhsDetector(), page_from=T0 + 5 * DAY)
    handle(ing, result(7, T0, 100.0), 0.0)
    assert handle(ing, result(7, T0 + DAY, 250.0), 0.0)[1] is None
    assert store.db.execute("SELECT status FROM outbox").fetchall() == [("suppressed",)]
    assert store.pending_pages() == []
    assert handle(ing, result(7, T0 + 6 * DAY, 260.0), 0.0)[1] is None   # same episode
    handle(ing, result(9, T0, 100.0), 0.0)
    assert handle(ing, result(9, T0 + 6 * DAY, 250.0), 0.0)[1] is not None


def test_a_late_older_positive_stays_in_the_episode_and_never_moves_it_back(ingest, store):
    handle(ingest, result(7, T0, 100.0), 0.0)
    assert handle(ingest, result(7, T0 + 3 * DAY, 300.0), 0.0)[1] is not None
    # A result sampled earlier, arriving late (a replay): same injury, not paged.
    assert handle(ingest, result(7, T0 + 2 * DAY, 250.0), 0.0)[1] is None
    assert store.load_patient("7")[1] == T0 + 3 * DAY


def test_evicted_patients_come_back_from_the_state_unchanged(store, monkeypatch):
    import aki_alert.ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "MAX_PATIENTS_IN_MEMORY", 2)
    ing = Ingest(store, NhsDetector())
    handle(ing, admit(7), 0.0)
    handle(ing, result(7, T0, 100.0), 0.0)
    for mrn in (8, 9, 10):                       # push 7 out of memory
        handle(ing, result(mrn, T0, 90.0), 0.0)
    assert "7" not in ing._patients and len(ing._patients) == 2
    _, page = handle(ing, result(7, T0 + DAY, 250.0), 0.0)   # judged on its reloaded history
    assert page is not None
    assert ing._patients["7"].patient.sex == "F"
    for mrn in (11, 12):                         # out again, with its open episode
        handle(ing, result(mrn, T0, 90.0), 0.0)
    assert "7" not in ing._patients
    assert handle(ing, result(7, T0 + 2 * DAY, 260.0), 0.0)[1] is None   # same episode: no page


class Recording(NhsDetector):
    """The NHS detector, remembering what each judgement was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, list[int], list[float]]] = []

    def judge(self, patient, time, value):
        self.seen.append((time, list(patient.times), list(patient.values)))
        return super().judge(patient, time, value)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * 365), st.floats(30.0, 900.0)), min_size=1,
                max_size=40))
@example([(1, 31.0), (1, 30.0), (0, 30.0), (1, 31.0)])   # a revision, then a re-delivery
def test_what_is_held_in_memory_judges_as_the_whole_history(tmp_path_factory, results):
    # Results over three years, in any order (late ones too): each is judged from the results
    # held in memory, which reach back only KEEP, and reloads when a late result needs more.
    # Another value for a sample time already held replaces it, and is judged again; the same
    # message again (the same bytes) is a re-delivery that changes nothing.
    store = SqliteStore(str(tmp_path_factory.mktemp("held") / "state.db"))
    detector = Recording()
    ing = Ingest(store, detector)
    history: dict[int, float] = {}
    sent: set[bytes] = set()
    for day, value in results:
        t = T0 + day * DAY
        message = result(7, t, value)
        ing.apply(message, 0.0)
        if message not in sent and history.get(t) != value:
            time_, times, values = detector.seen[-1]
            earlier = sorted((s, v) for s, v in history.items() if s < t)
            held = [(s, v) for s, v in zip(times, values, strict=True) if s < t]
            window = [(s, v) for s, v in earlier if s >= t - LOOKBACK]
            assert [x for x in held if x[0] >= t - LOOKBACK] == window
            assert nhs_stage(times, values, t, value) == nhs_stage(
                [s for s, _ in earlier], [v for _, v in earlier], t, value)
            history[t] = value
        sent.add(message)
    # Not a lifetime: a new result lets go of what lies more than KEEP (and a month) before it.
    newest = max(history) + DAY
    ing.apply(result(7, newest, 100.0), 0.0)
    assert all(s >= newest - KEEP - 30 * DAY for s in ing._patients["7"].patient.times)
    store.close()


def update(mrn, pid_tail: str) -> bytes:
    return (f"MSH|^~\\&|PAS|X|||{format_hl7_time(T0)}||ADT^A08|||2.5\r"
            f"PID|1||{mrn}{pid_tail}\r").encode()


def test_an_update_changes_what_it_sends_and_keeps_the_rest(ingest, store):
    handle(ingest, admit(7), 0.0)
    handle(ingest, update(7, "||ANN JONES"), 0.0)          # no date of birth, no sex
    name, birth, sex = store.db.execute(
        "SELECT name, birth, sex FROM patients WHERE mrn = '7'").fetchone()
    assert name == "ANN JONES" and birth is not None and sex == "F"
    handle(ingest, update(7, "||||19500101|M"), 0.0)
    p, _ = store.load_patient("7")
    assert p.sex == "M" and store.db.execute(
        "SELECT name FROM patients WHERE mrn = '7'").fetchone() == ("ANN JONES",)


@pytest.mark.parametrize("number", ["RVJ1001", "0001204"])
def test_a_trusts_history_is_found_by_the_numbers_the_feed_files_under(tmp_path, number):
    """Start-up's history import keys results by the MRN rule and the feed profile's
    normalisation, as parse does PID-3: a result for `1204` sent as `0001204` (leading zeros
    stripped), or for the alphanumeric `RVJ1001`, is judged against its history and pages."""
    import argparse

    from aki_alert import config
    from aki_alert.startup import open_state, reconcile

    (tmp_path / "history.csv").write_text("mrn,creatinine_date_0,creatinine_result_0\n"
                                          f"{number},2024-02-29 08:00:00,80\n")
    (tmp_path / "feed.toml").write_text("[patient]\nstrip_leading_zeros = true\n")
    cfg = config.load(argparse.Namespace(), {
        "MLLP_ADDRESS": "hospital:8440", "PAGER_ADDRESS": "hospital:8441",
        "HISTORY_PATH": str(tmp_path / "history.csv"), "STATE_DIR": str(tmp_path / "state"),
        "FEED_PROFILE": str(tmp_path / "feed.toml"), "DETECTOR": "nhs"})
    store = open_state(cfg)
    try:
        assert reconcile(store, cfg)
        ing = Ingest(store, NhsDetector(), profile=cfg.feed_profile)
        (page,) = ing.apply(messages.result(T0, number, 250.0), 0.0)
        mrn = number.lstrip("0")
        assert page is not None and page.body == f"{mrn},{format_hl7_time(T0)}"
        assert store.load_patient(mrn)[0].values[0] == 80.0
    finally:
        store.close()


def unknown_creatinine(mrn, t, code):
    ts = format_hl7_time(t)
    return (f"MSH|^~\\&|LAB|RVJ|||{ts}||ORU^R01|||2.5\rPID|1||{mrn}\rOBR|1||||||{ts}\r"
            f"OBX|1|NM|{code}^Creatinine serum^L||90|umol/L|||||F\r").encode()


def test_unrecognised_creatinine_codes_are_labelled_with_bounded_cardinality(
        ingest, store, monkeypatch):
    from prometheus_client import REGISTRY

    from aki_alert import metrics

    monkeypatch.setattr(metrics, "_unrecognised_codes", set())

    def count(code):
        return REGISTRY.get_sample_value("aki_unrecognised_creatinine_total",
                                         {"code": code}) or 0.0

    long_code = "X" * 40
    codes = [long_code] + [f"CRX{i}" for i in range(metrics.MAX_UNRECOGNISED_CODES + 9)]
    before = {c: count(c) for c in ("X" * 32, "CRX0", "CRX48", "CRX49", "CRX58", "other")}
    for i, code in enumerate(codes):
        ingest.apply(unknown_creatinine(100 + i, T0 + i, code), 0.0)
    ingest.apply(unknown_creatinine(99, T0, "CRX0"), 0.0)   # a code seen before keeps its label
    assert count("X" * 32) - before["X" * 32] == 1               # cut to 32 characters
    assert count("CRX0") - before["CRX0"] == 2
    assert count("CRX48") - before["CRX48"] == 1                  # the 50th distinct code
    assert count("CRX49") == before["CRX49"] and count("CRX58") == before["CRX58"]
    assert count("other") - before["other"] == 10                 # CRX49 … CRX58
    assert len(metrics._unrecognised_codes) == metrics.MAX_UNRECOGNISED_CODES
    # Every one is still journaled, with its code in the reason.
    reasons = [r for (r,) in store.db.execute("SELECT reason FROM journal WHERE status = "
                                              "'ignored' ORDER BY id")]
    assert len(reasons) == len(codes) + 1 and "CRX58" in reasons[-2]


def test_dead_lettered_results_are_counted_apart(ingest, store):
    from prometheus_client import REGISTRY

    def dead_results():
        return REGISTRY.get_sample_value("aki_results_dead_lettered_total") or 0.0

    before = dead_results()
    ts = format_hl7_time(T0)
    bad_unit = (f"MSH|^~\\&|LAB|RVJ|||{ts}||ORU^R01|||2.5\rPID|1||7\rOBR|1||||||{ts}\r"
                "OBX|1|NM|CREATININE||90|furlongs|||||F\r").encode()
    ingest.apply(bad_unit, 0.0)
    assert dead_results() - before == 1
    bad_adt = (f"MSH|^~\\&|PAS|RVJ|||{ts}||ADT^A01|||2.5\rPID|1||7||X||notadate|F\r").encode()
    ingest.apply(bad_adt, 0.0)
    ingest.apply(b"garbage", 0.0)
    assert dead_results() - before == 1
    assert [r for (r,) in store.db.execute("SELECT status FROM journal")] == ["dead"] * 3


@pytest.mark.parametrize("raw, says", [
    (b"MSH|^~\\&|A|B|||20240301||ORU^R01|1|P|2.5\rPID|1||7", True),
    (b"\n  MSH#^~\\&#A#B###2024##oru^r30^ORU_R30#", True),
    (b"MSH|^~\\&|A|B|||20240301||ADT^A01|1|P|2.5\r", False),
    (b"MSH|^~\\&|A|B|||x\rOBX|ORU|ORU|ORU|ORU|ORU|ORU|ORU|ORU", False),
    (b"garbage", False), (b"MSH", False), (b"", False),
])
def test_is_result_message_reads_msh_9_only(raw, says):
    from aki_alert.ingest import is_result_message

    assert is_result_message(raw) is says


def corrected(mrn, t, value: float) -> bytes:
    return result(mrn, t, value).replace(f"||{value}".encode(),
                                         f"||{value}|umol/L|||||C".encode())


def test_a_paged_result_corrected_to_no_injury_closes_its_episode(ingest, store):
    handle(ingest, result(7, T0, 80.0), 0.0)
    assert handle(ingest, result(7, T0 + DAY, 250.0), 0.0)[1] is not None
    assert handle(ingest, corrected(7, T0 + DAY, 85.0), 0.0)[1] is None
    assert store.load_patient("7")[1] is None                      # no episode any more
    page = handle(ingest, result(7, T0 + 4 * DAY, 250.0), 0.0)[1]
    assert page is not None and page.body == f"7,{format_hl7_time(T0 + 4 * DAY)}"


@pytest.mark.parametrize("mode", ["plain", "hashed", "none"])
def test_log_lines_show_the_mrn_as_log_patient_ids_says(ingest, store, caplog, mode):
    """LOG_PATIENT_IDS: an ingest of a paging result (and a dead letter quoting an invalid
    MRN) logs the MRN, its keyed hash, or neither; the page itself keeps the MRN."""
    import hashlib
    import hmac
    import logging

    from aki_alert import logs

    key = "k" * 32
    logs.set_patient_ids(mode, key if mode == "hashed" else "")
    try:
        with caplog.at_level(logging.INFO):
            handle(ingest, result(987654321, T0, 100.0), 0.0)
            _, page = handle(ingest, result(987654321, T0 + DAY, 250.0), 0.0)
            handle(ingest, result("BAD_123456", T0, 100.0), 0.0)      # invalid: dead letter
    finally:
        logs.set_patient_ids("plain")
    assert page is not None and page.body.startswith("987654321,")
    text = caplog.text
    assert "page decided" in text and "dead letter" in text
    tag = "mrn#" + hmac.new(key.encode(), b"987654321", hashlib.sha256).hexdigest()[:12]
    if mode == "plain":
        assert "987654321" in text and "BAD_123456" in text and "mrn#" not in text
    elif mode == "hashed":
        assert "987654321" not in text and "BAD_123456" not in text
        assert f"page decided: {tag}," in text
    else:
        assert "987654321" not in text and "BAD_123456" not in text and tag not in text
        assert "page decided: mrn#-," in text


def test_a_positive_that_is_not_paged_says_why_in_the_journal(ingest, store):
    handle(ingest, result(7, T0, 100.0), 0.0)
    assert handle(ingest, result(7, T0 + DAY, 250.0), 0.0)[1] is not None
    assert handle(ingest, result(7, T0 + 2 * DAY, 240.0), 0.0)[1] is None   # no worse
    status, reason = store.db.execute(
        "SELECT status, reason FROM journal ORDER BY id DESC LIMIT 1").fetchone()
    assert status == "applied" and "positive, not paged" in reason


def test_a_failure_of_the_parser_itself_is_answered_ae_and_dead_lettered(ingest, store,
                                                                        monkeypatch, caplog):
    """A parser bug (not an HL7Error) on one message: the ACK says AE, the message is a dead
    letter with the reason, its stack is logged; nothing is stuck or left without a decision."""
    import importlib

    from aki_alert.hl7 import verdict

    parse_module = importlib.import_module("aki_alert.hl7.parse")   # the module, not `parse`

    def broken(raw, profile):
        raise IndexError("list index out of range")

    monkeypatch.setattr(parse_module, "parse", broken)
    raw = result(7, T0, 100.0)
    code, error = verdict(raw)
    assert code == "AE" and "parser failure" in str(error)
    assert not ingest.apply(raw, 0.0)
    status, reason = store.db.execute("SELECT status, reason FROM journal").fetchone()
    assert status == "dead" and reason.startswith("parser failure: IndexError")
    assert "the HL7 parser failed on a message" in caplog.text

"""The console's read-only queries against a state built by the service's store (SQLite or
PostgreSQL) + Ingest: the same queries, the same answers on both backends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from console_testkit import EVIL_NAME, T0, build_revisions_state, build_state, open_state, write
from prometheus_client import CollectorRegistry, Counter, Gauge

from aki_alert.console import queries
from aki_alert.timeutil import DAY, HOUR, format_hl7_time


@pytest.fixture
def db(state):
    conn = queries.connect(state["state"])
    yield conn
    conn.close()


def test_alerts_newest_first_with_explanation_and_delivery(db, state):
    data = queries.alerts(db)
    assert [a.mrn for a in data.alerts] == ["74", "72", "71", "7"]
    by = {a.mrn: a for a in data.alerts}
    assert {m: a.result_time for m, a in by.items()} == state["pages"]
    assert {m: a.delivery for m, a in by.items()} == {
        "7": "delivered", "71": "dead", "72": "retrying", "74": "suppressed"}
    a7 = by["7"]
    assert (a7.detector, a7.version, a7.stage, a7.baseline, a7.ratio, a7.score, a7.threshold) \
        == ("nhs", "nhs-england-2014", 2, 100.0, 2.5, 2.0, 1.0)
    assert a7.value == 250.0 and a7.name == EVIL_NAME and a7.delivered_at is not None
    assert by["71"].last_error == "400 Bad Request: unknown MRN" and by["71"].name is None
    assert data.by_status == {"delivered": 1, "dead": 1, "retrying": 1, "suppressed": 1}
    assert data.older_than is None


def test_alerts_paginate_by_id(db):
    first = queries.alerts(db, limit=2)
    assert [a.mrn for a in first.alerts] == ["74", "72"] and first.older_than is not None
    second = queries.alerts(db, limit=2, before=first.older_than)
    assert [a.mrn for a in second.alerts] == ["71", "7"] and second.older_than is None


def test_patient_view(db, state):
    p = queries.patient(db, "7")
    assert p.name == EVIL_NAME and p.sex == "F" and p.admitted and p.birth is not None
    assert [(r.time, r.value, r.source) for r in p.results] == [
        (T0 - 30 * DAY, 95.0, "history"), (T0 - 20 * DAY, 100.0, "history"),
        (T0 - 10 * DAY, 105.0, "history"), (T0, 100.0, "feed"), (T0 + DAY, 250.0, "feed")]
    assert [(s.start, s.end) for s in p.stays] == [(T0 - HOUR, T0 + 3 * DAY),
                                                    (T0 + 10 * DAY, None)]
    assert [a.result_time for a in p.pages] == [state["pages"]["7"]]
    assert p.episode_start == state["pages"]["7"] and not p.truncated


def test_a_patients_pages_are_only_their_own(db):
    # MRN 7's body range ['7,', '7-') must not take 71's or 72's pages.
    assert [a.mrn for a in queries.patient(db, "7").pages] == ["7"]
    assert [a.mrn for a in queries.patient(db, "71").pages] == ["71"]


def test_history_only_patient_and_unknown_mrn(db):
    p = queries.patient(db, "73")
    assert p.name is None and p.birth is None and len(p.results) == 1 and p.pages == []
    assert queries.patient(db, "999") is None


def test_sqlite_queries_use_indexes_that_exist(db, state):
    if state["backend"] != "sqlite":
        pytest.skip("SQLite's query plans")

    def plan(sql, args=()):
        return " ".join(r[-1] for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))

    assert "USING INDEX sqlite_autoindex_outbox_1 (body>? AND body<?)" in plan(
        "SELECT id FROM outbox o WHERE o.body >= ? AND o.body < ? AND o.mrn = ?",
        ("7,", "7-", "7"))
    assert "USING INDEX outbox_pending" in plan(
        "SELECT count(*), min(created_at) FROM outbox WHERE status = 'pending'")
    assert "INTEGER PRIMARY KEY (rowid>?)" in plan(
        "SELECT id FROM journal WHERE id > ? AND status = 'dead' ORDER BY id DESC LIMIT 50",
        (1,))
    assert "PRIMARY KEY (mrn=?)" in plan(
        "SELECT time, value, source FROM results WHERE mrn = ? ORDER BY time DESC", ("7",))
    # The results since a page (each alert row), the pages pending too long.
    assert "PRIMARY KEY (mrn=? AND time>?)" in plan(
        "SELECT count(*) FROM results r WHERE r.mrn = ? AND r.time > ?", ("7", 0))
    assert "USING INDEX outbox_pending" in plan(
        "SELECT count(*) FROM outbox WHERE status = 'pending' AND created_at < ?", (0.0,))


def test_postgres_queries_use_indexes_that_exist(db, state):
    if state["backend"] != "postgresql":
        pytest.skip("PostgreSQL's query plans")
    db.execute("SET enable_seqscan = off")       # the tables are tiny: plan as for a big state

    def plan(sql, args=()):
        return " ".join(r[0] for r in db.execute("EXPLAIN " + sql, args))

    assert "Backward using outbox_pkey" in plan(
        "SELECT id FROM outbox o ORDER BY o.id DESC LIMIT ?", (5,))
    assert "outbox_pending" in plan(
        "SELECT count(*), min(created_at) FROM outbox WHERE status = 'pending'")
    assert "journal_pkey" in plan(
        "SELECT id FROM journal WHERE id > ? AND status = 'dead' ORDER BY id DESC LIMIT 50",
        (1,))
    assert "results_pkey" in plan(
        "SELECT time, value, source FROM results WHERE mrn = ? ORDER BY time DESC", ("7",))
    assert "admissions_mrn" in plan(
        "SELECT event, time FROM admissions WHERE mrn = ? ORDER BY time, id", ("7",))
    assert "results_pkey" in plan(
        "SELECT count(*) FROM results r WHERE r.mrn = ? AND r.time > ?", ("7", 0))
    assert "outbox_pending" in plan(
        "SELECT count(*) FROM outbox WHERE status = 'pending' AND created_at < ?", (0.0,))


def test_a_patients_pages_are_found_whatever_the_database_collation(postgres_url):
    # English collations ignore punctuation: '7,20240302080000' sorts after '7-' there.
    build_state(postgres_url)
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_url, autocommit=True) as w:
        if not w.execute("SELECT 1 FROM pg_collation WHERE collname = 'en-x-icu'").fetchone():
            pytest.skip("this PostgreSQL has no ICU collations")
        w.execute('ALTER TABLE outbox ALTER COLUMN body TYPE text COLLATE "en-x-icu"')
    db = queries.connect(postgres_url)
    try:
        assert [a.mrn for a in queries.patient(db, "7").pages] == ["7"]
        assert [a.mrn for a in queries.patient(db, "72").pages] == ["72"]
    finally:
        db.close()


def test_service_view(db):
    now = time.time()
    v = queries.service(db, now=now)
    assert v.meta["environment"] == "test-hospital" and v.meta["detector"] == "nhs"
    assert v.messages == 12 and v.per_minute[-1] == 12 and sum(v.per_minute) == 12
    assert v.pending == 1 and v.oldest_pending is not None
    assert v.by_status["retrying"] == 1 and v.last_delivered is not None
    (dead,) = v.dead_letters
    assert dead.kind == "unparseable" and "MSH" in dead.reason
    assert dead.preview == "this is not HL7 at all"
    assert {e.mrn: e.last_error for e in v.outbox_errors} == {
        "71": "400 Bad Request: unknown MRN", "72": "connection refused"}
    later = queries.service(db, now=now + 150)       # the messages are now 2–3 minutes old
    assert sum(later.per_minute) == 12 and later.per_minute[-1] == 0
    assert sum(queries.service(db, now=now + 600).per_minute) == 0


def test_message_rate_buckets(new_state):
    build_state(new_state)
    now = time.time()
    # Spread the 12 journaled messages over the last minutes: ids 1..12.
    ages = [290, 280, 200, 190, 180, 130, 100, 70, 50, 30, 10, 1]
    write(new_state, "UPDATE journal SET received_at = ? WHERE id = ?",
          [(now - age, i) for i, age in enumerate(ages, start=1)])
    db = queries.connect(new_state)
    try:
        # [now-300, now-240) [-240, -180) [-180, -120) [-120, -60) [-60, now]
        assert queries.service(db, now=now).per_minute == [2, 2, 2, 2, 4]
    finally:
        db.close()


def test_empty_state(new_state):
    open_state(new_state).close()
    db = queries.connect(new_state)
    try:
        assert queries.alerts(db).alerts == []
        v = queries.service(db)
        assert v.messages == 0 and v.per_minute == [0] * 5 and v.dead_letters == []
    finally:
        db.close()


def test_a_state_not_created_yet_is_unavailable(new_state):
    if not new_state.startswith("postgresql://"):
        Path(new_state).touch()              # an empty file: no tables yet
    with pytest.raises(queries.StateUnavailable), queries.reading(new_state) as db:
        queries.alerts(db)


def test_the_postgres_reader_is_read_only_and_time_limited(state, monkeypatch):
    if state["backend"] != "postgresql":
        pytest.skip("PostgreSQL's session settings")
    monkeypatch.setattr(queries, "STATEMENT_TIMEOUT_MS", 100)
    started = time.monotonic()
    with pytest.raises(queries.StateUnavailable, match="statement timeout"), \
            queries.reading(state["state"]) as db:
        assert db.execute("SHOW transaction_read_only").fetchone() == ("on",)
        db.execute("SELECT pg_sleep(5)")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("url, says", [
    ("postgresql://aki:s3cret-pw@127.0.0.1:1/aki", "state user=aki dbname=aki host=127.0.0.1"),
    ("postgresql://127.0.0.1:1/aki?user=aki&password=s3cret-pw", "state user=aki dbname=aki"),
    # libpq's own error quotes this one's password: "invalid percent-encoded token".
    ("postgresql://aki:s3cret-pw%zz@127.0.0.1/aki", "not a valid PostgreSQL URL"),
])
def test_a_state_urls_password_is_never_in_an_error(url, says):
    pytest.importorskip("psycopg")
    with pytest.raises(queries.StateUnavailable) as e:
        queries.connect(url)                          # nothing listens on port 1
    assert says in str(e.value) and "s3cret" not in str(e.value)


def test_process_metrics_from_a_registry():
    reg = CollectorRegistry()
    Gauge("aki_mllp_connected", "c", registry=reg).set(1)
    c = Counter("aki_messages_received_total", "m", ["type"], registry=reg)
    c.labels(type="result").inc(5)
    c.labels(type="admission").inc(2)
    Counter("aki_pages_total", "p", ["outcome"], registry=reg).labels(outcome="delivered").inc()
    pm = queries.process_metrics(reg.collect())
    assert pm.connected == 1 and pm.received == {"result": 5, "admission": 2}
    assert pm.pages == {"delivered": 1} and pm.provenance_mismatch is None
    empty = queries.process_metrics(CollectorRegistry().collect())
    assert empty.connected is None and empty.received == {}


# --- a trust's feed: statuses, corrections, withdrawals, merges --------------------------------

@pytest.fixture
def rev_db(new_state):
    build_revisions_state(new_state)
    conn = queries.connect(new_state)
    yield conn
    conn.close()


def test_results_carry_their_status_and_comparator(rev_db):
    p = queries.patient(rev_db, "RVJ1001")
    assert [(r.time, r.value, r.status, r.comparator) for r in p.results] == [
        (T0, 110.0, "C", None), (T0 + DAY, 10.0, "F", "<"), (T0 + 4 * DAY, 120.0, "P", None)]


def test_corrected_and_withdrawn_values_are_kept_with_what_withdrew_them(rev_db):
    p = queries.patient(rev_db, "RVJ1001")
    assert [(r.time, r.value, r.action, r.withdrawn, r.mrn) for r in p.revisions] == [
        (T0, 100.0, "corrected", None, "RVJ1001"),
        (T0 + 2 * DAY, 300.0, "removed", "W", "RVJ1001"),
        (T0 + 3 * DAY, 150.0, "removed", "D", "RVJ1001")]
    assert p.merged_into is None and p.merged_from == []


def test_a_merged_away_number_points_at_its_survivor(rev_db):
    p = queries.patient(rev_db, "2001")
    assert p is not None and p.results == [] and p.name is None and p.pages == []
    assert (p.merged_into.old_mrn, p.merged_into.new_mrn) == ("2001", "2002")
    assert p.merged_into.merged_at > 0
    assert [(r.time, r.value, r.action, r.new_mrn) for r in p.revisions] == [
        (T0, 80.0, "merged", "2002"), (T0 + DAY, 250.0, "merged", "2002")]


def test_the_survivor_shows_the_merge_and_the_merged_numbers_pages(rev_db):
    p = queries.patient(rev_db, "2002")
    assert p.merged_into is None
    assert [(m.old_mrn, m.new_mrn) for m in p.merged_from] == [("2001", "2002")]
    # 2002 kept its own result at T0; 2001's other one moved in, with its page and admission.
    assert [(r.time, r.value) for r in p.results] == [
        (T0, 90.0), (T0 + DAY, 250.0), (T0 + 2 * DAY, 95.0)]
    assert [a.body for a in p.pages] == [f"2001,{format_hl7_time(T0 + DAY)}"]
    assert p.name == "BOB JONES" and [s.start for s in p.stays] == [T0 - HOUR]
    assert {(r.mrn, r.time, r.action) for r in p.revisions} == {
        ("2001", T0, "merged"), ("2001", T0 + DAY, "merged")}
    # The moved page is the survivor's only: no other patient's range takes it.
    assert queries.patient(rev_db, "2001").pages == []


def test_withdrawn_as_reads_the_journal_reason():
    t = T0 + DAY
    reason = (f"CREATININE {format_hl7_time(T0)} D: removed; "
              f"CREATININE {format_hl7_time(t)[:12]} W: removed")
    assert queries._withdrawn_as(reason, T0) == "D"
    assert queries._withdrawn_as(reason, t) == "W"
    assert queries._withdrawn_as(reason, T0 + HOUR) is None
    assert queries._withdrawn_as(None, T0) is None


# --- what the clinician needs: the results since a page, the pages not delivered ---------------

def test_the_latest_result_since_each_page(clinical):
    from console_testkit import MRN32

    db = queries.connect(clinical["state"])
    try:
        by = {a.mrn: a for a in queries.alerts(db).alerts}
    finally:
        db.close()
    assert (by["ABS1"].since_count, by["ABS1"].latest_time, by["ABS1"].latest_value) == (
        2, T0 + 3 * DAY, 250.0)
    assert (by["RISE1"].since_count, by["RISE1"].latest_value) == (1, 96.0)
    assert (by[MRN32].since_count, by[MRN32].latest_time) == (0, None)


def test_pages_not_delivered_are_counted_and_listed(clinical):
    from console_testkit import MRN32

    db = queries.connect(clinical["state"])
    try:
        data = queries.alerts(db)
        v = queries.service(db)
        later = queries.alerts(db, now=time.time() + 3600)
    finally:
        db.close()
    assert data.undelivered == 2                       # RISE1 dead, MRN32 pending 10 min
    assert later.undelivered == 3                      # FRESH is overdue an hour later
    assert v.undelivered_count == 2
    assert [(a.mrn, a.status, a.last_error) for a in v.undelivered] == [
        (MRN32, "pending", "timeout"), ("RISE1", "dead", "400 Bad Request: unknown MRN")]
    now = time.time()
    assert {a.mrn for a in data.alerts if a.not_delivered(now)} == {"RISE1", MRN32}

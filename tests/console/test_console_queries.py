"""The console's read-only queries against a state built by SqliteStore + Ingest."""

from __future__ import annotations

import sqlite3
import time

import pytest
from console_testkit import EVIL_NAME, T0, build_state
from prometheus_client import CollectorRegistry, Counter, Gauge

from aki_alert.console import queries
from aki_alert.timeutil import DAY, HOUR


@pytest.fixture
def db(state):
    conn = queries.connect(state["path"])
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


def test_queries_use_indexes_that_exist(db):
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


def test_message_rate_buckets(tmp_path):
    path = str(tmp_path / "state.db")
    build_state(path)
    now = time.time()
    w = sqlite3.connect(path)
    # Spread the 12 journaled messages over the last minutes: ids 1..12.
    ages = [290, 280, 200, 190, 180, 130, 100, 70, 50, 30, 10, 1]
    for i, age in enumerate(ages, start=1):
        w.execute("UPDATE journal SET received_at = ? WHERE id = ?", (now - age, i))
    w.commit()
    w.close()
    db = queries.connect(path)
    try:
        # [now-300, now-240) [-240, -180) [-180, -120) [-120, -60) [-60, now]
        assert queries.service(db, now=now).per_minute == [2, 2, 2, 2, 4]
    finally:
        db.close()


def test_empty_state(tmp_path):
    from aki_alert.store.sqlite import SqliteStore

    path = str(tmp_path / "state.db")
    SqliteStore(path).close()
    db = queries.connect(path)
    try:
        assert queries.alerts(db).alerts == []
        v = queries.service(db)
        assert v.messages == 0 and v.per_minute == [0] * 5 and v.dead_letters == []
    finally:
        db.close()


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

"""Helpers of the console tests: a small state built by the real ingest path from hand-made
HL7 messages, on either backend (a SQLite file's path or a postgresql:// URL), and an HTTP
client."""

from __future__ import annotations

import base64
import http.client

from aki_alert.detect.nhs import NhsDetector
from aki_alert.ingest import Ingest
from aki_alert.store import is_postgres_url
from aki_alert.store.sqlite import SqliteStore
from aki_alert.timeutil import DAY, HOUR, format_hl7_time, parse_hl7_time

TOKEN = "t0ken-for-tests"
T0 = parse_hl7_time("20240301080000")
EVIL_NAME = "<script>alert(1)</script> O'BRIEN \"X\""


def result(mrn, t, value):
    ts = format_hl7_time(t)
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{ts}||ORU^R01|||2.5\rPID|1||{mrn}\r"
            f"OBR|1||||||{ts}\rOBX|1|SN|CREATININE||{value}\r").encode()


def admit(mrn, t, name="ANN SMITH", dob="19600101", sex="F"):
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{format_hl7_time(t)}||ADT^A01|||2.5\r"
            f"PID|1||{mrn}||{name}||{dob}|{sex}\r").encode()


def discharge(mrn, t):
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{format_hl7_time(t)}||ADT^A03|||2.5\r"
            f"PID|1||{mrn}\r").encode()


def open_state(state: str):
    """The service's store of a state: a SQLite file's path or a postgresql:// URL."""
    if is_postgres_url(state):
        from aki_alert.store.postgres import PostgresStore
        return PostgresStore(state)
    return SqliteStore(state)


def write(state: str, sql: str, rows) -> None:
    """Run a statement of the stores' shared SQL (`?` placeholders) once per row, committed."""
    store = open_state(state)
    try:
        with store.transaction():
            for row in rows:
                store.query(sql, *row)
    finally:
        store.close()


def build_state(state: str) -> dict:
    """Patients: 7 (evil name; admitted, discharged, readmitted; paged, delivered), 71 (paged;
    the pager refused: dead), 72 (paged, retrying), 73 (history only, never paged), 74 (paged
    in a replay: suppressed), a dead letter. Returns what the tests check against."""
    store = open_state(state)
    ingest = Ingest(store, NhsDetector())
    with store.transaction():
        store.set_meta(environment="test-hospital", history_sha256="ab" * 32,
                       detector="nhs", detector_version="nhs-england-2014")
    store.import_results([("7", T0 - 30 * DAY, 95.0), ("7", T0 - 20 * DAY, 100.0),
                          ("7", T0 - 10 * DAY, 105.0), ("73", T0 - 5 * DAY, 80.0)])
    msgs = [
        admit(7, T0 - HOUR, name=EVIL_NAME),
        result(7, T0, 100.0),
        result(7, T0 + DAY, 250.0),           # ratio 2.5 over RV1 = 100: stage 2, paged
        discharge(7, T0 + 3 * DAY),
        admit(7, T0 + 10 * DAY, name=EVIL_NAME),
        result(71, T0, 90.0),
        result(71, T0 + DAY, 300.0),          # stage 3, paged
        result(72, T0 + 2 * DAY, 60.0),
        result(72, T0 + 2 * DAY + 6 * HOUR, 95.0),   # +35 in 48 h, ratio 1.58: stage 1
        b"this is not HL7 at all",
    ]
    for m in msgs:
        ingest.apply(m, 0.0)
    replay = Ingest(store, NhsDetector(), page_from=T0 + 365 * DAY)   # 74: a replayed page
    for m in (result(74, T0 + 4 * DAY, 70.0), result(74, T0 + 5 * DAY, 160.0)):
        replay.apply(m, 0.0)
    ids = dict(store.db.execute("SELECT mrn, id FROM outbox"))
    bodies = dict(store.db.execute("SELECT mrn, body FROM outbox"))
    with store.transaction():
        store.page_delivered(bodies["7"], 1)
        store.page_failed(bodies["71"], 1, "400 Bad Request: unknown MRN", dead=True)
        store.page_failed(bodies["72"], 2, "connection refused", dead=False)
    store.close()
    return {"pages": {"7": T0 + DAY, "71": T0 + DAY, "72": T0 + 2 * DAY + 6 * HOUR,
                      "74": T0 + 5 * DAY},
            "ids": ids}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Response:
    def __init__(self, r: http.client.HTTPResponse) -> None:
        self.status = r.status
        self.headers = r.headers
        self.text = r.read().decode("utf-8")


def request(server, path: str, auth: str | None = f"Bearer {TOKEN}",
            method: str = "GET") -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"Authorization": auth} if auth is not None else {}
        conn.request(method, path, headers=headers)
        return Response(conn.getresponse())
    finally:
        conn.close()


def lab_result(mrn, t, value, status="F", sent=None, kind="NM"):
    """A result with an OBX-11 status and an SN value (`<^10`) or none (W, D); `sent`: MSH-7,
    so that a correction of the same sample is other bytes."""
    ts = format_hl7_time(t)
    obx = ["OBX", "1", kind, "CREATININE", "", "" if value is None else str(value), "umol/L",
           "", "", "", "", status]
    return (f"MSH|^~\\&|LAB|RVJ|||{format_hl7_time(sent or t)}||ORU^R01|||2.5\r"
            f"PID|1||{mrn}\rOBR|1||||||{ts}\r{'|'.join(obx)}\r").encode()


def merge(old, new, t):
    return (f"MSH|^~\\&|PAS|RVJ|||{format_hl7_time(t)}||ADT^A40|||2.5\rPID|1||{new}\r"
            f"MRG|{old}\r").encode()


def build_revisions_state(state: str) -> None:
    """A trust's feed: RVJ1001 has a corrected result, a censored one (<10), a preliminary one
    and two withdrawn ones (W, D); 2001 (paged, admitted) is merged into 2002, which had its
    own result at one of 2001's sample times."""
    store = open_state(state)
    ingest = Ingest(store, NhsDetector())
    msgs = [
        lab_result("RVJ1001", T0, 100.0),
        lab_result("RVJ1001", T0, 110.0, "C", sent=T0 + HOUR),
        lab_result("RVJ1001", T0 + DAY, "<^10", kind="SN"),
        lab_result("RVJ1001", T0 + 2 * DAY, 300.0),
        lab_result("RVJ1001", T0 + 2 * DAY, None, "W", sent=T0 + 2 * DAY + HOUR),
        lab_result("RVJ1001", T0 + 3 * DAY, 150.0),
        lab_result("RVJ1001", T0 + 3 * DAY, None, "D", sent=T0 + 3 * DAY + HOUR),
        lab_result("RVJ1001", T0 + 4 * DAY, 120.0, "P"),
        admit(2001, T0 - HOUR, name="BOB JONES", sex="M"),
        lab_result(2001, T0, 80.0),
        lab_result(2001, T0 + DAY, 250.0),        # stage 3 over RV1 80: paged as 2001
        lab_result(2002, T0, 90.0),               # 2002's own result at 2001's first time
        lab_result(2002, T0 + 2 * DAY, 95.0),
        merge(2001, 2002, T0 + 5 * DAY),
    ]
    for m in msgs:
        ingest.apply(m, 0.0)
    store.close()


MRN32 = "K1234567890ABCDEFGHIJ1234567890X"       # MAX_MRN_LENGTH: what the feed may send
RTL_NAME = "محمد عبد الله بن عبد الرحمن الهاشمي القرشي المكي"   # > NAME_MAX, right to left


def build_clinical_state(state: str) -> dict:
    """Pages of each NHS rule and delivery fate:

    - ABS1: 168 then 380 (ratio 2.26, > 354 µmol/L): stage 3 by the absolute rule; delivered;
      then 300 and 250 since the page (falling).
    - RISE1: 60 then 89 a day later (ratio 1.48, +29 µmol/L in 48 h): stage 1 by the rise; the
      pager refused it (dead), 96 since (steady).
    - MRN32 (32 characters, admitted with a long right-to-left name): 100 then 250, stage 2 by
      the ratio; still pending 10 minutes after it was decided (not delivered), no result since.
    - FRESH: paged a moment ago, pending (not overdue).
    """
    store = open_state(state)
    ingest = Ingest(store, NhsDetector())
    msgs = [
        result("ABS1", T0, 168.0), result("ABS1", T0 + DAY, 380.0),
        result("ABS1", T0 + 2 * DAY, 300.0), result("ABS1", T0 + 3 * DAY, 250.0),
        result("RISE1", T0, 60.0), result("RISE1", T0 + DAY, 89.0),
        result("RISE1", T0 + 2 * DAY, 96.0),
        admit(MRN32, T0 - HOUR, name=RTL_NAME, sex="M"),
        result(MRN32, T0, 100.0), result(MRN32, T0 + DAY, 250.0),
        result("FRESH", T0, 100.0), result("FRESH", T0 + DAY, 160.0),
    ]
    for m in msgs:
        ingest.apply(m, 0.0)
    bodies = dict(store.db.execute("SELECT mrn, body FROM outbox"))
    with store.transaction():
        store.page_delivered(bodies["ABS1"], 1)
        store.page_failed(bodies["RISE1"], 1, "400 Bad Request: unknown MRN", dead=True)
        store.page_failed(bodies[MRN32], 4, "timeout", dead=False)
    store.close()
    write(state, "UPDATE outbox SET created_at = created_at - 600 WHERE mrn = ?", [(MRN32,)])
    return {"pages": {"ABS1": T0 + DAY, "RISE1": T0 + DAY, MRN32: T0 + DAY, "FRESH": T0 + DAY}}

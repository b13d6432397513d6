"""Read-only SQL against the service's state, returning plain dataclasses (no HTML here).

The state is a SQLite file or a PostgreSQL database (`connect(state)` takes the file's path or
a postgresql:// URL); the queries are written once, with `?` placeholders, and run through a
`Reader`, which translates them for psycopg as store/postgres.py does. Every query is short,
bounded by a LIMIT or an indexed range, and runs on a connection of its own, read-only:

- SQLite: `mode=ro` (never creates the file) and `PRAGMA query_only`; in WAL mode a reader sees
  the last committed transaction and never blocks the writer.
- PostgreSQL: autocommit, `default_transaction_read_only = on` and a `statement_timeout`; MVCC
  readers never block the writer either. One connection per request, as with SQLite: opening
  it costs ~6 ms on loopback (measured; a page takes 9–20 ms in all, 1.6 ms on SQLite), which
  nobody notices on a page a human asks for. In exchange no server connection is held between
  requests, none needs reconnecting after a server restart or a failover, and none is shared
  between the request threads (at most server.MAX_BUSY connections at once).

Indexes used (all created by the stores, none added here; PostgreSQL has the same ones):

- outbox newest-first: the id (`ORDER BY id DESC LIMIT n`); a patient's pages: the UNIQUE
  index on `body` ('MRN,YYYYMMDDHHMMSS' starts with the MRN and a comma, so a range on
  `body` finds them without scanning the outbox; on PostgreSQL a scan, see `patient()`);
  pending pages: the partial index `outbox_pending`.
- results: the primary key (mrn, time); admissions: `admissions_mrn`; patients: the key.
- result_revisions: `result_revisions_mrn` (mrn, time); its journal rows by the id. merges:
  the key (old_mrn) for a merged-away number; the numbers merged into a patient by a scan of
  `merges`, a row per merge (a few a week).
- journal: the id only. `received_at` has no index, but it grows with the id, so the first
  message received after an instant is found by a binary search over ids (a few dozen point
  reads), and dead letters are searched among the latest `JOURNAL_WINDOW` messages only.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..store import is_postgres_url
from ..timeutil import parse_hl7_time
from .explain import OVERDUE_SECONDS, not_delivered

ALERTS_LIMIT = 200
RESULTS_LIMIT = 5_000
DEAD_LETTERS_LIMIT = 50
OUTBOX_ERRORS_LIMIT = 20
JOURNAL_WINDOW = 100_000      # dead letters are looked for among this many latest messages
RATE_MINUTES = 5
CONNECT_TIMEOUT = 2           # seconds (libpq's least), unless the URL says otherwise
STATEMENT_TIMEOUT_MS = 2_000  # PostgreSQL: no query of a page may take longer


class StateUnavailable(Exception):
    """The state cannot be opened or read (not created yet, being rebuilt, locked, server
    down). Its message never holds a password."""


@dataclass(frozen=True, slots=True)
class Reader:
    """A read-only connection to the state, either backend. `execute(sql, params)` takes the
    shared SQL with `?` placeholders and returns the backend's cursor (fetchone, fetchall,
    iteration)."""

    db: Any                       # sqlite3.Connection or psycopg.Connection
    name: str                     # the state in messages: a path, or a URL without password
    errors: type[Exception]       # the backend's database error (sqlite3.Error, psycopg.Error)
    placeholder: str = "?"        # psycopg's is %s
    bytewise: str = ""            # appended to a text operand to compare it byte by byte

    def execute(self, sql: str, params: tuple = ()):
        return self.db.execute(sql.replace("?", self.placeholder), params)

    def close(self) -> None:
        self.db.close()


def connect(state: str) -> Reader:
    """A new read-only connection to the state: a SQLite file's path or a postgresql:// URL."""
    return _connect_postgres(state) if is_postgres_url(state) else _connect_sqlite(state)


@contextmanager
def reading(state: str) -> Iterator[Reader]:
    """A read-only connection for one request, closed after it. The backend's errors while
    reading (locked, connection lost, statement timeout, tables not created yet) are raised
    as StateUnavailable."""
    db = connect(state)
    try:
        yield db
    except db.errors as e:
        raise StateUnavailable(f"state {db.name} cannot be read: {e}") from e
    finally:
        db.close()


def _connect_sqlite(path: str) -> Reader:
    if not Path(path).exists():
        raise StateUnavailable(f"state {path} does not exist")
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA query_only=1")
        db.execute("PRAGMA busy_timeout=1000")
    except sqlite3.Error as e:
        raise StateUnavailable(f"state {path} cannot be opened read-only: {e}") from e
    return Reader(db, path, sqlite3.Error)


def _connect_postgres(url: str) -> Reader:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from ..store.postgres import PostgresStore

    # The store's password-less rendering of a URL (it reads nothing but `.url`).
    name = PostgresStore._safe_url(SimpleNamespace(url=url))
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        # libpq's parse errors may quote the URL, password included: not passed on.
        raise StateUnavailable("the state's URL is not a valid PostgreSQL URL") from None
    read_only = f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    params["options"] = f"{params.get('options', '')} {read_only}".strip()
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("application_name", "aki-alert-console")
    try:
        db = psycopg.connect(autocommit=True, **params)
    except psycopg.Error as e:
        raise StateUnavailable(f"state {name} cannot be opened: {e}") from e
    return Reader(db, name, psycopg.Error, placeholder="%s", bytewise=' COLLATE "C"')


# --- alerts ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    mrn: str
    result_time: int            # the result's sample time (OBR-7), seconds on the hospital axis
    body: str
    created_at: float           # wall-clock time the page was decided
    status: str                 # pending | delivered | dead | suppressed
    attempts: int
    last_error: str | None
    delivered_at: float | None
    detector: str | None
    version: str | None
    score: float | None
    threshold: float | None
    stage: int | None
    baseline: float | None
    ratio: float | None
    value: float | None         # the triggering creatinine result, µmol/L
    name: str | None            # patient name when the patient was admitted
    since_count: int = 0        # the patient's results sampled after the paged one
    latest_time: int | None = None      # the latest of them
    latest_value: float | None = None

    @property
    def delivery(self) -> str:
        """delivered, retrying (pending after a failed attempt), pending, dead or suppressed."""
        if self.status == "pending":
            return "retrying" if self.attempts > 0 else "pending"
        return self.status

    def not_delivered(self, now: float) -> bool:
        """The page never reached the pager: dead-lettered, or pending long after (explain)."""
        return not_delivered(self.status, self.created_at, now)


_ALERT_COLUMNS = (
    "o.id, o.mrn, o.result_time, o.body, o.created_at, o.status, o.attempts, o.last_error, "
    "o.delivered_at, o.explanation, "
    "(SELECT r.value FROM results r WHERE r.mrn = o.mrn AND r.time = o.result_time), "
    "(SELECT p.name FROM patients p WHERE p.mrn = o.mrn), "
    # The results since the page: their count and the latest (results' primary key).
    "(SELECT count(*) FROM results r WHERE r.mrn = o.mrn AND r.time > o.result_time), "
    "(SELECT r.time FROM results r WHERE r.mrn = o.mrn AND r.time > o.result_time "
    "ORDER BY r.time DESC LIMIT 1), "
    "(SELECT r.value FROM results r WHERE r.mrn = o.mrn AND r.time > o.result_time "
    "ORDER BY r.time DESC LIMIT 1)"
)


def _alert(row: tuple) -> Alert:
    (id_, mrn, rtime, body, created, status, attempts, err, delivered, expl, value, name,
     since, latest_time, latest_value) = row
    try:
        e = json.loads(expl) if expl else {}
    except ValueError:
        e = {}
    if not isinstance(e, dict):
        e = {}

    def num(key: str) -> float | None:
        v = e.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    stage = num("stage")
    return Alert(
        id=id_, mrn=mrn, result_time=rtime, body=body, created_at=created, status=status,
        attempts=attempts, last_error=err, delivered_at=delivered,
        detector=str(e["detector"]) if "detector" in e else None,
        version=str(e["version"]) if "version" in e else None,
        score=num("score"), threshold=num("threshold"),
        stage=int(stage) if stage is not None else None,
        baseline=num("baseline"), ratio=num("ratio"), value=value, name=name,
        since_count=since or 0, latest_time=latest_time, latest_value=latest_value,
    )


@dataclass(frozen=True, slots=True)
class AlertList:
    alerts: list[Alert]
    by_status: dict[str, int]        # whole outbox, by delivery (delivered, retrying, ...)
    older_than: int | None           # `before` for the next (older) page, None at the end
    undelivered: int = 0             # whole outbox: pages that never reached the pager


def _outbox_by_status(db: Reader) -> dict[str, int]:
    """Pages by delivery status, pending ones that failed at least once as "retrying"."""
    by_status: dict[str, int] = {}
    for status, retrying, n in db.execute(
            "SELECT status, attempts > 0 AND status = 'pending', count(*) FROM outbox "
            "GROUP BY 1, 2"):
        key = "retrying" if retrying else status
        by_status[key] = by_status.get(key, 0) + n
    return by_status


def _overdue(db: Reader, now: float) -> int:
    """Pages still pending OVERDUE_SECONDS after they were decided (index outbox_pending)."""
    return db.execute("SELECT count(*) FROM outbox WHERE status = 'pending' AND created_at < ?",
                      (now - OVERDUE_SECONDS,)).fetchone()[0]


def alerts(db: Reader, limit: int = ALERTS_LIMIT, before: int | None = None,
           now: float | None = None) -> AlertList:
    """The latest pages, newest first; `before` an outbox id to page back in time."""
    now = time.time() if now is None else now
    if before is None:
        rows = db.execute(f"SELECT {_ALERT_COLUMNS} FROM outbox o ORDER BY o.id DESC LIMIT ?",
                          (limit + 1,)).fetchall()
    else:
        rows = db.execute(f"SELECT {_ALERT_COLUMNS} FROM outbox o WHERE o.id < ? "
                          "ORDER BY o.id DESC LIMIT ?", (before, limit + 1)).fetchall()
    items = [_alert(r) for r in rows[:limit]]
    older = items[-1].id if len(rows) > limit and items else None
    by_status = _outbox_by_status(db)
    return AlertList(items, by_status, older, by_status.get("dead", 0) + _overdue(db, now))


# --- one patient ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Result:
    time: int
    value: float
    source: str                 # history | feed
    status: str = "F"           # OBX-11 as stored: F final, C corrected, P preliminary
    comparator: str | None = None   # "<", ">", "<=", ">=": a censored value ("<10")


# What became of a value kept in result_revisions.
CORRECTED, REMOVED, MERGED = "corrected", "removed", "merged"


@dataclass(frozen=True, slots=True)
class Revision:
    """A value the patient's results no longer hold, kept for audit (result_revisions)."""

    time: int                   # the result's sample time
    value: float                # the value it had, µmol/L
    status: str                 # the status it had
    comparator: str | None
    action: str                 # corrected | removed | merged
    changed_at: float           # wall-clock time of the change
    mrn: str                    # the number it was filed under (a merged-away one, maybe)
    new_mrn: str | None         # merged: the number it moved to
    withdrawn: str | None = None    # removed: "W" (wrong patient) or "D" (deleted), when known


@dataclass(frozen=True, slots=True)
class Merge:
    old_mrn: str                # the merged-away number
    new_mrn: str                # the number it lives on as
    merged_at: float            # wall-clock time of the merge


@dataclass(frozen=True, slots=True)
class Stay:
    start: int
    end: int | None             # None: still admitted


@dataclass(slots=True)
class PatientView:
    mrn: str
    name: str | None
    birth: int | None
    sex: str | None
    admitted: bool
    episode_start: int | None
    results: list[Result] = field(default_factory=list)
    stays: list[Stay] = field(default_factory=list)
    pages: list[Alert] = field(default_factory=list)      # oldest first
    truncated: bool = False     # more than RESULTS_LIMIT results: the earliest are left out
    merged_into: Merge | None = None                       # this number was merged away
    merged_from: list[Merge] = field(default_factory=list)  # numbers merged into this one
    revisions: list[Revision] = field(default_factory=list)  # oldest sample time first


def patient(db: Reader, mrn: str) -> PatientView | None:
    """Everything the console shows of one patient; None when the MRN is unknown (no
    demographics, results, kept revisions or merge under it)."""
    demo = db.execute("SELECT name, birth, sex, admitted, episode_start FROM patients "
                      "WHERE mrn = ?", (mrn,)).fetchone()
    rows = db.execute("SELECT time, value, source, status, comparator FROM results "
                      "WHERE mrn = ? ORDER BY time DESC LIMIT ?",
                      (mrn, RESULTS_LIMIT + 1)).fetchall()
    into = db.execute("SELECT old_mrn, new_mrn, merged_at FROM merges WHERE old_mrn = ?",
                      (mrn,)).fetchone()
    # merges has no index on new_mrn: a scan of a table of one row per merge (a few a week).
    merged_from = [Merge(*r) for r in db.execute(
        "SELECT old_mrn, new_mrn, merged_at FROM merges WHERE new_mrn = ? "
        "ORDER BY merged_at, old_mrn", (mrn,))]
    # This number's own kept values, and those of the numbers merged into it.
    revisions = [r for number in [mrn] + [m.old_mrn for m in merged_from]
                 for r in _revisions(db, number)]
    if demo is None and not rows and into is None and not merged_from and not revisions:
        return None
    name, birth, sex, admitted, episode = demo if demo is not None else (None,) * 5
    view = PatientView(mrn, name or None, birth, sex, bool(admitted), episode)
    view.truncated = len(rows) > RESULTS_LIMIT
    view.results = [Result(*r) for r in reversed(rows[:RESULTS_LIMIT])]
    view.merged_into = Merge(*into) if into is not None else None
    view.merged_from = merged_from
    view.revisions = sorted(revisions, key=lambda r: (r.time, r.changed_at))
    view.stays = _stays(db.execute("SELECT event, time FROM admissions WHERE mrn = ? "
                                   "ORDER BY time, id", (mrn,)).fetchall())
    # ',' < '-': every body of this MRN lies in ['MRN,', 'MRN-'), a range of the UNIQUE index.
    # Byte order only: PostgreSQL compares in the database's collation, where English ignores
    # punctuation and '7,2024…' falls outside ['7,', '7-'). Its `COLLATE "C"` is not the
    # index's collation, so there the range is a scan of the outbox (a few thousand pages a
    # year; ~1.5 ms per 20,000 measured).
    # A page decided under a number merged into this one keeps its body (the page as sent)
    # and moved to this MRN: its range is that number's.
    body = f"o.body{db.bytewise}"
    pages = [_alert(r) for number in [mrn] + [m.old_mrn for m in merged_from]
             for r in db.execute(
                 f"SELECT {_ALERT_COLUMNS} FROM outbox o WHERE {body} >= ? AND {body} < ? "
                 "AND o.mrn = ? ORDER BY o.result_time LIMIT ?",
                 (f"{number},", f"{number}-", mrn, ALERTS_LIMIT))]
    view.pages = sorted(pages, key=lambda a: (a.result_time, a.id))[:ALERTS_LIMIT]
    return view


_WITHDRAWAL = re.compile(r"(\d{12,14}) ([WD]): removed")


def _revisions(db: Reader, mrn: str) -> list[Revision]:
    """The values kept for audit under `mrn` (index result_revisions_mrn), with whether a
    removal was a wrong-patient (W) or a deletion (D), read from its journal row's reason."""
    out = []
    for t, value, status, comparator, action, changed, number, new, reason in db.execute(
            "SELECT r.time, r.value, r.status, r.comparator, r.action, r.changed_at, r.mrn, "
            "r.new_mrn, CASE WHEN r.action = 'removed' THEN j.reason END "
            "FROM result_revisions r LEFT JOIN journal j ON j.id = r.journal_id "
            "WHERE r.mrn = ? ORDER BY r.time DESC, r.changed_at DESC LIMIT ?",
            (mrn, RESULTS_LIMIT)):
        out.append(Revision(t, value, status, comparator, action, changed, number, new,
                            _withdrawn_as(reason, t) if action == REMOVED else None))
    return out


def _withdrawn_as(reason: str | None, t: int) -> str | None:
    """W or D: the OBX-11 status that removed the result sampled at `t`, as ingest records it
    in the journal's reason ("CODE YYYYMMDDHHMMSS W: removed"); None when it does not say."""
    for digits, status in _WITHDRAWAL.findall(reason or ""):
        try:
            if parse_hl7_time(digits) == t:
                return status
        except ValueError:
            continue
    return None


def _stays(events: list[tuple[str, int | None]]) -> list[Stay]:
    """Admission–discharge intervals from the events in time order (a repeated admission while
    admitted, or a discharge without an admission, is ignored)."""
    stays: list[Stay] = []
    start: int | None = None
    for event, t in events:
        if t is None:
            continue
        if event == "admit" and start is None:
            start = t
        elif event == "discharge" and start is not None:
            stays.append(Stay(start, t))
            start = None
    if start is not None:
        stays.append(Stay(start, None))
    return stays


# --- the service ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    received_at: float
    kind: str
    reason: str | None
    preview: str                # the start of the raw message, segments on one line


@dataclass(frozen=True, slots=True)
class OutboxError:
    id: int
    mrn: str
    body: str
    status: str
    attempts: int
    last_error: str
    created_at: float


@dataclass(slots=True)
class ServiceView:
    now: float
    meta: dict[str, str]
    messages: int                       # journaled messages (the latest journal id)
    last_received: float | None
    per_minute: list[int]               # messages received in each of the last minutes, oldest
    pending: int
    oldest_pending: float | None        # created_at of the oldest pending page
    by_status: dict[str, int]
    last_delivered: float | None
    dead_letters: list[DeadLetter]
    dead_letters_window: int            # how many latest messages were searched
    outbox_errors: list[OutboxError]
    undelivered: list[Alert] = field(default_factory=list)   # latest pages never delivered
    undelivered_count: int = 0          # all of them: dead-lettered, or pending long after


def _first_id_from(db: Reader, lo: int, hi: int, t: float) -> int:
    """Smallest journal id in [lo, hi] received at or after `t` (hi + 1 when none), by binary
    search: received_at grows with the id."""
    while lo <= hi:
        mid = (lo + hi) // 2
        row = db.execute("SELECT received_at FROM journal WHERE id >= ? ORDER BY id LIMIT 1",
                         (mid,)).fetchone()
        if row is None or row[0] >= t:
            hi = mid - 1
        else:
            lo = mid + 1
    return lo


def service(db: Reader, now: float | None = None,
            minutes: int = RATE_MINUTES) -> ServiceView:
    now = time.time() if now is None else now
    meta = dict(db.execute("SELECT key, value FROM meta"))
    first, last = db.execute("SELECT min(id), max(id) FROM journal").fetchone()
    last_received = None
    per_minute = [0] * minutes
    if last is not None:
        last_received = db.execute("SELECT received_at FROM journal WHERE id = ?",
                                   (last,)).fetchone()[0]
        bounds = [_first_id_from(db, first, last, now - 60 * (minutes - i))
                  for i in range(minutes)] + [last + 1]
        for i in range(minutes):
            if bounds[i + 1] > bounds[i]:
                per_minute[i] = db.execute(
                    "SELECT count(*) FROM journal WHERE id >= ? AND id < ?",
                    (bounds[i], bounds[i + 1])).fetchone()[0]
    pending, oldest = db.execute(
        "SELECT count(*), min(created_at) FROM outbox WHERE status = 'pending'").fetchone()
    by_status = _outbox_by_status(db)
    last_delivered = db.execute("SELECT max(delivered_at) FROM outbox").fetchone()[0]
    floor = (last or 0) - JOURNAL_WINDOW
    dead = [DeadLetter(i, at, kind, reason, _preview(raw)) for i, at, kind, reason, raw in
            db.execute("SELECT id, received_at, kind, reason, substr(raw, 1, 120) FROM journal "
                       "WHERE id > ? AND status = 'dead' ORDER BY id DESC LIMIT ?",
                       (floor, DEAD_LETTERS_LIMIT))]
    errors = [OutboxError(*r) for r in db.execute(
        "SELECT id, mrn, body, status, attempts, last_error, created_at FROM outbox "
        "WHERE last_error IS NOT NULL ORDER BY id DESC LIMIT ?", (OUTBOX_ERRORS_LIMIT,))]
    # Dead pages: a scan of the outbox (as by_status); overdue ones: the outbox_pending index.
    undelivered = [_alert(r) for r in db.execute(
        f"SELECT {_ALERT_COLUMNS} FROM outbox o WHERE o.status = 'dead' "
        "OR (o.status = 'pending' AND o.created_at < ?) ORDER BY o.id DESC LIMIT ?",
        (now - OVERDUE_SECONDS, OUTBOX_ERRORS_LIMIT))]
    return ServiceView(now, meta, last or 0, last_received, per_minute, pending, oldest,
                       by_status, last_delivered, dead, JOURNAL_WINDOW, errors, undelivered,
                       by_status.get("dead", 0) + _overdue(db, now))


def _preview(raw: bytes | str | None, n: int = 80) -> str:
    if raw is None:
        return ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    text = text.replace("\r\n", "\r").replace("\n", "\r").replace("\r", " ⏎ ")
    text = "".join(c if c.isprintable() else "�" for c in text)
    return text if len(text) <= n else text[:n] + "…"


# --- this process's Prometheus metrics ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ProcessMetrics:
    """What only the running service knows, read from its /metrics: None (or empty) when the
    metric is not there (the service's metrics are off or not answering)."""

    connected: float | None
    received: dict[str, float]          # messages received since start, by type
    pages: dict[str, float]             # page attempts since start, by outcome
    dead_letters: dict[str, float]      # dead letters since start, by reason
    provenance_mismatch: float | None
    history_loaded: float | None


def scrape(url: str | None, timeout: float = 1.0) -> list:
    """The metric families the service exports at `url`; empty when it does not answer."""
    if not url:
        return []
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return list(text_string_to_metric_families(r.read().decode("utf-8", "replace")))
    except (OSError, ValueError):
        return []


def process_metrics(families) -> ProcessMetrics:
    """Read the service's live figures from metric families (scraped, or a registry's)."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    wanted = {"aki_mllp_connected", "aki_messages_received_total", "aki_pages_total",
              "aki_dead_letters_total", "aki_state_provenance_mismatch", "aki_history_loaded"}
    for family in families:
        for s in family.samples:
            if s.name in wanted:
                samples.setdefault(s.name, []).append((s.labels, s.value))

    def one(name: str) -> float | None:
        values = samples.get(name)
        return values[0][1] if values else None

    def by(name: str, label: str) -> dict[str, float]:
        return {labels.get(label, ""): v for labels, v in samples.get(name, [])}

    return ProcessMetrics(
        connected=one("aki_mllp_connected"),
        received=by("aki_messages_received_total", "type"),
        pages=by("aki_pages_total", "outcome"),
        dead_letters=by("aki_dead_letters_total", "reason"),
        provenance_mismatch=one("aki_state_provenance_mismatch"),
        history_loaded=one("aki_history_loaded"),
    )

"""The row-level operations of the state, written once for both backends.

SQLite (3.35+) and PostgreSQL share this SQL: `INSERT … ON CONFLICT DO NOTHING RETURNING`, upserts
on a key, `?` placeholders (the PostgreSQL store translates them in `_x`). What differs — the
connection, transactions, migrations, bulk import and archiving — stays in each backend.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass

from ..detect import Patient


@dataclass(frozen=True, slots=True)
class PendingPage:
    id: int
    body: str
    attempts: int


class RowOps:
    """Mixed into a store that provides `_x(sql, params)` (execute, returning a cursor)."""

    def _x(self, sql: str, params: tuple = ()):  # pragma: no cover - each backend has its own
        raise NotImplementedError

    def _insert_id(self, sql: str, params: tuple) -> int | None:
        """Run an `INSERT … ON CONFLICT DO NOTHING`; the new row's id, None when it did nothing."""
        row = self._x(sql + " RETURNING id", params).fetchone()
        return None if row is None else row[0]

    # --- provenance ---------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return dict(self._x("SELECT key, value FROM meta").fetchall())

    def set_meta(self, **values: str) -> None:
        for key, value in values.items():
            self._x("INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def has_history(self) -> bool:
        """True when the state holds any result imported from a history file."""
        return self._x("SELECT 1 FROM results WHERE source = 'history' LIMIT 1").fetchone() \
            is not None

    # --- per message (call inside transaction()) ----------------------------------------
    def journal(self, digest: bytes, kind: str, mrn: str | None, status: str,
                reason: str | None, raw: bytes) -> int | None:
        """Record a message; None when these exact bytes were journaled before (a re-delivery).

        The blobs go as bytearrays: Python's sqlite3 looks for an adapter for every `bytes`
        parameter and raises and swallows two AttributeErrors doing so, ~0.25 µs each; a
        bytearray is bound directly (both drivers store either as a blob)."""
        return self._insert_id(
            "INSERT INTO journal (digest, received_at, kind, mrn, status, reason, raw) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (bytearray(digest), time.time(), kind, mrn, status, reason, bytearray(raw)))

    def set_journal_status(self, journal_id: int, status: str, reason: str | None = None) -> None:
        self._x("UPDATE journal SET status = ?, reason = ? WHERE id = ?",
                (status, reason, journal_id))

    def load_patient(self, mrn: str, since: int | None = None) -> tuple[Patient, int | None]:
        """A patient's results in time order (those at or after `since`, if given),
        demographics and current episode start.

        The results come as typed arrays: the service keeps thousands of patients in memory,
        and an array holds a result in 16 bytes where lists of int and float objects take 72
        (docs/performance.md, round 4)."""
        if since is None:
            rows = self._x("SELECT time, value FROM results WHERE mrn = ? ORDER BY time",
                           (mrn,)).fetchall()
        else:
            rows = self._x("SELECT time, value FROM results WHERE mrn = ? AND time >= ? "
                           "ORDER BY time", (mrn, since)).fetchall()
        p = Patient(mrn, array("q", [r[0] for r in rows]), array("d", [r[1] for r in rows]))
        demo = self._x("SELECT birth, sex, episode_start FROM patients WHERE mrn = ?",
                       (mrn,)).fetchone()
        if demo is None:
            return p, None
        p.birth, p.sex = demo[0], demo[1]
        return p, demo[2]

    def add_result(self, mrn: str, time_: int, value: float) -> bool:
        """False when a result for this patient and sample time is already known."""
        cur = self._x("INSERT INTO results (mrn, time, value, source) VALUES (?, ?, ?, 'feed') "
                      "ON CONFLICT DO NOTHING", (mrn, time_, value))
        return cur.rowcount == 1

    def admit(self, mrn: str, name: str, birth: int | None, sex: str | None,
              time_: int | None, journal_id: int) -> None:
        self._x("INSERT INTO patients (mrn, name, birth, sex, admitted) VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT (mrn) DO UPDATE SET name = excluded.name, birth = excluded.birth, "
                "sex = excluded.sex, admitted = 1", (mrn, name, birth, sex))
        self._x("INSERT INTO admissions (mrn, event, time, journal_id) VALUES (?, 'admit', ?, ?)",
                (mrn, time_, journal_id))

    def discharge(self, mrn: str, time_: int | None, journal_id: int) -> None:
        self._x("INSERT INTO patients (mrn, admitted) VALUES (?, 0) "
                "ON CONFLICT (mrn) DO UPDATE SET admitted = 0", (mrn,))
        self._x("INSERT INTO admissions (mrn, event, time, journal_id) "
                "VALUES (?, 'discharge', ?, ?)", (mrn, time_, journal_id))

    def open_episode(self, mrn: str, start: int) -> None:
        self._x("INSERT INTO patients (mrn, episode_start) VALUES (?, ?) "
                "ON CONFLICT (mrn) DO UPDATE SET episode_start = excluded.episode_start",
                (mrn, start))

    def add_page(self, mrn: str, result_time: int, body: str, explanation: str,
                 journal_id: int, status: str = "pending") -> int | None:
        """Queue a page in the outbox; None when this exact page was queued before."""
        return self._insert_id(
            "INSERT INTO outbox (mrn, result_time, body, created_at, status, explanation, "
            "journal_id) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (mrn, result_time, body, time.time(), status, explanation, journal_id))

    # --- outbox (the dispatcher's side) -------------------------------------------------
    def pending_pages(self) -> list[PendingPage]:
        return [PendingPage(*r) for r in self._x(
            "SELECT id, body, attempts FROM outbox WHERE status = 'pending' ORDER BY id")]

    # Pages are named by their body (unique, and the same when a batch is re-applied after a
    # rollback, which may renumber the rows).
    def page_delivered(self, body: str, attempts: int) -> None:
        self._x("UPDATE outbox SET status = 'delivered', attempts = ?, delivered_at = ?, "
                "last_error = NULL WHERE body = ?", (attempts, time.time(), body))

    def page_failed(self, body: str, attempts: int, error: str, dead: bool) -> None:
        self._x("UPDATE outbox SET status = ?, attempts = ?, last_error = ? WHERE body = ?",
                ("dead" if dead else "pending", attempts, error, body))

    # --- quality (quality.py) -----------------------------------------------------------
    def latest_feed_time(self) -> int | None:
        return self._x("SELECT max(time) FROM results WHERE source = 'feed'").fetchone()[0]

    def pages_since(self, since: int) -> set[tuple[str, int]]:
        """(mrn, result time) of every page decided for a result at or after `since`."""
        return {(m, t) for m, t in self._x(
            "SELECT mrn, result_time FROM outbox WHERE status != 'suppressed' "
            "AND result_time >= ?", (since,))}

    def has_result(self, mrn: str, time_: int) -> bool:
        return self._x("SELECT 1 FROM results WHERE mrn = ? AND time = ?",
                       (mrn, time_)).fetchone() is not None

    def counts(self) -> dict[str, int]:
        def q(sql: str) -> int:
            return self._x(sql).fetchone()[0]
        return {
            "patients": q("SELECT count(DISTINCT mrn) FROM results"),
            "results": q("SELECT count(*) FROM results"),
            "messages": q("SELECT count(*) FROM journal"),
            "dead_letters": q("SELECT count(*) FROM journal WHERE status = 'dead'"),
            "pages_pending": q("SELECT count(*) FROM outbox WHERE status = 'pending'"),
            "pages_delivered": q("SELECT count(*) FROM outbox WHERE status = 'delivered'"),
            "pages_dead": q("SELECT count(*) FROM outbox WHERE status = 'dead'"),
        }

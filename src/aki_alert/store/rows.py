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
from ..merges import merged_episode, merged_fields


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

    def add_result(self, mrn: str, time_: int, value: float, status: str = "F",
                   comparator: str | None = None) -> bool:
        """False when a result for this patient and sample time is already known."""
        cur = self._x("INSERT INTO results (mrn, time, value, source, status, comparator) "
                      "VALUES (?, ?, ?, 'feed', ?, ?) ON CONFLICT DO NOTHING",
                      (mrn, time_, value, status, comparator or None))
        return cur.rowcount == 1

    def result_at(self, mrn: str, time_: int) -> tuple[float, str] | None:
        """(value, status) of the patient's result at this sample time, if any."""
        row = self._x("SELECT value, status FROM results WHERE mrn = ? AND time = ?",
                      (mrn, time_)).fetchone()
        return None if row is None else (row[0], row[1])

    def _keep_revision(self, mrn: str, time_: int, action: str, journal_id: int,
                       new_mrn: str | None = None) -> None:
        self._x("INSERT INTO result_revisions (mrn, time, value, status, comparator, action, "
                "new_mrn, changed_at, journal_id) SELECT mrn, time, value, status, comparator, "
                "?, ?, ?, ? FROM results WHERE mrn = ? AND time = ?",
                (action, new_mrn, time.time(), journal_id, mrn, time_))

    def correct_result(self, mrn: str, time_: int, value: float, status: str,
                       comparator: str | None, journal_id: int) -> None:
        """Replace a stored result's value (a correction, or a final after a preliminary);
        the value it had is kept in result_revisions."""
        self._keep_revision(mrn, time_, "corrected", journal_id)
        self._x("UPDATE results SET value = ?, status = ?, comparator = ? "
                "WHERE mrn = ? AND time = ?", (value, status, comparator or None, mrn, time_))

    def remove_result(self, mrn: str, time_: int, journal_id: int) -> None:
        """Take a result out of the patient's baseline (posted to the wrong patient, or
        deleted); it is kept in result_revisions."""
        self._keep_revision(mrn, time_, "removed", journal_id)
        self._x("DELETE FROM results WHERE mrn = ? AND time = ?", (mrn, time_))

    def update_patient(self, mrn: str, name: str | None, birth: int | None,
                       sex: str | None) -> None:
        """New demographics (ADT^A08/A31), without an admission; a field not sent (None,
        or an empty name) keeps what was known."""
        self._x("INSERT INTO patients (mrn, name, birth, sex) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (mrn) DO UPDATE SET name = coalesce(excluded.name, patients.name), "
                "birth = coalesce(excluded.birth, patients.birth), "
                "sex = coalesce(excluded.sex, patients.sex)", (mrn, name or None, birth, sex))

    def merge_patient(self, old: str, new: str, journal_id: int) -> bool:
        """Move everything known under `old` to `new` (ADT^A40/A34/A47): results (a result
        both have at one sample time keeps `new`'s; `old`'s goes to result_revisions),
        admissions, pages, demographics where `new` has none, and the later episode. False
        when `old` was merged before (a replay): nothing is done twice."""
        if self._x("INSERT INTO merges (old_mrn, new_mrn, merged_at, journal_id) "
                   "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                   (old, new, time.time(), journal_id)).rowcount != 1:
            return False
        self._x("UPDATE merges SET new_mrn = ? WHERE new_mrn = ?", (new, old))
        self._x("INSERT INTO result_revisions (mrn, time, value, status, comparator, action, "
                "new_mrn, changed_at, journal_id) SELECT o.mrn, o.time, o.value, o.status, "
                "o.comparator, 'merged', ?, ?, ? FROM results o WHERE o.mrn = ?",
                (new, time.time(), journal_id, old))
        self._x("INSERT INTO results (mrn, time, value, source, status, comparator) "
                "SELECT ?, time, value, source, status, comparator FROM results WHERE mrn = ? "
                "ON CONFLICT DO NOTHING", (new, old))
        self._x("DELETE FROM results WHERE mrn = ?", (old,))
        self._x("UPDATE admissions SET mrn = ? WHERE mrn = ?", (new, old))
        self._x("UPDATE outbox SET mrn = ? WHERE mrn = ?", (new, old))
        rows = dict((r[0], r[1:]) for r in self._x(
            "SELECT mrn, name, birth, sex, admitted, episode_start FROM patients "
            "WHERE mrn IN (?, ?)", (old, new)).fetchall())
        if old in rows:
            was, now = rows[old], rows.get(new, (None, None, None, 0, None))
            self._x("INSERT INTO patients (mrn, name, birth, sex, admitted, episode_start) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (mrn) DO UPDATE SET "
                    "name = excluded.name, birth = excluded.birth, sex = excluded.sex, "
                    "admitted = excluded.admitted, episode_start = excluded.episode_start",
                    (new, *merged_fields(now[:3], was[:3]), max(was[3] or 0, now[3] or 0),
                     merged_episode(now[4], was[4])))
            self._x("DELETE FROM patients WHERE mrn = ?", (old,))
        return True

    def merged_numbers(self) -> dict[str, str]:
        """Every merged-away patient number and the number it lives on as."""
        return dict(self._x("SELECT old_mrn, new_mrn FROM merges").fetchall())

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

    def open_episode(self, mrn: str, start: int | None) -> None:
        """Record the patient's episode start (None: no episode, e.g. its page's result was
        withdrawn)."""
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

    def page_at(self, mrn: str, result_time: int) -> str | None:
        """The explanation of the patient's page for the result at `result_time` (an episode's
        page, read when a positive inside it may page again: rare, and on outbox_result_time)."""
        row = self._x("SELECT explanation FROM outbox WHERE result_time = ? AND mrn = ? "
                      "ORDER BY id DESC LIMIT 1", (result_time, mrn)).fetchone()
        return None if row is None else row[0]

    def standing_pages(self, mrn: str) -> list[int]:
        """The result times of the patient's pages whose results are still in its series (what
        an episode may fall back to when its page's result is withdrawn: episodes.py)."""
        return [r[0] for r in self._x(
            "SELECT o.result_time FROM outbox o JOIN results r "
            "ON r.mrn = o.mrn AND r.time = o.result_time WHERE o.mrn = ?", (mrn,))]

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

"""`aki-alert state status|check|backup|restore|reset`: the operator's tools for the durable state.

- `status` says what the state is (environment, history file, when it was built, schema) and what
  it holds (patients, results by source, messages by status, dead letters, pages by status, the
  oldest page still waiting). Read-only; safe while the service runs.
- `check` runs SQLite's `integrity_check` and the project's own consistency checks (every page
  points at a journaled message, every applied result message has its result row, no page waits
  too long). Exit 0 when healthy, 1 with one line per problem. Read-only.
- `backup --out FILE` takes an online, consistent copy with SQLite's backup API (safe while the
  service runs: it reads one committed snapshot), makes it a self-contained single file and
  integrity-checks it.
- `restore --from FILE --yes` and `reset --yes` replace the state. They refuse while anything
  else has the state open: in WAL mode a plain `BEGIN EXCLUSIVE` succeeds beside an idle
  connection, so we ask for `locking_mode=EXCLUSIVE` too, which SQLite grants only when no other
  connection (the running service, a `status` in another shell) has the database open. The
  current state is archived as `state.db.archived-<time>` first, as the service's rebuild does.

Exit codes: 0 done / healthy, 1 failed / problems found, 2 refused (confirmation missing, the
service is probably running, nothing to act on).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

STATE_FILE = "state.db"
ARCHIVE_FORMAT = "archived-%Y%m%dT%H%M%S"
LOCK_TIMEOUT = 0.5          # seconds: the service's transactions take milliseconds
PENDING_MINUTES = 5         # `check`: a page waiting longer than this is a problem

PAGE_STATUSES = ("pending", "delivered", "dead", "suppressed")
JOURNAL_STATUSES = ("applied", "duplicate-result", "ignored", "dead")


class Refused(Exception):
    """The command will not act; the message says why and what to do (exit 2)."""


# --- shared helpers (replay.py uses them too) -----------------------------------------------

def add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=os.environ.get("STATE_DIR", "/state"),
                   metavar="STATE_DIR",
                   help="directory of the durable state (default /state); env STATE_DIR")


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def connect_ro(path: str) -> sqlite3.Connection:
    """A read-only connection (never creates the file; safe beside the running service)."""
    if not os.path.exists(path):
        raise Refused(f"no state at {path}: check --state-dir / STATE_DIR")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def iso(ts: float | str | None) -> str | None:
    if ts in (None, ""):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))


def archive_name(path: str) -> str:
    """`path.archived-<UTC time>`, with a counter if two archives fall in the same second."""
    base = f"{path}.{time.strftime(ARCHIVE_FORMAT, time.gmtime())}"
    name, n = base, 1
    while os.path.exists(name):
        name, n = f"{base}-{n}", n + 1
    return name


def lock_exclusive(path: str, timeout: float = LOCK_TIMEOUT) -> sqlite3.Connection:
    """A connection holding the database exclusively; Refused when another one has it open."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as e:
        db.close()
        raise Refused(f"cannot lock {path} ({e}): the service is probably running (or another "
                      "command has the state open). Stop it first, e.g. "
                      "`kubectl scale deploy/aki-alert --replicas=0`, then retry") from None
    return db


def archive_locked(db: sqlite3.Connection, path: str) -> str:
    """Move the state aside (its WAL folded in first); `db` holds the exclusive lock."""
    db.execute("COMMIT")
    busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy and busy[0]:
        db.close()
        raise Refused(f"cannot checkpoint {path}: another connection is using it")
    db.close()
    archived = archive_name(path)
    os.replace(path, archived)
    for ext in ("-wal", "-shm"):
        if os.path.exists(path + ext):
            os.remove(path + ext)
    # Messages acknowledged after the last commit of a killed service belong to that state.
    msglog = os.path.join(os.path.dirname(path), "messages.log")
    if os.path.exists(msglog) and os.path.getsize(msglog):
        os.replace(msglog, archived + ".messages.log")
    return archived


def integrity(db: sqlite3.Connection) -> list[str]:
    rows = [r[0] for r in db.execute("PRAGMA integrity_check")]
    return [] if rows == ["ok"] else rows


# --- status ---------------------------------------------------------------------------------

def _one(db: sqlite3.Connection, sql: str, *args) -> object:
    return db.execute(sql, args).fetchone()[0]


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master")}


def collect_status(state_dir: str, now: float | None = None) -> dict:
    from .timeutil import format_hl7_time

    now = time.time() if now is None else now
    path = state_path(state_dir)
    db = connect_ro(path)
    try:
        missing = {"meta", "results", "journal", "outbox", "patients"} - _tables(db)
        if missing:
            raise Refused(f"{path} is not an aki-alert state (no {', '.join(sorted(missing))})")
        meta = dict(db.execute("SELECT key, value FROM meta"))
        oldest = _one(db, "SELECT min(created_at) FROM outbox WHERE status = 'pending'")
        latest_msg = _one(db, "SELECT max(received_at) FROM journal")
        latest = {src: format_hl7_time(t) for src, t in db.execute(
            "SELECT source, max(time) FROM results GROUP BY source")}
        status = {
            "state": {
                "path": path,
                "size_bytes": os.path.getsize(path),
                "wal_bytes": os.path.getsize(path + "-wal") if os.path.exists(path + "-wal")
                else 0,
                "archives": sorted(f.name for f in
                                   Path(state_dir).glob(STATE_FILE + ".archived-*")),
            },
            "provenance": {
                "environment": meta.get("environment"),
                "history_path": meta.get("history_path"),
                "history_sha256": meta.get("history_sha256"),
                "created_at": iso(meta.get("created_at")),
                "history_imported_at": iso(meta.get("history_imported_at")),
                "schema_version": _one(db, "PRAGMA user_version"),
                "detector": meta.get("detector"),
                "model_version": meta.get("model_version") or meta.get("detector_version"),
                "meta": meta,
            },
            "counts": {
                "patients": _one(db, "SELECT count(*) FROM (SELECT mrn FROM results "
                                     "UNION SELECT mrn FROM patients)"),
                "patients_admitted": _one(db, "SELECT count(*) FROM patients WHERE admitted"),
                "results": dict(db.execute("SELECT source, count(*) FROM results GROUP BY source")),
                "messages": dict(db.execute("SELECT status, count(*) FROM journal "
                                            "GROUP BY status")),
                "dead_letters": _one(db, "SELECT count(*) FROM dead_letters"),
                "pages": dict(db.execute("SELECT status, count(*) FROM outbox GROUP BY status")),
                "oldest_pending_page_age_seconds": None if oldest is None
                else round(now - oldest, 1),
            },
            "latest": {
                "message_received_at": iso(latest_msg),
                "history_result": latest.get("history"),
                "feed_result": latest.get("feed"),
            },
        }
    finally:
        db.close()
    return status


def format_status(s: dict) -> str:
    p, c, st, lt = s["provenance"], s["counts"], s["state"], s["latest"]
    sha = p["history_sha256"] or "-"

    def kv(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    age = c["oldest_pending_page_age_seconds"]
    lines = [
        f"state        {st['path']} ({st['size_bytes']:,} bytes, WAL {st['wal_bytes']:,})",
        f"environment  {p['environment'] or '- (not recorded: the service has not started on it)'}",
        f"history      {p['history_path'] or '-'} sha256 {sha}",
        f"created      {p['created_at'] or '-'}   history imported "
        f"{p['history_imported_at'] or '-'}   schema v{p['schema_version']}",
    ]
    if p["detector"] or p["model_version"]:
        lines.append(f"detector     {p['detector'] or '-'} {p['model_version'] or ''}".rstrip())
    lines += [
        f"patients     {c['patients']:,} ({c['patients_admitted']:,} admitted)",
        f"results      {kv(c['results'])}",
        f"messages     {kv(c['messages'])}",
        f"dead letters {c['dead_letters']:,}",
        f"pages        {kv(c['pages'])}",
        f"oldest pending page  {'-' if age is None else f'{age:.0f}s old'}",
        f"latest       message received {lt['message_received_at'] or '-'}, history result "
        f"{lt['history_result'] or '-'}, feed result {lt['feed_result'] or '-'}",
    ]
    if st["archives"]:
        lines.append(f"archives     {', '.join(st['archives'])}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    s = collect_status(args.state_dir)
    print(json.dumps(s, indent=2, sort_keys=True) if args.json else format_status(s))
    return 0


# --- check ----------------------------------------------------------------------------------

def find_problems(db: sqlite3.Connection, pending_minutes: float = PENDING_MINUTES,
                  now: float | None = None) -> list[str]:
    """One line per problem: 'error: …' (the state is inconsistent) or 'warning: …'."""
    from . import hl7
    from .store.sqlite import SCHEMA_VERSION

    now = time.time() if now is None else now
    problems = [f"error: integrity_check: {r}" for r in integrity(db)]
    version = _one(db, "PRAGMA user_version")
    if version != SCHEMA_VERSION:
        problems.append(f"error: schema version {version}, this release knows {SCHEMA_VERSION}")
    missing = {"meta", "patients", "admissions", "results", "journal", "outbox"} - _tables(db)
    if missing:
        return problems + [f"error: tables missing: {', '.join(sorted(missing))}"]
    for oid, body, jid in db.execute(
            "SELECT o.id, o.body, o.journal_id FROM outbox o "
            "LEFT JOIN journal j ON j.id = o.journal_id WHERE j.id IS NULL ORDER BY o.id"):
        problems.append(f"error: outbox row {oid} (page {body}) refers to journal row {jid}, "
                        "which does not exist")
    for aid, mrn, jid in db.execute(
            "SELECT a.id, a.mrn, a.journal_id FROM admissions a "
            "LEFT JOIN journal j ON j.id = a.journal_id WHERE j.id IS NULL ORDER BY a.id"):
        problems.append(f"error: admissions row {aid} (MRN {mrn}) refers to journal row {jid}, "
                        "which does not exist")
    for jid, raw in db.execute("SELECT id, raw FROM journal WHERE status = 'applied' "
                               "AND kind = 'result' ORDER BY id").fetchall():
        try:
            r = hl7.parse(raw)
        except hl7.HL7Error as e:
            problems.append(f"error: journal row {jid} is an applied result but does not parse "
                            f"({e})")
            continue
        if not isinstance(r, hl7.Result):
            problems.append(f"error: journal row {jid} is an applied result but is not one")
        elif db.execute("SELECT 1 FROM results WHERE mrn = ? AND time = ?",
                        (r.mrn, r.time)).fetchone() is None:
            problems.append(f"error: journal row {jid} (result MRN {r.mrn} at {r.time_text}) "
                            "is applied but its result row is missing")
    for status, n in db.execute("SELECT status, count(*) FROM journal GROUP BY status"):
        if status not in JOURNAL_STATUSES:
            problems.append(f"error: {n} journal row(s) with unknown status {status!r}")
    for status, n in db.execute("SELECT status, count(*) FROM outbox GROUP BY status"):
        if status not in PAGE_STATUSES:
            problems.append(f"error: {n} outbox row(s) with unknown status {status!r}")
    for oid, body, created, attempts, err in db.execute(
            "SELECT id, body, created_at, attempts, last_error FROM outbox "
            "WHERE status = 'pending' AND created_at < ? ORDER BY id",
            (now - pending_minutes * 60,)):
        problems.append(f"warning: page {body} (outbox row {oid}) pending for "
                        f"{(now - created) / 60:.0f} min, {attempts} attempt(s)"
                        + (f", last error: {err}" if err else "")
                        + ": is the service running and the pager reachable?")
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    db = connect_ro(state_path(args.state_dir))
    try:
        problems = find_problems(db, args.pending_minutes)
    finally:
        db.close()
    for line in problems:
        print(line)
    if not problems:
        print(f"ok: {state_path(args.state_dir)} is consistent")
    return 1 if problems else 0


# --- backup / restore / reset -----------------------------------------------------------------

def backup(state_dir: str, out: str) -> int:
    """Copy the state to `out` (one self-contained file); returns its size."""
    if os.path.exists(out):
        raise Refused(f"{out} exists: choose another --out (a backup never overwrites)")
    partial = out + ".partial"
    src = connect_ro(state_path(state_dir))
    try:
        dst = sqlite3.connect(partial, isolation_level=None)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")   # one file, no -wal to carry along
            problems = integrity(dst)
        finally:
            dst.close()
    finally:
        src.close()
    if problems:
        os.remove(partial)
        raise RuntimeError(f"the backup copy failed its integrity check: {problems[:3]}")
    os.replace(partial, out)
    return os.path.getsize(out)


def cmd_backup(args: argparse.Namespace) -> int:
    try:
        size = backup(args.state_dir, args.out)
    except RuntimeError as e:
        print(f"aki-alert state backup: {e}", file=sys.stderr)
        return 1
    print(f"backup {os.path.abspath(args.out)} ({size:,} bytes), integrity ok")
    return 0


def _check_backup(path: str) -> str:
    from .store.sqlite import SCHEMA_VERSION

    if not os.path.isfile(path):
        raise Refused(f"no backup at {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            problems = integrity(db)
            version = _one(db, "PRAGMA user_version")
            tables = _tables(db)
            messages = _one(db, "SELECT count(*) FROM journal") if "journal" in tables else 0
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise Refused(f"{path} is not a SQLite database: {e}") from None
    if problems:
        raise Refused(f"{path} fails its integrity check: {problems[:3]}")
    if "journal" not in tables or "meta" not in tables:
        raise Refused(f"{path} is not an aki-alert state")
    if version > SCHEMA_VERSION:
        raise Refused(f"{path} has schema version {version}, newer than this release's "
                      f"{SCHEMA_VERSION}")
    return f"schema v{version}, {messages:,} messages"


def cmd_restore(args: argparse.Namespace) -> int:
    path = state_path(args.state_dir)
    what = _check_backup(args.source)
    exists = os.path.exists(path)
    plan = (f"restore {args.source} ({what}) as {path}"
            + (f", archiving the current state as {path}.archived-<time>"
               if exists else ""))
    if not args.yes:
        print(f"would {plan}. The service must be stopped. Re-run with --yes to do it.")
        return 2
    archived = None
    if exists:
        archived = archive_locked(lock_exclusive(path), path)
        print(f"current state archived as {archived}")
    os.makedirs(args.state_dir, exist_ok=True)
    shutil.copyfile(args.source, path + ".restoring")
    os.replace(path + ".restoring", path)
    db = sqlite3.connect(path)
    try:
        problems = integrity(db)
    finally:
        db.close()
    if problems:
        print(f"aki-alert state restore: restored state fails its integrity check: {problems[:3]}"
              + (f"; the previous state is {archived}" if archived else ""), file=sys.stderr)
        return 1
    print(f"restored {args.source} as {path}, integrity ok. Start the service; it checks the "
          "state's provenance against its configuration at start.")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    from .store.sqlite import SqliteStore

    path = state_path(args.state_dir)
    if not os.path.exists(path):
        raise Refused(f"no state at {path}: nothing to reset")
    if not args.yes:
        s = collect_status(args.state_dir)
        c = s["counts"]
        print(f"would archive {path} (environment {s['provenance']['environment'] or '-'}, "
              f"{sum(c['messages'].values()):,} messages, {sum(c['results'].values()):,} "
              f"results, {c['pages'].get('pending', 0)} pending pages) as "
              f"{path}.archived-<time> and leave an empty state; the service imports its "
              "history file at the next start. The service must be stopped. "
              "Re-run with --yes to do it.")
        return 2
    archived = archive_locked(lock_exclusive(path), path)
    SqliteStore(path).close()
    print(f"state archived as {archived}; empty state at {path}")
    return 0


# --- command line -----------------------------------------------------------------------------

def register(sub) -> None:
    p = sub.add_parser("state", help="inspect, check, back up, restore or reset the state",
                       description="Operator tools for the durable state (STATE_DIR/state.db). "
                                   "See docs/runbook-state.md.")
    ssub = p.add_subparsers(dest="state_command", metavar="SUBCOMMAND", required=True)

    s = ssub.add_parser("status", help="provenance and counts (read-only)")
    add_state_dir(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_guard(cmd_status))

    s = ssub.add_parser("check", help="integrity and consistency checks (read-only)")
    add_state_dir(s)
    s.add_argument("--pending-minutes", type=float, default=PENDING_MINUTES,
                   help=f"a page pending longer than this is a problem (default "
                        f"{PENDING_MINUTES})")
    s.set_defaults(func=_guard(cmd_check))

    s = ssub.add_parser("backup", help="online consistent copy of the state")
    add_state_dir(s)
    s.add_argument("--out", required=True, help="backup file to write (must not exist)")
    s.set_defaults(func=_guard(cmd_backup))

    s = ssub.add_parser("restore", help="replace the state with a backup (service stopped)")
    add_state_dir(s)
    s.add_argument("--from", dest="source", required=True, help="backup file")
    s.add_argument("--yes", action="store_true", help="do it (otherwise say what would happen)")
    s.set_defaults(func=_guard(cmd_restore))

    s = ssub.add_parser("reset", help="archive the state and leave an empty one (service stopped)")
    add_state_dir(s)
    s.add_argument("--yes", action="store_true", help="do it (otherwise say what would happen)")
    s.set_defaults(func=_guard(cmd_reset))


def _guard(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except Refused as e:
            print(f"aki-alert state {args.state_command}: {e}", file=sys.stderr)
            return 2
        except (sqlite3.Error, OSError) as e:
            print(f"aki-alert state {args.state_command}: {e}", file=sys.stderr)
            return 1
    return run

"""`aki-alert state status|check|migrate|backup|restore|reset`: the operator's tools for the
durable state, on either backend: SQLite (`--state-dir` / STATE_DIR, the file state.db) or
PostgreSQL (`--state-url` / STATE_URL, a postgresql:// URL).

- `status` says what the state is (environment, history file, when it was built, schema) and what
  it holds (patients, results by source, messages by status, the journal's decisions by status
  and message kind, dead letters, patient numbers merged into others, results corrected,
  removed (OBX-11 W/D) or merged away, pages by status, the oldest page still waiting).
  Read-only; safe while the service runs.
- `check` runs the project's own consistency checks (every page, admission, merge and kept
  revision points at a journaled message, every applied result message has its result row
  unless it was withdrawn or merged away since, no merged-away number still holds results,
  no page waits too long), and on SQLite also its `integrity_check`, which has no PostgreSQL
  equivalent (the output says so). The journal is read with the feed profile the service
  runs with (`--feed-profile` / FEED_PROFILE). Exit 0 when healthy, 1 with one line per
  problem. Read-only.
- `migrate [--dry-run]` reports the state's schema version and this release's, and applies the
  pending migrations in one transaction (the service also applies them when it opens a state).
  A state newer than this release is refused.
- `backup --out FILE` writes one self-contained SQLite file of the state's schema, from one
  committed snapshot (safe while the service runs), and integrity-checks it. From PostgreSQL
  the rows are copied into a new SQLite file, so a backup of either backend restores into
  either: that is also how a state moves from SQLite to PostgreSQL and back.
- `restore --from FILE --yes` and `reset --yes` replace the state, archiving the current one
  first (SQLite: `state.db.archived-<time>` beside it; PostgreSQL: a schema
  `archived_<time>`). They refuse while the service runs. SQLite: in WAL mode a plain
  `BEGIN EXCLUSIVE` succeeds beside an idle connection, so we ask for `locking_mode=EXCLUSIVE`
  too, which SQLite grants only when no other connection (the running service, a `status` in
  another shell) has the database open. PostgreSQL: the command takes the replicas' leader
  lease (leader.py), refused while a replica holds it, so no replica starts meanwhile.

Exit codes: 0 done / healthy, 1 failed / problems found, 2 refused (confirmation missing, the
service is probably running, nothing to act on, a state newer than this release).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

from .hl7.events import CORRECTED, FINAL, PRELIMINARY
from .store.msglog import segment_path, segments

STATE_FILE = "state.db"
ARCHIVE_FORMAT = "archived-%Y%m%dT%H%M%S"
PG_ARCHIVE_FORMAT = "%Y%m%dT%H%M%SZ"     # PostgreSQL: schema archived_<this>
LOCK_TIMEOUT = 0.5          # seconds: the service's transactions take milliseconds
LEASE_HOLD = 60             # seconds: restore/reset on PostgreSQL hold the leader lease (released
#                             at the end; a killed command delays the next leader this long)
PENDING_MINUTES = 5         # `check`: a page waiting longer than this is a problem

PAGE_STATUSES = ("pending", "delivered", "dead", "suppressed")
JOURNAL_STATUSES = ("applied", "duplicate-result", "ignored", "dead")
REVISION_ACTIONS = ("corrected", "removed", "merged")
STATE_TABLES = {"meta", "patients", "admissions", "results", "journal", "outbox"}
# OBX-11 statuses whose result is stored (W, D and X never are).
_KEEPS_A_ROW = (FINAL, CORRECTED, PRELIMINARY)


class Refused(Exception):
    """The command will not act; the message says why and what to do (exit 2)."""


# --- shared helpers (replay.py uses them too) -----------------------------------------------

def add_state_location(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=os.environ.get("STATE_DIR", "/state"),
                   metavar="STATE_DIR",
                   help="directory of the SQLite state (default /state); env STATE_DIR")
    p.add_argument("--state-url", default=os.environ.get("STATE_URL") or None,
                   metavar="STATE_URL",
                   help="a postgresql:// URL: the state in PostgreSQL instead (default: SQLite "
                        "in STATE_DIR); env STATE_URL")


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def open_state(args: argparse.Namespace, *, readonly: bool):
    """The state named by --state-url or --state-dir, never created: Refused when there is
    none. Read-only, or writable without migrating it (`migrate()` does that explicitly)."""
    from .store import open_store

    if not args.state_url:
        path = state_path(args.state_dir)
        if not os.path.exists(path):
            raise Refused(f"no state at {path}: check --state-dir / STATE_DIR (the service "
                          "creates the state at its first start)")
    store = open_store(args.state_dir, args.state_url, "process", migrate=False,
                       readonly=readonly)
    if args.state_url and not STATE_TABLES & store.tables():
        store.close()
        raise Refused(f"no state in {store.location}: check --state-url / STATE_URL (the "
                      "service creates the state at its first start)")
    return store


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
    directory = os.path.dirname(path)
    for name in ["messages.log"] + [os.path.basename(segment_path(directory, n))
                                    for n in segments(directory)]:
        log = os.path.join(directory, name)
        if os.path.exists(log) and os.path.getsize(log):
            os.replace(log, f"{archived}.{name}")
    return archived


@contextmanager
def holding_lease(url: str) -> Iterator[None]:
    """Hold the replicas' leader lease (leader.py) while replacing a PostgreSQL state: Refused
    while a replica holds it; a replica starting meanwhile waits as a standby."""
    from .leader import Lease

    lease = Lease(url, LEASE_HOLD, holder=f"aki-alert state ({socket.gethostname()}:"
                                          f"{os.getpid()})")
    try:
        if not lease.try_acquire():
            holder, left = lease.current()
            raise Refused(f"{holder} holds the leader lease (for {left:.0f} s more): the service "
                          "is running. Stop it first, e.g. `kubectl scale deploy/aki-alert "
                          "--replicas=0`, then retry")
        yield
    finally:
        lease.release()


# --- status ---------------------------------------------------------------------------------

def _one(store, sql: str, *args) -> object:
    return store.query(sql, *args).fetchone()[0]


def _pairs(store, sql: str) -> dict:
    return dict(store.query(sql).fetchall())


def collect_status(store, now: float | None = None) -> dict:
    from .timeutil import format_hl7_time

    now = time.time() if now is None else now
    missing = {"meta", "results", "journal", "outbox", "patients"} - store.tables()
    if missing:
        raise Refused(f"{store.location} is not an aki-alert state (no "
                      f"{', '.join(sorted(missing))})")
    meta = _pairs(store, "SELECT key, value FROM meta")
    oldest = _one(store, "SELECT min(created_at) FROM outbox WHERE status = 'pending'")
    latest_msg = _one(store, "SELECT max(received_at) FROM journal")
    latest = {src: format_hl7_time(t) for src, t in store.query(
        "SELECT source, max(time) FROM results GROUP BY source")}
    decisions: dict[str, dict] = {s: {"total": 0, "by_kind": {}} for s in JOURNAL_STATUSES}
    for status, kind, n in store.query("SELECT status, kind, count(*) FROM journal "
                                       "GROUP BY status, kind ORDER BY status, kind"):
        d = decisions.setdefault(status, {"total": 0, "by_kind": {}})
        d["total"] += n
        d["by_kind"][kind] = n
    v3 = "merges" in store.tables()      # a state before schema v3 has neither table
    revisions = dict.fromkeys(REVISION_ACTIONS, 0)
    if v3:
        revisions.update(_pairs(store, "SELECT action, count(*) FROM result_revisions "
                                       "GROUP BY action"))
    return {
        "state": store.storage(),
        "provenance": {
            "environment": meta.get("environment"),
            "history_path": meta.get("history_path"),
            "history_sha256": meta.get("history_sha256"),
            "created_at": iso(meta.get("created_at")),
            "history_imported_at": iso(meta.get("history_imported_at")),
            "schema_version": store.schema_version(),
            "detector": meta.get("detector"),
            "model_version": meta.get("model_version") or meta.get("detector_version"),
            "meta": meta,
        },
        "counts": {
            "patients": _one(store, "SELECT count(*) FROM (SELECT mrn FROM results "
                                    "UNION SELECT mrn FROM patients) AS known"),
            "patients_admitted": _one(store, "SELECT count(*) FROM patients WHERE admitted <> 0"),
            "results": _pairs(store, "SELECT source, count(*) FROM results GROUP BY source"),
            "messages": _pairs(store, "SELECT status, count(*) FROM journal GROUP BY status"),
            "decisions": decisions,
            "dead_letters": _one(store, "SELECT count(*) FROM dead_letters"),
            "merges": _one(store, "SELECT count(*) FROM merges") if v3 else 0,
            # Values kept for audit: corrected (replaced by a correction or a final after a
            # preliminary), removed (OBX-11 W/D), merged (a merged-away number's results).
            "result_revisions": revisions,
            "pages": _pairs(store, "SELECT status, count(*) FROM outbox GROUP BY status"),
            "oldest_pending_page_age_seconds": None if oldest is None
            else round(now - oldest, 1),
        },
        "latest": {
            "message_received_at": iso(latest_msg),
            "history_result": latest.get("history"),
            "feed_result": latest.get("feed"),
        },
    }


def format_status(s: dict) -> str:
    p, c, st, lt = s["provenance"], s["counts"], s["state"], s["latest"]
    sha = p["history_sha256"] or "-"

    def kv(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    age = c["oldest_pending_page_age_seconds"]
    wal = "" if st["wal_bytes"] is None else f", WAL {st['wal_bytes']:,}"
    lines = [
        f"state        {st['path']} ({st['size_bytes']:,} bytes{wal})",
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
        f"decisions    {_decisions(c['decisions'])}",
        f"dead letters {c['dead_letters']:,}",
        f"merges       {c['merges']:,} patient number(s) merged into others",
        f"revisions    {kv(c['result_revisions'])} (result values kept for audit)",
        f"pages        {kv(c['pages'])}",
        f"oldest pending page  {'-' if age is None else f'{age:.0f}s old'}",
        f"latest       message received {lt['message_received_at'] or '-'}, history result "
        f"{lt['history_result'] or '-'}, feed result {lt['feed_result'] or '-'}",
    ]
    if st["archives"]:
        lines.append(f"archives     {', '.join(st['archives'])}")
    return "\n".join(lines)


def _decisions(decisions: dict) -> str:
    """`applied 3 (admission 1, result 2); dead 1 (unparseable 1); …`"""
    parts = []
    for status in (*JOURNAL_STATUSES, *sorted(set(decisions) - set(JOURNAL_STATUSES))):
        d = decisions.get(status)
        if d is None:
            continue
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(d["by_kind"].items()))
        parts.append(f"{status} {d['total']:,}" + (f" ({kinds})" if kinds else ""))
    return "; ".join(parts)


def cmd_status(args: argparse.Namespace) -> int:
    with closing(open_state(args, readonly=True)) as store:
        s = collect_status(store)
    print(json.dumps(s, indent=2, sort_keys=True) if args.json else format_status(s))
    return 0


# --- check ----------------------------------------------------------------------------------

NO_INTEGRITY_CHECK = ("note: SQLite's integrity_check has no PostgreSQL equivalent and was not "
                      "run (the server checks its own pages: data checksums, amcheck); the "
                      "consistency checks below ran")


def find_problems(store, pending_minutes: float = PENDING_MINUTES,
                  now: float | None = None, profile=None) -> list[str]:
    """One line per problem: 'error: …' (the state is inconsistent) or 'warning: …'.
    `profile`: the feed profile the journal's messages are read with (default: the
    contract's), the service's, so that its codes and MRN rules are the ones applied."""
    from .store.admin import SCHEMA_VERSION

    now = time.time() if now is None else now
    problems = [f"error: integrity_check: {r}" for r in store.integrity() or []]
    version = store.schema_version()
    if version > SCHEMA_VERSION:
        problems.append(f"error: schema version {version}, newer than this release's "
                        f"{SCHEMA_VERSION}")
    elif version < SCHEMA_VERSION:
        problems.append(f"warning: schema version {version}, this release's is {SCHEMA_VERSION}:"
                        " run `aki-alert state migrate` (the service migrates at its start)")
    missing = STATE_TABLES - store.tables()
    if missing:
        return problems + [f"error: tables missing: {', '.join(sorted(missing))}"]
    return problems + _consistency(store, now - pending_minutes * 60, now, profile)


def _consistency(store, pending_before: float, now: float, profile=None) -> list[str]:
    from . import hl7

    profile = hl7.DEFAULT_PROFILE if profile is None else profile
    problems = []
    for oid, body, jid in store.query(
            "SELECT o.id, o.body, o.journal_id FROM outbox o "
            "LEFT JOIN journal j ON j.id = o.journal_id WHERE j.id IS NULL ORDER BY o.id"):
        problems.append(f"error: outbox row {oid} (page {body}) refers to journal row {jid}, "
                        "which does not exist")
    for aid, mrn, jid in store.query(
            "SELECT a.id, a.mrn, a.journal_id FROM admissions a "
            "LEFT JOIN journal j ON j.id = a.journal_id WHERE j.id IS NULL ORDER BY a.id"):
        problems.append(f"error: admissions row {aid} (MRN {mrn}) refers to journal row {jid}, "
                        "which does not exist")
    # A result may be gone for a reason: withdrawn later (W/D) or merged into another number
    # (kept track of from v3 on). A number withdrawn from, then merged, lives on as the
    # survivor.
    merged, withdrawn = {}, set()
    if "merges" in store.tables():
        merged = store.merged_numbers()
        withdrawn = {(merged.get(m, m), t) for m, t in store.query(
            "SELECT mrn, time FROM result_revisions WHERE action = 'removed'")}
        problems += _merge_problems(store, merged)
    for jid, raw in store.query("SELECT id, raw FROM journal WHERE status = 'applied' "
                                "AND kind = 'result' ORDER BY id").fetchall():
        try:
            r = hl7.parse(raw, profile)
        except hl7.HL7Error as e:
            problems.append(f"error: journal row {jid} is an applied result but does not parse "
                            f"({e})")
            continue
        if not isinstance(r, hl7.Result):
            problems.append(f"error: journal row {jid} is an applied result but is not one")
            continue
        mrn = merged.get(r.mrn, r.mrn)
        for o in r.observations:
            if o.status in _KEEPS_A_ROW and not store.has_result(mrn, o.time) \
                    and (mrn, o.time) not in withdrawn:
                problems.append(f"error: journal row {jid} (result MRN {mrn} at {o.time_text}) "
                                "is applied but its result row is missing")
    for status, n in store.query("SELECT status, count(*) FROM journal GROUP BY status"):
        if status not in JOURNAL_STATUSES:
            problems.append(f"error: {n} journal row(s) with unknown status {status!r}")
    for status, n in store.query("SELECT status, count(*) FROM outbox GROUP BY status"):
        if status not in PAGE_STATUSES:
            problems.append(f"error: {n} outbox row(s) with unknown status {status!r}")
    for oid, body, created, attempts, err in store.query(
            "SELECT id, body, created_at, attempts, last_error FROM outbox "
            "WHERE status = 'pending' AND created_at < ? ORDER BY id", pending_before):
        problems.append(f"warning: page {body} (outbox row {oid}) pending for "
                        f"{(now - created) / 60:.0f} min, {attempts} attempt(s)"
                        + (f", last error: {err}" if err else "")
                        + ": is the service running and the pager reachable?")
    return problems


def _merge_problems(store, merged: dict[str, str]) -> list[str]:
    """A merge, and every value kept for audit, point at a journaled message; a merged-away
    number holds no results and is nobody's survivor (a chain is kept flat: A→B then B→C
    records A→C)."""
    problems = []
    for table, what in (("merges", "old_mrn"), ("result_revisions", "mrn")):
        for mrn, jid in store.query(
                f"SELECT x.{what}, x.journal_id FROM {table} x LEFT JOIN journal j "
                f"ON j.id = x.journal_id WHERE j.id IS NULL ORDER BY x.journal_id"):
            problems.append(f"error: {table} row (MRN {mrn}) refers to journal row {jid}, "
                            "which does not exist")
    for old, n in store.query("SELECT r.mrn, count(*) FROM results r JOIN merges m "
                              "ON m.old_mrn = r.mrn GROUP BY r.mrn ORDER BY r.mrn"):
        problems.append(f"error: MRN {old} was merged into {merged[old]} but still holds "
                        f"{n} result(s)")
    for old, new in sorted(merged.items()):
        if new in merged:
            problems.append(f"error: MRN {old} was merged into {new}, which was itself merged "
                            f"into {merged[new]}")
    return problems


def feed_profile(args: argparse.Namespace):
    """The feed profile `--feed-profile` names (the default without one); Refused if unusable."""
    from . import hl7

    try:
        return hl7.load_profile(getattr(args, "feed_profile", ""))
    except hl7.ProfileError as e:
        raise Refused(str(e)) from None


def cmd_check(args: argparse.Namespace) -> int:
    profile = feed_profile(args)
    with closing(open_state(args, readonly=True)) as store:
        problems = find_problems(store, args.pending_minutes, profile=profile)
        where = store.location
    if args.state_url:
        print(NO_INTEGRITY_CHECK)
    for line in problems:
        print(line)
    if not problems:
        print(f"ok: {where} is consistent")
    return 1 if problems else 0


# --- migrate --------------------------------------------------------------------------------

def cmd_migrate(args: argparse.Namespace) -> int:
    from .store.admin import MIGRATION_NOTES, SCHEMA_VERSION

    with closing(open_state(args, readonly=False)) as store:
        m = store.migrate(dry_run=args.dry_run)
        where = store.location
    print(f"state {where}: schema v{m.current}, this release v{SCHEMA_VERSION}")
    if not m.steps:
        print("up to date: nothing to do")
        return 0
    print("would apply (dry run, nothing changed):" if args.dry_run
          else "applied, in one transaction:")
    for v in m.steps:
        print(f"  v{v}  {MIGRATION_NOTES[v]}")
    if not args.dry_run:
        print(f"schema now v{m.target}")
    return 0


# --- backup / restore / reset -----------------------------------------------------------------

def backup(args: argparse.Namespace, out: str) -> int:
    """Copy the state to `out` (one self-contained SQLite file); returns its size."""
    if os.path.exists(out):
        raise Refused(f"{out} exists: choose another --out (a backup never overwrites)")
    partial = out + ".partial"
    if os.path.exists(partial):              # left by an interrupted backup
        os.remove(partial)
    try:
        with closing(open_state(args, readonly=True)) as store:
            store.backup_to(partial)
        with closing(sqlite3.connect(partial, isolation_level=None)) as dst:
            dst.execute("PRAGMA journal_mode=DELETE")   # one file, no -wal to carry along
        problems = _integrity(partial)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    if problems:
        os.remove(partial)
        raise RuntimeError(f"the backup copy failed its integrity check: {problems[:3]}")
    os.replace(partial, out)
    return os.path.getsize(out)


def _integrity(path: str) -> list[str]:
    from .store.sqlite import SqliteStore

    with closing(SqliteStore(path, readonly=True)) as db:
        return db.integrity()


def cmd_backup(args: argparse.Namespace) -> int:
    try:
        size = backup(args, args.out)
    except RuntimeError as e:
        print(f"aki-alert state backup: {e}", file=sys.stderr)
        return 1
    print(f"backup {os.path.abspath(args.out)} ({size:,} bytes), integrity ok")
    return 0


def _check_backup(path: str) -> str:
    """What a backup file holds; Refused unless it is a sound state this release can use."""
    from .store.admin import SCHEMA_VERSION
    from .store.sqlite import SqliteStore

    if not os.path.isfile(path):
        raise Refused(f"no backup at {path}")
    try:
        with closing(SqliteStore(path, readonly=True)) as db:
            problems = db.integrity()
            version = db.schema_version()
            tables = db.tables()
            messages = _one(db, "SELECT count(*) FROM journal") if "journal" in tables else 0
    except sqlite3.DatabaseError as e:
        raise Refused(f"{path} is not a SQLite database: {e}") from None
    if problems:
        raise Refused(f"{path} fails its integrity check: {problems[:3]}")
    if not STATE_TABLES <= tables:
        raise Refused(f"{path} is not an aki-alert state")
    if version > SCHEMA_VERSION:
        raise Refused(f"{path} has schema version {version}, newer than this release's "
                      f"{SCHEMA_VERSION}")
    return f"schema v{version}, {messages:,} messages"


def _confirmed(args: argparse.Namespace, plan: str) -> bool:
    if not args.yes:
        print(f"would {plan}. The service must be stopped. Re-run with --yes to do it.")
    return args.yes


def cmd_restore(args: argparse.Namespace) -> int:
    what = _check_backup(args.source)
    if args.state_url:
        return _restore_postgres(args, what)
    path = state_path(args.state_dir)
    exists = os.path.exists(path)
    plan = (f"restore {args.source} ({what}) as {path}"
            + (f", archiving the current state as {path}.archived-<time>" if exists else ""))
    if not _confirmed(args, plan):
        return 2
    archived = None
    if exists:
        archived = archive_locked(lock_exclusive(path), path)
        print(f"current state archived as {archived}")
    os.makedirs(args.state_dir, exist_ok=True)
    shutil.copyfile(args.source, path + ".restoring")
    os.replace(path + ".restoring", path)
    problems = _integrity(path)
    if problems:
        print(f"aki-alert state restore: restored state fails its integrity check: {problems[:3]}"
              + (f"; the previous state is {archived}" if archived else ""), file=sys.stderr)
        return 1
    print(f"restored {args.source} as {path}, integrity ok. Start the service; it checks the "
          "state's provenance against its configuration at start.")
    return 0


def _restore_postgres(args: argparse.Namespace, what: str) -> int:
    from .store import open_store

    with closing(open_store(args.state_dir, args.state_url, "process", migrate=False)) as store:
        exists = "journal" in store.tables()
        plan = (f"restore {args.source} ({what}) into {store.location}"
                + (", archiving the current state as schema archived_<time>" if exists else ""))
        if not _confirmed(args, plan):
            return 2
        with holding_lease(args.state_url):
            archived = store.restore_from(args.source,
                                          time.strftime(PG_ARCHIVE_FORMAT, time.gmtime()))
        where = store.location
    if archived:
        print(f"current state archived as schema {archived}")
    print(f"restored {args.source} into {where}. Start the service; it checks the state's "
          "provenance against its configuration at start.")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    with closing(open_state(args, readonly=True)) as store:
        plan = _reset_plan(args, store)
    if not _confirmed(args, plan):
        return 2
    if args.state_url:
        with closing(open_state(args, readonly=False)) as store, holding_lease(args.state_url):
            archived = store.archive(time.strftime(PG_ARCHIVE_FORMAT, time.gmtime()))
            print(f"state archived as schema {archived}; empty state in {store.location}")
        return 0
    from .store.sqlite import SqliteStore

    path = state_path(args.state_dir)
    archived = archive_locked(lock_exclusive(path), path)
    SqliteStore(path).close()
    print(f"state archived as {archived}; empty state at {path}")
    return 0


def _reset_plan(args: argparse.Namespace, store) -> str:
    c = collect_status(store)["counts"]
    env = store.meta().get("environment") or "-"
    archive_as = "schema archived_<time>" if args.state_url else f"{store.location}.archived-<time>"
    return (f"archive {store.location} (environment {env}, {sum(c['messages'].values()):,} "
            f"messages, {sum(c['results'].values()):,} results, {c['pages'].get('pending', 0)} "
            f"pending pages) as {archive_as} and leave an empty state; the service imports its "
            "history file at the next start")


# --- command line -----------------------------------------------------------------------------

def register(sub) -> None:
    p = sub.add_parser("state", help="inspect, check, migrate, back up, restore or reset the state",
                       description="Operator tools for the durable state: SQLite "
                                   "(STATE_DIR/state.db) or PostgreSQL (STATE_URL). "
                                   "See docs/runbook-state.md.")
    ssub = p.add_subparsers(dest="state_command", metavar="SUBCOMMAND", required=True)

    s = ssub.add_parser("status", help="provenance and counts (read-only)")
    add_state_location(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_guard(cmd_status))

    s = ssub.add_parser("check", help="integrity and consistency checks (read-only)")
    add_state_location(s)
    s.add_argument("--pending-minutes", type=float, default=PENDING_MINUTES,
                   help=f"a page pending longer than this is a problem (default "
                        f"{PENDING_MINUTES})")
    s.add_argument("--feed-profile", default=os.environ.get("FEED_PROFILE", ""),
                   help="the feed profile the service runs with, to read the journal's "
                        "messages as it did (default: the contract's); env FEED_PROFILE")
    s.set_defaults(func=_guard(cmd_check))

    s = ssub.add_parser("migrate", help="bring the state's schema to this release's")
    add_state_location(s)
    s.add_argument("--dry-run", action="store_true", help="only list the pending migrations")
    s.set_defaults(func=_guard(cmd_migrate))

    s = ssub.add_parser("backup", help="online consistent copy of the state (a SQLite file)")
    add_state_location(s)
    s.add_argument("--out", required=True, help="backup file to write (must not exist)")
    s.set_defaults(func=_guard(cmd_backup))

    s = ssub.add_parser("restore", help="replace the state with a backup (service stopped)")
    add_state_location(s)
    s.add_argument("--from", dest="source", required=True, help="backup file")
    s.add_argument("--yes", action="store_true", help="do it (otherwise say what would happen)")
    s.set_defaults(func=_guard(cmd_restore))

    s = ssub.add_parser("reset", help="archive the state and leave an empty one (service stopped)")
    add_state_location(s)
    s.add_argument("--yes", action="store_true", help="do it (otherwise say what would happen)")
    s.set_defaults(func=_guard(cmd_reset))


def one_line(e: BaseException) -> str:
    """An error as one line (a driver's message may span several)."""
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) \
        or type(e).__name__


def exit_code(e: Exception) -> int | None:
    """2 for a refusal, 1 for a failure of the state or its storage, None for anything else
    (a bug: let it raise)."""
    from .store import NewerSchemaError, StateError, is_database_error

    if isinstance(e, (Refused, NewerSchemaError)):
        return 2
    if isinstance(e, (StateError, OSError)) or is_database_error(e):
        return 1
    return None


def _guard(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except Exception as e:
            code = exit_code(e)
            if code is None:
                raise
            print(f"aki-alert state {args.state_command}: {one_line(e)}", file=sys.stderr)
            return code
    return run

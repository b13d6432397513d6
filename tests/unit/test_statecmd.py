"""`aki-alert state status|check|migrate|backup|restore|reset` against real SQLite files and
real PostgreSQL databases (the `loc` tests run on both)."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from state_locations import location
from v1_state import copy_as_v1, v1_columns

from aki_alert.cli import main
from aki_alert.detect.nhs import NhsDetector
from aki_alert.hl7.profile import profile_from
from aki_alert.ingest import Ingest
from aki_alert.store.admin import MIGRATION_NOTES, SCHEMA_VERSION
from aki_alert.store.sqlite import SqliteStore
from aki_alert.timeutil import DAY, format_hl7_time, parse_hl7_time

T0 = parse_hl7_time("20240301080000")


def result(mrn, t, value):
    ts = format_hl7_time(t)
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{ts}||ORU^R01|||2.5\rPID|1||{mrn}\r"
            f"OBR|1||||||{ts}\rOBX|1|SN|CREATININE||{value}\r").encode()


def admit(mrn):
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{format_hl7_time(T0)}||ADT^A01|||2.5\r"
            f"PID|1||{mrn}||ANN SMITH||19600101|F\r").encode()


def obx_result(mrn, t, value, status="F", oru_time=None):
    """A result with an OBX-11 status (C corrects, W/D withdraw: no value)."""
    ts = format_hl7_time(t)
    obx = ["OBX", "1", "SN", "CREATININE", "", "" if value is None else str(value), "", "",
           "", "", "", status]
    return (f"MSH|^~\\&|LAB|RVJ|||{oru_time or ts}||ORU^R01|||2.5\rPID|1||{mrn}\r"
            f"OBR|1||||||{ts}\r{'|'.join(obx)}\r").encode()


def merge(old, new, t=T0 + 2 * DAY):
    return (f"MSH|^~\\&|PAS|RVJ|||{format_hl7_time(t)}||ADT^A40|||2.5\rPID|1||{new}\r"
            f"MRG|{old}\r").encode()


def fill_revisions(s):
    """On top of fill(): a correction (9), a withdrawal (W, 9), a merge of 2001 into 2002, a
    withdrawal then a merge (3001 into 3002), a repeated merge and a duplicate result."""
    ing = Ingest(s, NhsDetector())
    for raw in (
        obx_result(9, T0, 90.0), obx_result(9, T0, 95.0, "C", format_hl7_time(T0 + 60)),
        obx_result(9, T0 + DAY, 120.0), obx_result(9, T0 + DAY, None, "W",
                                                    format_hl7_time(T0 + DAY + 60)),
        obx_result(2001, T0, 80.0), obx_result(2002, T0 + DAY, 85.0), merge(2001, 2002),
        obx_result(3001, T0, 70.0), obx_result(3001, T0, None, "W", format_hl7_time(T0 + 60)),
        obx_result(3001, T0 + DAY, 72.0), merge(3001, 3002),
        merge(2001, 2002, T0 + 3 * DAY),                 # again (other bytes): ignored
        obx_result(2002, T0 + DAY, 85.0, "F", format_hl7_time(T0 + 3 * DAY)),  # duplicate
    ):
        ing.apply(raw, 0.0)
    s.close()


def fill(s):
    """A state like one the service built: provenance, history, an admission, two results
    (the second an AKI, so one pending page) and a dead letter."""
    with s.transaction():
        s.set_meta(environment="ward-test", history_path="/data/history.csv",
                   history_sha256="ab" * 32, created_at="1700000000",
                   history_imported_at="1700000001")
    s.import_results([("8", T0 - 30 * DAY, 80.0), ("8", T0 - 20 * DAY, 82.0)])
    ing = Ingest(s, NhsDetector())
    ing.apply(admit(7), 0.0)
    ing.apply(result(7, T0, 100.0), 0.0)
    ing.apply(result(7, T0 + DAY, 250.0), 0.0)
    ing.apply(b"garbage", 0.0)
    s.close()


@pytest.fixture
def state_dir(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    fill(SqliteStore(str(d / "state.db")))
    return str(d)


@pytest.fixture(params=["sqlite", "postgres"])
def loc(request, tmp_path):
    """The same state in SQLite or in PostgreSQL."""
    where = location(request, tmp_path)
    fill(where.open())
    return where


@pytest.fixture(params=["sqlite", "postgres"])
def rev_loc(request, tmp_path):
    """fill()'s state plus corrections, withdrawals and merges, in SQLite or PostgreSQL."""
    where = location(request, tmp_path)
    fill(where.open())
    fill_revisions(where.open())
    return where


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def cli(*argv, env=None):
    """The command in its own process, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "aki_alert", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def counts(path):
    db = sqlite3.connect(path)
    try:
        return (db.execute("SELECT count(*) FROM journal").fetchone()[0],
                db.execute("SELECT count(*) FROM results").fetchone()[0])
    finally:
        db.close()


def store_counts(store):
    """(messages, results) of an open store, which is closed."""
    try:
        c = store.counts()
        return c["messages"], c["results"]
    finally:
        store.close()


def change(loc, sql, *args):
    """Edit the state behind the service's back (what the checks must find)."""
    s = loc.open()
    with s.transaction():
        s.query(sql, *args)
    s.close()


def problems(out):
    """The lines of `state check` naming problems (PostgreSQL adds a note first)."""
    return [line for line in out.splitlines() if not line.startswith("note:")]


def archives(state_dir):
    return sorted(f for f in os.listdir(state_dir) if ".archived-" in f)


# --- status ---------------------------------------------------------------------------------

def test_status_json_reports_provenance_and_counts(loc, capsys):
    rc, out, _ = run(capsys, "state", "status", *loc.argv, "--json")
    assert rc == 0
    s = json.loads(out)
    p, c = s["provenance"], s["counts"]
    assert s["state"]["backend"] == loc.backend
    assert p["environment"] == "ward-test" and p["history_sha256"] == "ab" * 32
    assert p["history_path"] == "/data/history.csv" and p["schema_version"] == SCHEMA_VERSION
    assert p["created_at"] == "2023-11-14T22:13:20Z"
    assert c["patients"] == 2 and c["patients_admitted"] == 1
    assert c["results"] == {"history": 2, "feed": 2}
    assert c["messages"] == {"applied": 3, "dead": 1} and c["dead_letters"] == 1
    assert c["decisions"] == {
        "applied": {"total": 3, "by_kind": {"admission": 1, "result": 2}},
        "duplicate-result": {"total": 0, "by_kind": {}},
        "ignored": {"total": 0, "by_kind": {}},
        "dead": {"total": 1, "by_kind": {"unparseable": 1}}}
    assert c["merges"] == 0
    assert c["result_revisions"] == {"corrected": 0, "removed": 0, "merged": 0}
    assert c["pages"] == {"pending": 1}
    assert 0 <= c["oldest_pending_page_age_seconds"] < 60
    assert s["latest"]["feed_result"] == format_hl7_time(T0 + DAY)


def test_status_text_in_a_subprocess(loc):
    p = cli("state", "status", *loc.argv)
    assert p.returncode == 0, p.stderr
    assert "environment  ward-test" in p.stdout
    assert "results      feed 2, history 2" in p.stdout
    assert "pages        pending 1" in p.stdout
    first = p.stdout.splitlines()[0]
    assert ("WAL" in first) == (loc.backend == "sqlite")
    assert "password" not in first


def test_status_counts_merges_revisions_and_decisions(rev_loc, capsys):
    rc, out, _ = run(capsys, "state", "status", *rev_loc.argv, "--json")
    assert rc == 0
    c = json.loads(out)["counts"]
    assert c["merges"] == 2
    # 9's 90 corrected; 9's 120 and 3001's 70 withdrawn; 2001's 80 and 3001's 72 merged away.
    assert c["result_revisions"] == {"corrected": 1, "removed": 2, "merged": 2}
    d = c["decisions"]
    assert d["applied"] == {"total": 14, "by_kind": {"admission": 1, "merge": 2, "result": 11}}
    assert d["ignored"] == {"total": 1, "by_kind": {"merge": 1}}
    assert d["duplicate-result"] == {"total": 1, "by_kind": {"result": 1}}
    assert d["dead"]["total"] == 1
    assert c["messages"] == {"applied": 14, "ignored": 1, "duplicate-result": 1, "dead": 1}
    rc, out, _ = run(capsys, "state", "status", *rev_loc.argv)
    assert rc == 0
    assert "decisions    applied 14 (admission 1, merge 2, result 11); duplicate-result 1 " \
           "(result 1); ignored 1 (merge 1); dead 1 (unparseable 1)" in out
    assert "merges       2 patient number(s) merged into others" in out
    assert "revisions    corrected 1, merged 2, removed 2 (result values kept for audit)" in out


def test_check_tolerates_corrected_withdrawn_and_merged_results(rev_loc, capsys):
    rc, out, _ = run(capsys, "state", "check", *rev_loc.argv)
    assert rc == 0, out
    assert problems(out)[-1].endswith(" is consistent")


def test_check_names_a_merged_away_number_that_still_holds_results(rev_loc, capsys):
    change(rev_loc, "INSERT INTO results (mrn, time, value, source) VALUES ('2001', ?, 1.0, "
                    "'feed')", T0 + 9 * DAY)
    change(rev_loc, "INSERT INTO merges (old_mrn, new_mrn, merged_at, journal_id) "
                    "SELECT '5005', '2001', merged_at, journal_id FROM merges "
                    "WHERE old_mrn = '2001'")
    change(rev_loc, "UPDATE result_revisions SET journal_id = 999 WHERE action = 'corrected'")
    rc, out, _ = run(capsys, "state", "check", *rev_loc.argv)
    assert rc == 1
    assert problems(out) == [
        "error: result_revisions row (MRN 9) refers to journal row 999, which does not exist",
        "error: MRN 2001 was merged into 2002 but still holds 1 result(s)",
        "error: MRN 5005 was merged into 2001, which was itself merged into 2002"]


def test_check_reads_the_journal_with_the_feed_profile(loc, tmp_path, capsys):
    s = loc.open()
    ing = Ingest(s, NhsDetector(), profile=profile_from({
        "patient": {"strip_leading_zeros": True},
        "creatinine": [{"code": "CREA", "unit": "umol/L"}]}))
    ing.apply(obx_result("0042", T0, 80.0).replace(b"CREATININE", b"CREA"), 0.0)
    s.close()
    rc, out, _ = run(capsys, "state", "check", *loc.argv)
    assert rc == 1 and "is an applied result but is not one" in out
    profile = tmp_path / "feed.toml"
    profile.write_text('[patient]\nstrip_leading_zeros = true\n[[creatinine]]\n'
                       'code = "CREA"\nunit = "umol/L"\n')
    rc, out, _ = run(capsys, "state", "check", *loc.argv, "--feed-profile", str(profile))
    assert rc == 0, out
    rc, _, err = run(capsys, "state", "check", *loc.argv, "--feed-profile",
                     str(tmp_path / "missing.toml"))
    assert rc == 2 and "feed profile" in err


def test_status_takes_the_state_from_the_environment(loc):
    p = subprocess.run([sys.executable, "-m", "aki_alert", "state", "status", "--json"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, **loc.env})
    assert p.returncode == 0 and json.loads(p.stdout)["provenance"]["environment"] == "ward-test"


def test_status_of_a_missing_state_is_refused_and_creates_nothing(tmp_path, capsys):
    rc, _, err = run(capsys, "state", "status", "--state-dir", str(tmp_path))
    assert rc == 2 and "no state at" in err
    assert os.listdir(tmp_path) == []


def test_status_of_an_empty_database_is_refused_and_creates_nothing(postgres_url, capsys):
    rc, _, err = run(capsys, "state", "status", "--state-url", postgres_url)
    assert rc == 2 and "no state in" in err
    rc, _, err = run(capsys, "state", "migrate", "--state-url", postgres_url)
    assert rc == 2 and "no state in" in err
    import psycopg
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                          ).fetchone()[0] == 0


# --- check ----------------------------------------------------------------------------------

def test_check_healthy_state(loc):
    p = cli("state", "check", *loc.argv)
    assert p.returncode == 0, p.stdout + p.stderr
    if loc.backend == "sqlite":
        assert p.stdout.startswith("ok:")
    else:        # no integrity_check on PostgreSQL: it says so rather than pretend
        note, ok = p.stdout.splitlines()
        assert note.startswith("note: SQLite's integrity_check has no PostgreSQL equivalent")
        assert ok.startswith("ok: ") and ok.endswith(" is consistent")


def test_check_names_an_outbox_row_whose_journal_row_is_gone(loc, capsys):
    s = loc.open()
    oid, jid, body = s.query("SELECT id, journal_id, body FROM outbox").fetchone()
    s.close()
    change(loc, "DELETE FROM journal WHERE id = ?", jid)
    rc, out, _ = run(capsys, "state", "check", *loc.argv)
    assert rc == 1
    assert problems(out) == [f"error: outbox row {oid} (page {body}) refers to journal row "
                             f"{jid}, which does not exist"]


def test_check_names_an_applied_result_without_its_result_row(loc, capsys):
    change(loc, "DELETE FROM results WHERE mrn = '7' AND time = ?", T0)
    rc, out, _ = run(capsys, "state", "check", *loc.argv)
    assert rc == 1
    assert len(problems(out)) == 1
    assert f"(result MRN 7 at {format_hl7_time(T0)}) is applied but its result row is missing" \
        in out


def test_check_warns_of_a_page_pending_too_long(loc, capsys):
    change(loc, "UPDATE outbox SET created_at = ?, attempts = 4, last_error = 'timeout'",
           time.time() - 3600)
    rc, out, _ = run(capsys, "state", "check", *loc.argv)
    assert rc == 1
    assert problems(out)[0].startswith(
        f"warning: page 7,{format_hl7_time(T0 + DAY)} (outbox row 1) pending for 60 min, "
        "4 attempt(s), last error: timeout")
    rc, _, _ = run(capsys, "state", "check", *loc.argv, "--pending-minutes", "90")
    assert rc == 0


def test_check_fails_on_a_corrupt_file(state_dir, capsys):
    path = os.path.join(state_dir, "state.db")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:     # wipe every page after the schema page
        f.seek(4096)
        f.write(b"\xff" * (size - 4096))
    rc, out, err = run(capsys, "state", "check", "--state-dir", state_dir)
    assert rc == 1 and (out + err).strip()
    assert "Traceback" not in err


# --- backup ---------------------------------------------------------------------------------

def test_backup_while_another_connection_holds_a_write_transaction(state_dir, tmp_path, capsys):
    path = os.path.join(state_dir, "state.db")
    writer = SqliteStore(path)
    writer.db.execute("BEGIN IMMEDIATE")
    writer.journal(b"x" * 16, "result", "9", "applied", None, b"uncommitted")
    out_file = str(tmp_path / "backup.db")
    rc, out, err = run(capsys, "state", "backup", "--state-dir", state_dir, "--out", out_file)
    writer.db.execute("COMMIT")
    writer.close()
    assert rc == 0, err
    assert out.startswith(f"backup {out_file} (") and "integrity ok" in out
    assert counts(out_file) == (4, 4)          # the committed snapshot, not the open transaction
    assert counts(path) == (5, 4)
    assert not os.path.exists(out_file + "-wal")
    db = sqlite3.connect(out_file)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_backup_never_overwrites(state_dir, tmp_path):
    target = tmp_path / "b.db"
    target.write_bytes(b"precious")
    p = cli("state", "backup", "--state-dir", state_dir, "--out", str(target))
    assert p.returncode == 2 and "exists" in p.stderr
    assert target.read_bytes() == b"precious"
    p = cli("state", "backup", "--state-dir", state_dir, "--out", str(tmp_path / "c.db"))
    assert p.returncode == 0 and counts(str(tmp_path / "c.db")) == (4, 4)


# --- restore --------------------------------------------------------------------------------

@pytest.fixture
def backup_file(state_dir, tmp_path, capsys):
    out = str(tmp_path / "backup.db")
    assert main(["state", "backup", "--state-dir", state_dir, "--out", out]) == 0
    capsys.readouterr()
    # the state moves on after the backup
    s = SqliteStore(os.path.join(state_dir, "state.db"))
    Ingest(s, NhsDetector()).apply(result(7, T0 + 2 * DAY, 120.0), 0.0)
    s.close()
    return out


def test_restore_without_yes_changes_nothing(state_dir, backup_file, capsys):
    rc, out, _ = run(capsys, "state", "restore", "--state-dir", state_dir, "--from", backup_file)
    assert rc == 2 and out.startswith("would restore") and "--yes" in out
    assert counts(os.path.join(state_dir, "state.db")) == (5, 5)
    assert archives(state_dir) == []


def test_restore_refused_while_another_connection_has_the_state_open(state_dir, backup_file,
                                                                    capsys):
    idle = SqliteStore(os.path.join(state_dir, "state.db"))   # the service, between messages
    try:
        rc, _, err = run(capsys, "state", "restore", "--state-dir", state_dir, "--from",
                         backup_file, "--yes")
        assert rc == 2 and "service is probably running" in err
        idle.db.execute("BEGIN IMMEDIATE")                        # the service, mid-message
        rc, _, err = run(capsys, "state", "restore", "--state-dir", state_dir, "--from",
                         backup_file, "--yes")
        assert rc == 2 and "service is probably running" in err
        idle.db.execute("ROLLBACK")
    finally:
        idle.close()
    assert counts(os.path.join(state_dir, "state.db")) == (5, 5)
    assert archives(state_dir) == []


def test_restore_refused_while_another_process_has_the_state_open(state_dir, backup_file):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
         "db.execute('SELECT count(*) FROM journal').fetchone(); print('ready', flush=True); "
         "sys.stdin.read()", os.path.join(state_dir, "state.db")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        p = cli("state", "restore", "--state-dir", state_dir, "--from", backup_file, "--yes")
        assert p.returncode == 2 and "service is probably running" in p.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert archives(state_dir) == []
    p = cli("state", "restore", "--state-dir", state_dir, "--from", backup_file, "--yes")
    assert p.returncode == 0, p.stderr
    assert counts(os.path.join(state_dir, "state.db")) == (4, 4)


def test_restore_archives_the_current_state_then_puts_the_backup_in_place(state_dir, backup_file,
                                                                         capsys):
    rc, out, err = run(capsys, "state", "restore", "--state-dir", state_dir, "--from",
                       backup_file, "--yes")
    assert rc == 0, err
    assert "integrity ok" in out
    [archived] = archives(state_dir)
    assert counts(os.path.join(state_dir, archived)) == (5, 5)      # what was there
    assert counts(os.path.join(state_dir, "state.db")) == (4, 4)    # the backup
    rc, _, _ = run(capsys, "state", "check", "--state-dir", state_dir)
    assert rc == 0
    s = SqliteStore(os.path.join(state_dir, "state.db"))        # the service can open it
    assert s.meta()["environment"] == "ward-test"
    s.close()


def test_restore_refuses_a_file_that_is_not_a_state(state_dir, tmp_path, capsys):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    rc, _, err = run(capsys, "state", "restore", "--state-dir", state_dir, "--from", str(junk),
                     "--yes")
    assert rc == 2 and "not a SQLite database" in err
    assert archives(state_dir) == []


# --- reset ----------------------------------------------------------------------------------

def test_reset_without_yes_says_what_it_would_do(state_dir):
    p = cli("state", "reset", "--state-dir", state_dir)
    assert p.returncode == 2
    assert "would archive" in p.stdout and "environment ward-test, 4 messages" in p.stdout
    assert archives(state_dir) == [] and counts(os.path.join(state_dir, "state.db")) == (4, 4)


def test_reset_archives_and_leaves_an_empty_state(state_dir):
    p = cli("state", "reset", "--state-dir", state_dir, "--yes")
    assert p.returncode == 0, p.stderr
    [archived] = archives(state_dir)
    assert archived.startswith("state.db.archived-") and archived in p.stdout
    assert counts(os.path.join(state_dir, archived)) == (4, 4)
    path = os.path.join(state_dir, "state.db")
    assert counts(path) == (0, 0)
    s = SqliteStore(path)
    assert s.meta() == {}            # no provenance: the service imports its history at start
    s.close()
    assert not os.path.exists(path + "-wal")
    assert cli("state", "reset", "--state-dir", state_dir, "--yes").returncode == 0
    assert len(archives(state_dir)) == 2          # a second reset in the same second: no clash


def test_reset_refused_while_the_service_has_the_state_open(state_dir, capsys):
    idle = SqliteStore(os.path.join(state_dir, "state.db"))
    try:
        rc, _, err = run(capsys, "state", "reset", "--state-dir", state_dir, "--yes")
    finally:
        idle.close()
    assert rc == 2 and "service is probably running" in err
    assert archives(state_dir) == [] and counts(os.path.join(state_dir, "state.db")) == (4, 4)


def test_reset_takes_the_message_log_of_a_killed_service_with_the_archive(tmp_path):
    import os

    from aki_alert.statecmd import archive_locked, lock_exclusive
    from aki_alert.store.sqlite import SqliteStore

    path = str(tmp_path / "state.db")
    SqliteStore(path).close()
    (tmp_path / "messages.log").write_bytes(b"M\x00\x00\x00\x01x")
    archived = archive_locked(lock_exclusive(path), path)
    assert os.path.exists(archived + ".messages.log")
    assert not (tmp_path / "messages.log").exists()



def dump(store, columns=None):
    """The schema version and every row of every table of an open store (closed after);
    `columns`: only these tables and columns (what a v1 state has)."""
    from aki_alert.store.admin import data_tables

    try:
        version = store.schema_version()
        which = columns or {t: ["*"] for t in data_tables(version)}
        rows = {t: sorted(tuple(r) for r in store.query(
                    f"SELECT {', '.join(cols)} FROM {t}").fetchall()) for t, cols in which.items()}
        return version, rows
    finally:
        store.close()


# --- migrate ----------------------------------------------------------------------------------

def fill_v1(store):
    """The state as release v1 left it, holding what `fill` writes."""
    copy_as_v1(store, fill)
    store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def v1_loc(request, tmp_path):
    where = location(request, tmp_path)
    fill_v1(where.open(migrate=False))
    return where


def test_migrate_reports_lists_and_applies_with_the_data_intact(v1_loc, capsys):
    v1 = v1_columns()
    version, before = dump(v1_loc.open(migrate=False), v1)
    assert version == 1

    rc, out, _ = run(capsys, "state", "migrate", *v1_loc.argv, "--dry-run")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].endswith(f": schema v1, this release v{SCHEMA_VERSION}")
    assert lines[1:] == ["would apply (dry run, nothing changed):",
                         "  v2  index outbox (result_time), read every minute by the quality "
                         "monitor (pages_since)", "  v3  " + MIGRATION_NOTES[3]]
    assert dump(v1_loc.open(migrate=False), v1) == (1, before)      # the dry run changed nothing

    rc, out, _ = run(capsys, "state", "migrate", *v1_loc.argv)
    assert rc == 0
    assert out.splitlines()[1:] == ["applied, in one transaction:",
                                    "  v2  index outbox (result_time), read every minute by the "
                                    "quality monitor (pages_since)",
                                    "  v3  " + MIGRATION_NOTES[3],
                                    f"schema now v{SCHEMA_VERSION}"]
    assert dump(v1_loc.open(migrate=False), v1) == (SCHEMA_VERSION, before)
    s = v1_loc.open(migrate=False)
    assert "outbox_result_time" in s.tables()
    s.close()

    rc, out, _ = run(capsys, "state", "migrate", *v1_loc.argv)       # idempotent
    assert rc == 0 and out.splitlines()[1:] == ["up to date: nothing to do"]
    rc, out, _ = run(capsys, "state", "status", *v1_loc.argv, "--json")
    assert json.loads(out)["provenance"]["schema_version"] == SCHEMA_VERSION


def test_check_says_when_a_state_awaits_its_migration(v1_loc, capsys):
    rc, out, _ = run(capsys, "state", "check", *v1_loc.argv)
    assert rc == 1
    assert problems(out) == [f"warning: schema version 1, this release's is {SCHEMA_VERSION}: "
                             "run `aki-alert state migrate` (the service migrates at its start)"]


def test_migrate_refuses_a_newer_state_and_leaves_it_alone(loc):
    s = loc.open()
    with s.transaction():
        s._set_schema_version(SCHEMA_VERSION + 1)
    s.close()
    for args in ((), ("--dry-run",)):
        p = cli("state", "migrate", *args, env=loc.env)
        assert p.returncode == 2
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
        assert f"schema version {SCHEMA_VERSION + 1}, newer than this release's " \
               f"{SCHEMA_VERSION}" in p.stderr
    assert loc.open(readonly=True).schema_version() == SCHEMA_VERSION + 1


# --- bad input: one line, no traceback --------------------------------------------------------

@pytest.mark.parametrize("url, says", [
    ("mysql://db/aki", "STATE_URL must be a postgresql:// URL"),
    ("postgresql://127.0.0.1:1/aki?connect_timeout=2", "cannot open state database"),
    ("postgresql://db:notaport/aki", "cannot open state database"),
])
def test_a_bad_or_unreachable_url_is_one_line(url, says, capsys):
    for command in ("status", "check", "migrate", "reset"):
        rc, out, err = run(capsys, "state", command, "--state-url", url)
        assert rc == 1 and out == ""
        assert err.startswith(f"aki-alert state {command}: ") and says in err
        assert err.count("\n") == 1


# --- PostgreSQL: backup, restore, reset -------------------------------------------------------

@pytest.fixture
def pg(postgres_url, tmp_path):
    """The state in PostgreSQL, as `loc` (postgres) builds it."""
    from state_locations import Location

    from aki_alert.store.postgres import PostgresStore

    fill(PostgresStore(postgres_url))
    return Location("postgres", ["--state-url", postgres_url], {"STATE_URL": postgres_url},
                    lambda **kw: PostgresStore(postgres_url, **kw))


def test_postgres_backup_is_a_snapshot_in_a_sqlite_file(pg, tmp_path, capsys):
    writer = pg.open()
    writer.begin_batch()                                   # the service, mid-batch
    writer.journal(b"x" * 16, "result", "9", "applied", None, b"uncommitted")
    out_file = str(tmp_path / "backup.db")
    rc, out, err = run(capsys, "state", "backup", *pg.argv, "--out", out_file)
    writer.commit_batch()
    writer.close()
    assert rc == 0, err
    assert out.startswith(f"backup {out_file} (") and "integrity ok" in out
    assert counts(out_file) == (4, 4)                      # the committed snapshot only
    assert store_counts(pg.open()) == (5, 4)
    assert not os.path.exists(out_file + "-wal") and not os.path.exists(out_file + ".partial")
    db = sqlite3.connect(out_file)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    # Byte for byte the same rows, in a file the SQLite backend opens as it is.
    assert dump(SqliteStore(out_file, readonly=True))[1] == _committed(pg)
    rc, _, err = run(capsys, "state", "backup", *pg.argv, "--out", out_file)
    assert rc == 2 and "exists" in err


def _committed(pg):
    """The PostgreSQL state's rows without the message journaled after the backup."""
    rows = dump(pg.open())[1]
    rows["journal"] = [r for r in rows["journal"] if r[7] != b"uncommitted"]
    return rows


def test_postgres_restore_without_yes_changes_nothing(pg, state_dir, tmp_path, capsys):
    backup_file = str(tmp_path / "b.db")
    assert run(capsys, "state", "backup", "--state-dir", state_dir, "--out", backup_file)[0] == 0
    before = dump(pg.open())
    rc, out, _ = run(capsys, "state", "restore", *pg.argv, "--from", backup_file)
    assert rc == 2 and out.startswith("would restore") and "archived_<time>" in out
    assert dump(pg.open()) == before


def test_postgres_restore_and_reset_are_refused_while_a_replica_holds_the_lease(pg, tmp_path,
                                                                                capsys):
    from aki_alert.leader import Lease

    backup_file = str(tmp_path / "b.db")
    assert run(capsys, "state", "backup", *pg.argv, "--out", backup_file)[0] == 0
    before = dump(pg.open())
    leader = Lease(pg.env["STATE_URL"], 30, holder="replica-a")
    assert leader.try_acquire()
    try:
        for argv in (("restore", "--from", backup_file), ("reset",)):
            rc, _, err = run(capsys, "state", *argv, *pg.argv, "--yes")
            assert rc == 2 and "replica-a holds the leader lease" in err
            assert "the service is running" in err
        assert dump(pg.open()) == before
        assert leader.renew()                        # the replica still leads
    finally:
        leader.release()
    rc, _, err = run(capsys, "state", "reset", *pg.argv, "--yes")
    assert rc == 0, err


def test_postgres_reset_archives_into_a_schema_and_leaves_an_empty_state(pg, capsys):
    from aki_alert.leader import Lease

    rc, out, _ = run(capsys, "state", "reset", *pg.argv)
    assert rc == 2 and "would archive" in out and "environment ward-test, 4 messages" in out
    rc, out, err = run(capsys, "state", "reset", *pg.argv, "--yes")
    assert rc == 0, err
    s = pg.open()
    [archived] = s.storage()["archives"]
    assert archived.startswith("archived_") and f"schema {archived}" in out
    assert s.query(f'SELECT count(*) FROM "{archived}".journal').fetchone()[0] == 4
    assert s.meta() == {} and store_counts(s) == (0, 0)
    # The lease is free again: a replica starts at once.
    replica = Lease(pg.env["STATE_URL"], 5)
    assert replica.try_acquire()
    replica.release()
    rc, _, _ = run(capsys, "state", "reset", *pg.argv, "--yes")
    assert rc == 0 and len(pg.open(readonly=True).storage()["archives"]) == 2


def test_backups_restore_across_backends_both_ways(state_dir, postgres_url, tmp_path, capsys):
    """SQLite → PostgreSQL → SQLite: the move an operator makes, with the same rows at the end,
    and each restored state usable by the service."""
    from aki_alert.store.postgres import PostgresStore

    sqlite_argv, pg_argv = ["--state-dir", state_dir], ["--state-url", postgres_url]
    original = dump(SqliteStore(os.path.join(state_dir, "state.db")))
    first, second = str(tmp_path / "from-sqlite.db"), str(tmp_path / "from-postgres.db")

    assert run(capsys, "state", "backup", *sqlite_argv, "--out", first)[0] == 0
    rc, out, err = run(capsys, "state", "restore", *pg_argv, "--from", first, "--yes")
    assert rc == 0, err
    assert "current state archived" not in out             # the database held no state
    assert dump(PostgresStore(postgres_url)) == original
    assert run(capsys, "state", "check", *pg_argv)[0] == 0

    # The service goes on in PostgreSQL: new rows are numbered after the restored ones.
    s = PostgresStore(postgres_url)
    Ingest(s, NhsDetector()).apply(result(7, T0 + 2 * DAY, 120.0), 0.0)
    assert s.query("SELECT max(id) FROM journal").fetchone()[0] == 5
    s.close()

    assert run(capsys, "state", "backup", *pg_argv, "--out", second)[0] == 0
    rc, out, err = run(capsys, "state", "restore", *sqlite_argv, "--from", second, "--yes")
    assert rc == 0, err
    assert out.startswith("current state archived as")
    version, rows = dump(SqliteStore(os.path.join(state_dir, "state.db")))
    assert version == SCHEMA_VERSION
    assert dump(PostgresStore(postgres_url)) == (version, rows)
    # What SQLite held, and what the service added in PostgreSQL.
    assert rows["journal"][:4] == original[1]["journal"] and len(rows["journal"]) == 5
    assert len(rows["results"]) == len(original[1]["results"]) + 1
    assert run(capsys, "state", "check", *sqlite_argv)[0] == 0


def test_a_v1_backup_restores_into_postgres_at_v1_then_migrates(postgres_url, tmp_path, capsys):
    fill_v1(SqliteStore(str(tmp_path / "state.db"), migrate=False))
    backup_file = str(tmp_path / "v1.db")
    assert main(["state", "backup", "--state-dir", str(tmp_path), "--out", backup_file]) == 0
    pg_argv = ["--state-url", postgres_url]
    rc, _, err = run(capsys, "state", "restore", *pg_argv, "--from", backup_file, "--yes")
    assert rc == 0, err
    rc, out, _ = run(capsys, "state", "status", *pg_argv, "--json")
    assert json.loads(out)["provenance"]["schema_version"] == 1
    rc, out, _ = run(capsys, "state", "migrate", *pg_argv)
    assert rc == 0 and out.splitlines()[-1] == f"schema now v{SCHEMA_VERSION}"
    assert run(capsys, "state", "check", *pg_argv)[0] == 0

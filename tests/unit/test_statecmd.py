"""`aki-alert state status|check|backup|restore|reset` against real SQLite files."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from aki_alert.cli import main
from aki_alert.detect.nhs import NhsDetector
from aki_alert.ingest import Ingest
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


@pytest.fixture
def state_dir(tmp_path):
    """A state like one the service built: provenance, history, an admission, two results
    (the second an AKI, so one pending page) and a dead letter."""
    d = tmp_path / "state"
    d.mkdir()
    s = SqliteStore(str(d / "state.db"))
    with s.transaction():
        s.set_meta(environment="ward-test", history_path="/data/history.csv",
                   history_sha256="ab" * 32, created_at="1700000000",
                   history_imported_at="1700000001")
    s.import_results([("8", T0 - 30 * DAY, 80.0), ("8", T0 - 20 * DAY, 82.0)])
    ing = Ingest(s, NhsDetector())
    ing.handle(admit(7), 0.0)
    ing.handle(result(7, T0, 100.0), 0.0)
    ing.handle(result(7, T0 + DAY, 250.0), 0.0)
    ing.handle(b"garbage", 0.0)
    s.close()
    return str(d)


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def cli(*argv):
    """The command in its own process, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "aki_alert", *argv], capture_output=True,
                          text=True, timeout=60)


def counts(path):
    db = sqlite3.connect(path)
    try:
        return (db.execute("SELECT count(*) FROM journal").fetchone()[0],
                db.execute("SELECT count(*) FROM results").fetchone()[0])
    finally:
        db.close()


def archives(state_dir):
    return sorted(f for f in os.listdir(state_dir) if ".archived-" in f)


# --- status ---------------------------------------------------------------------------------

def test_status_json_reports_provenance_and_counts(state_dir, capsys):
    rc, out, _ = run(capsys, "state", "status", "--state-dir", state_dir, "--json")
    assert rc == 0
    s = json.loads(out)
    p, c = s["provenance"], s["counts"]
    assert p["environment"] == "ward-test" and p["history_sha256"] == "ab" * 32
    assert p["history_path"] == "/data/history.csv" and p["schema_version"] == 1
    assert p["created_at"] == "2023-11-14T22:13:20Z"
    assert c["patients"] == 2 and c["patients_admitted"] == 1
    assert c["results"] == {"history": 2, "feed": 2}
    assert c["messages"] == {"applied": 3, "dead": 1} and c["dead_letters"] == 1
    assert c["pages"] == {"pending": 1}
    assert 0 <= c["oldest_pending_page_age_seconds"] < 60
    assert s["latest"]["feed_result"] == format_hl7_time(T0 + DAY)


def test_status_text_in_a_subprocess(state_dir):
    p = cli("state", "status", "--state-dir", state_dir)
    assert p.returncode == 0, p.stderr
    assert "environment  ward-test" in p.stdout
    assert "results      feed 2, history 2" in p.stdout
    assert "pages        pending 1" in p.stdout


def test_status_takes_state_dir_from_the_environment(state_dir):
    p = subprocess.run([sys.executable, "-m", "aki_alert", "state", "status", "--json"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "STATE_DIR": state_dir})
    assert p.returncode == 0 and json.loads(p.stdout)["provenance"]["environment"] == "ward-test"


def test_status_of_a_missing_state_is_refused_and_creates_nothing(tmp_path, capsys):
    rc, _, err = run(capsys, "state", "status", "--state-dir", str(tmp_path))
    assert rc == 2 and "no state at" in err
    assert os.listdir(tmp_path) == []


# --- check ----------------------------------------------------------------------------------

def test_check_healthy_state(state_dir):
    p = cli("state", "check", "--state-dir", state_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("ok:")


def test_check_names_an_outbox_row_whose_journal_row_is_gone(state_dir, capsys):
    db = sqlite3.connect(os.path.join(state_dir, "state.db"))
    oid, jid, body = db.execute("SELECT id, journal_id, body FROM outbox").fetchone()
    db.execute("DELETE FROM journal WHERE id = ?", (jid,))
    db.commit()
    db.close()
    rc, out, _ = run(capsys, "state", "check", "--state-dir", state_dir)
    assert rc == 1
    assert out.splitlines() == [f"error: outbox row {oid} (page {body}) refers to journal row "
                                f"{jid}, which does not exist"]


def test_check_names_an_applied_result_without_its_result_row(state_dir, capsys):
    db = sqlite3.connect(os.path.join(state_dir, "state.db"))
    db.execute("DELETE FROM results WHERE mrn = '7' AND time = ?", (T0,))
    db.commit()
    db.close()
    rc, out, _ = run(capsys, "state", "check", "--state-dir", state_dir)
    assert rc == 1
    assert len(out.splitlines()) == 1
    assert f"(result MRN 7 at {format_hl7_time(T0)}) is applied but its result row is missing" \
        in out


def test_check_warns_of_a_page_pending_too_long(state_dir, capsys):
    db = sqlite3.connect(os.path.join(state_dir, "state.db"))
    db.execute("UPDATE outbox SET created_at = ?, attempts = 4, last_error = 'timeout'",
               (time.time() - 3600,))
    db.commit()
    db.close()
    rc, out, _ = run(capsys, "state", "check", "--state-dir", state_dir)
    assert rc == 1
    assert out.startswith(f"warning: page 7,{format_hl7_time(T0 + DAY)} (outbox row 1) pending "
                          "for 60 min, 4 attempt(s), last error: timeout")
    rc, _, _ = run(capsys, "state", "check", "--state-dir", state_dir, "--pending-minutes", "90")
    assert rc == 0


def test_check_fails_on_a_corrupt_file(state_dir, capsys):
    path = os.path.join(state_dir, "state.db")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:     # wipe every page after the schema page
        f.seek(4096)
        f.write(b"\xff" * (size - 4096))
    rc, out, err = run(capsys, "state", "check", "--state-dir", state_dir)
    assert rc == 1 and (out + err).strip()


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
    Ingest(s, NhsDetector()).handle(result(7, T0 + 2 * DAY, 120.0), 0.0)
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

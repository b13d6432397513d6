"""`aki-alert replay`: retrieved messages through the service's own ingest path, idempotently,
into a SQLite or a PostgreSQL state (every `loc` test runs on both)."""

import json
import threading
import time

import pytest
from state_locations import location

from aki_alert.cli import main
from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital.datafiles import write_messages
from aki_alert.ingest import Ingest
from aki_alert.replay import Item, digest, in_time_order, read_items
from aki_alert.timeutil import DAY, HOUR, format_hl7_time, parse_hl7_time

T0 = parse_hl7_time("20240301080000")
NOW = T0 + 10 * DAY                     # the replay's "now" (--now)


def result(mrn, t, value, sent=None):
    ts = format_hl7_time(t)
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{format_hl7_time(sent or t)}||ORU^R01|||2.5"
            f"\rPID|1||{mrn}\rOBR|1||||||{ts}\rOBX|1|SN|CREATININE||{value}\r").encode()


def admit(mrn, t):
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{format_hl7_time(t)}||ADT^A01|||2.5\r"
            f"PID|1||{mrn}||ANN SMITH||19600101|F\r").encode()


def discharge(mrn, t):
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{format_hl7_time(t)}||ADT^A03|||2.5\r"
            f"PID|1||{mrn}\r").encode()


# The day's messages: patient 7 has an AKI 9 days before NOW (old), patient 8 one 2 hours
# before NOW (recent), patient 9 no AKI.
OLD_AKI = f"7,{format_hl7_time(T0 + DAY)}"
NEW_AKI = f"8,{format_hl7_time(NOW - 2 * HOUR)}"
MESSAGES = [
    admit(7, T0 - HOUR),
    result(7, T0, 100.0),
    result(7, T0 + DAY, 250.0),
    admit(8, NOW - 30 * HOUR),
    result(8, NOW - 26 * HOUR, 90.0),
    result(8, NOW - 2 * HOUR, 200.0),
    result(9, NOW - 3 * HOUR, 70.0),
    discharge(9, NOW - HOUR),
]


def write_lines(path, messages, junk=()):
    """The hospital's export: one message per line, segments separated by \\r inside."""
    lines = [m.rstrip(b"\r") for m in messages] + [j.encode() for j in junk]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


@pytest.fixture(params=["sqlite", "postgres"])
def loc(request, tmp_path):
    where = location(request, tmp_path)
    s = where.open()
    with s.transaction():
        s.set_meta(environment="ward-test", history_sha256="ab" * 32)
    s.close()
    return where


def state(loc):
    return loc.open()


def live(loc, messages):
    """What the live service stored before the replay."""
    s = state(loc)
    ing = Ingest(s, NhsDetector())
    for m in messages:
        ing.apply(m, 0.0)
    s.close()


def replay(capsys, path, loc, *extra):
    rc = main(["replay", path, *loc.argv, "--detector", "nhs",
               "--now", format_hl7_time(NOW), "--json", *extra])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip().startswith("{") else out), err


def outbox(loc):
    s = state(loc)
    try:
        return dict(s.query("SELECT body, status FROM outbox").fetchall())
    finally:
        s.close()


# --- reading files --------------------------------------------------------------------------

def test_one_message_per_line_gives_the_wire_bytes(tmp_path):
    items = read_items(write_lines(tmp_path / "day.txt", MESSAGES))
    assert [i.raw for i in items] == MESSAGES
    assert [i.where for i in items][:2] == ["line 1", "line 2"]


def test_literal_backslash_r_and_crlf_lines(tmp_path):
    text = b"\r\n".join(m.rstrip(b"\r").replace(b"\r", b"\\r") for m in MESSAGES[:3]) + b"\r\n"
    (tmp_path / "a.txt").write_bytes(text)
    assert [i.raw for i in read_items(tmp_path / "a.txt")] == MESSAGES[:3]


def test_segment_per_line_blocks_with_or_without_blank_lines(tmp_path):
    blocks = [m.rstrip(b"\r").replace(b"\r", b"\n") for m in MESSAGES[:4]]
    (tmp_path / "blank.txt").write_bytes(b"\n\n".join(blocks) + b"\n")
    (tmp_path / "dense.txt").write_bytes(b"\r\n".join(b.replace(b"\n", b"\r\n") for b in blocks))
    assert [i.raw for i in read_items(tmp_path / "blank.txt")] == MESSAGES[:4]
    assert [i.raw for i in read_items(tmp_path / "dense.txt")] == MESSAGES[:4]


def test_junk_lines_are_items_of_their_own(tmp_path):
    path = tmp_path / "j.txt"
    path.write_bytes(MESSAGES[0].rstrip(b"\r") + b"\nnot a message\n" + MESSAGES[1].rstrip(b"\r"))
    items = read_items(path)
    assert [i.raw for i in items] == [MESSAGES[0], b"not a message\r", MESSAGES[1]]
    assert items[1].where == "line 2"


def test_mllp_file_payloads_byte_for_byte(tmp_path):
    write_messages(tmp_path / "m.mllp", MESSAGES)
    assert [i.raw for i in read_items(tmp_path / "m.mllp")] == MESSAGES
    # junk between frames is skipped, as the live decoder does
    (tmp_path / "j.mllp").write_bytes(b"\x0b" + MESSAGES[0] + b"\x1c\rjunk"
                                      + b"\x0b" + MESSAGES[1] + b"\x1c\r")
    assert [i.raw for i in read_items(tmp_path / "j.mllp")] == MESSAGES[:2]


def test_time_order_is_stable_and_junk_keeps_its_neighbour():
    a, b, c = (result(1, T0 + k * HOUR, 90.0) for k in (2, 1, 1))
    junk = Item(b"junk\r", "line 2")
    items = [Item(a, "line 1"), junk, Item(b, "line 3"), Item(c + b"NTE|x\r", "line 4")]
    assert [i.where for i in in_time_order(items)] == ["line 3", "line 4", "line 1", "line 2"]


# --- replay ---------------------------------------------------------------------------------

def test_added_skipped_and_rejected_counts_are_exact(tmp_path, loc, capsys):
    live(loc, MESSAGES[:3])
    path = write_lines(tmp_path / "day.txt", MESSAGES, junk=["junk line", "MSH|^~\\&|X"])
    rc, r, _ = replay(capsys, path, loc)
    assert rc == 0
    assert r["messages"] == 10
    assert r["skipped"] == 3
    assert r["added"] == {"admission": 1, "result": 3, "discharge": 1}
    assert [x["where"] for x in r["rejected"]] == ["line 9", "line 10"]
    assert r["rejected"][0]["reason"] == "message does not start with an MSH segment"
    assert r["rejected"][1]["reason"].startswith("MSH has no MSH-12 version")
    assert r["missing"] == [] and r["validated"]
    s = state(loc)
    replayed_at = float(s.meta()["replayed_at"])        # what the running service watches
    s.close()
    assert time.time() - 60 < replayed_at <= time.time()
    # re-running adds nothing
    rc, r, _ = replay(capsys, path, loc)
    assert rc == 0 and r["added"] == {} and r["skipped"] == 10 and r["rejected"] == []
    assert r["decisions"] == []


def test_the_same_result_under_other_bytes_is_a_duplicate_result(tmp_path, loc, capsys):
    live(loc, [result(9, NOW - 3 * HOUR, 70.0)])
    resent = result(9, NOW - 3 * HOUR, 70.0, sent=NOW - HOUR)    # another MSH-7
    rc, r, _ = replay(capsys, write_lines(tmp_path / "d.txt", [resent]), loc)
    assert rc == 0 and r["skipped"] == 0 and r["added"] == {} and r["duplicate_results"] == 1


def test_old_akis_are_suppressed_and_recent_ones_queued(tmp_path, loc, capsys):
    rc, r, _ = replay(capsys, write_lines(tmp_path / "day.txt", MESSAGES), loc)
    assert rc == 0
    by_page = {d["page"]: d for d in r["decisions"]}
    assert set(by_page) == {OLD_AKI, NEW_AKI}
    assert by_page[OLD_AKI]["status"] == "suppressed" and by_page[OLD_AKI]["stage"] == 2
    assert by_page[OLD_AKI]["hours_before_now"] == 9 * 24
    assert by_page[NEW_AKI]["status"] == "pending"
    assert outbox(loc) == {OLD_AKI: "suppressed", NEW_AKI: "pending"}


def test_page_missed_queues_old_akis_too(tmp_path, loc, capsys):
    rc, r, _ = replay(capsys, write_lines(tmp_path / "day.txt", MESSAGES), loc,
                      "--page-missed")
    assert rc == 0
    assert outbox(loc) == {OLD_AKI: "pending", NEW_AKI: "pending"}
    assert {d["status"] for d in r["decisions"]} == {"pending"}


def test_cutoff_hours_moves_the_line(tmp_path, loc, capsys):
    rc, _, _ = replay(capsys, write_lines(tmp_path / "day.txt", MESSAGES), loc,
                      "--cutoff-hours", "1")
    assert rc == 0 and outbox(loc) == {OLD_AKI: "suppressed", NEW_AKI: "suppressed"}


def test_messages_are_applied_in_time_order(tmp_path, loc, capsys):
    # the file lists the AKI result before its baseline: in file order there is no AKI
    path = write_lines(tmp_path / "rev.txt", [MESSAGES[2], MESSAGES[1]])
    rc, r, _ = replay(capsys, path, loc, "--page-missed")
    assert rc == 0 and [d["page"] for d in r["decisions"]] == [OLD_AKI]


def test_text_report(tmp_path, loc, capsys):
    live(loc, MESSAGES[:3])
    path = write_lines(tmp_path / "day.txt", MESSAGES, junk=["junk line"])
    rc = main(["replay", path, *loc.argv, "--detector", "nhs",
               "--now", format_hl7_time(NOW)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "added             5 (1 admission, 1 discharge, 3 result)" in out
    assert "skipped           3 (already in the state)" in out
    assert "rejected          1 (dead letters)\n  line 9: message does not start" in out
    assert f"pending    {NEW_AKI}  stage 2" in out
    assert out.rstrip().endswith("validation: all 9 messages present")


def test_validation_fails_when_a_message_is_not_in_the_journal(tmp_path, loc, capsys):
    path = write_lines(tmp_path / "day.txt", MESSAGES)
    assert replay(capsys, path, loc)[0] == 0
    s = state(loc)
    with s.transaction():
        s.query("DELETE FROM journal WHERE digest = ?", digest(MESSAGES[4]))
    s.close()
    rc = main(["replay", path, *loc.argv, "--validate-only"])
    out = capsys.readouterr().out
    t = format_hl7_time(NOW - 26 * HOUR)
    assert rc == 1
    assert out.splitlines() == ["validation: 1 of 8 messages MISSING from the journal:",
                                f"  line 5: ORU^R01 result MRN 8 sampled {t} sent {t}"]
    s = state(loc)
    before = s.counts()
    s.close()
    assert main(["replay", path, *loc.argv, "--validate-only"]) == 1
    s = state(loc)
    assert s.counts() == before           # --validate-only writes nothing
    s.close()


def test_refuses_a_state_of_another_environment(tmp_path, loc, capsys, monkeypatch):
    path = write_lines(tmp_path / "day.txt", MESSAGES)
    rc, _, err = replay(capsys, path, loc, "--environment", "other-hospital")
    assert rc == 2 and "belongs to environment 'ward-test'" in err
    monkeypatch.setenv("AKI_ENVIRONMENT", "other-hospital")
    assert replay(capsys, path, loc)[0] == 2
    assert state(loc).counts()["messages"] == 0
    monkeypatch.setenv("AKI_ENVIRONMENT", "ward-test")
    assert replay(capsys, path, loc)[0] == 0


def test_refuses_a_missing_state(tmp_path, capsys):
    path = write_lines(tmp_path / "day.txt", MESSAGES)
    rc = main(["replay", path, "--state-dir", str(tmp_path / "nowhere")])
    assert rc == 2 and "no state at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_refuses_a_database_without_a_state(tmp_path, postgres_url, capsys):
    path = write_lines(tmp_path / "day.txt", MESSAGES)
    rc = main(["replay", path, "--state-url", postgres_url])
    assert rc == 2 and "no state in" in capsys.readouterr().err


def test_an_unreachable_database_is_one_line(tmp_path, capsys):
    path = write_lines(tmp_path / "day.txt", MESSAGES)
    rc = main(["replay", path, "--state-url", "postgresql://127.0.0.1:1/aki?connect_timeout=2"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("aki-alert replay: cannot open state database")
    assert err.count("\n") == 1


def test_a_state_of_the_previous_schema_is_migrated_first(tmp_path, loc, capsys):
    from aki_alert.store.admin import SCHEMA_VERSION

    s = state(loc)
    with s.transaction():
        s.query("DROP INDEX outbox_result_time")
        for undo in ("DROP TABLE merges", "DROP TABLE result_revisions",
                     "ALTER TABLE results DROP COLUMN status",
                     "ALTER TABLE results DROP COLUMN comparator"):
            s.query(undo)
        s._set_schema_version(1)
    s.close()
    rc, r, _ = replay(capsys, write_lines(tmp_path / "day.txt", MESSAGES), loc)
    assert rc == 0 and sum(r["added"].values()) == 8
    s = loc.open(readonly=True)
    assert s.schema_version() == SCHEMA_VERSION and "outbox_result_time" in s.tables()
    s.close()


# --- beside the running service ---------------------------------------------------------------

def test_replay_beside_the_services_open_batch(tmp_path, loc, capsys):
    """SQLite: the replay waits for the write lock; PostgreSQL: it goes on beside the batch."""
    service = state(loc)
    service.begin_batch()
    service.journal(b"s" * 16, "result", "5", "applied", None, b"live message")
    released = threading.Event()

    def commit_later():
        time.sleep(0.3)
        service.commit_batch()
        released.set()

    t = threading.Thread(target=commit_later)
    t.start()
    rc, r, _ = replay(capsys, write_lines(tmp_path / "day.txt", MESSAGES), loc)
    t.join()
    service.close()
    assert released.is_set() and rc == 0 and sum(r["added"].values()) == 8
    s = state(loc)
    assert s.counts()["messages"] == 9
    s.close()


def test_replay_interleaves_with_live_ingest(tmp_path, loc, capsys):
    live_msgs = [result(100 + k, NOW + k * 60, 80.0) for k in range(150)]
    day = [result(300 + k, T0 + k * 60, 80.0) for k in range(150)] + MESSAGES
    path = write_lines(tmp_path / "day.txt", day + live_msgs[:20])    # some overlap with live
    errors = []

    def service():
        s = state(loc)
        ing = Ingest(s, NhsDetector())
        try:
            for m in live_msgs:
                ing.apply(m, 0.0)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            s.close()

    t = threading.Thread(target=service)
    t.start()
    rc, r, _ = replay(capsys, path, loc)
    t.join()
    assert errors == [] and rc == 0 and r["missing"] == []
    assert sum(r["added"].values()) + r["skipped"] == len(day) + 20
    s = state(loc)
    c = s.counts()
    s.close()
    assert c["messages"] == len(day) + len(live_msgs)
    assert main(["state", "check", *loc.argv]) == 0


def test_describe_reads_a_message_with_the_feeds_profile():
    """What `replay` names as missing is read as the service reads it: with the profile, the
    hospital-number repetition (0003003 → 3003) rather than the NHS number first."""
    from pathlib import Path

    from aki_alert import hl7
    from aki_alert.replay import describe

    corpus = Path(__file__).resolve().parents[1] / "corpus"
    raw = (corpus / "leading-zeros-nhs-first.hl7").read_bytes().strip(b"\n")
    profile = hl7.load_profile(str(corpus / "profiles" / "rvj-local.toml"))
    assert "MRN 3003 sampled 20240309120000" in describe(raw, profile)
    assert "MRN 3003" not in describe(raw)


def test_replay_judges_with_the_model_the_population_check_chose(tmp_path, monkeypatch):
    """A replay into a state whose history showed another population judges with the
    shift-robust model, as the service does; a named model or MODEL_ON_SHIFT=none keep theirs."""
    import argparse

    from aki_alert import population
    from aki_alert.replay import _detector
    from aki_alert.store import open_store

    store = open_store(str(tmp_path), None, "process")
    try:
        args = argparse.Namespace(detector="model", model_path="")
        assert _detector(args, store).version == "v2"          # no record: the default
        shifted = population.CreatinineCounts().add([400.0] * 2000)
        with store.transaction():
            store.set_meta(**{population.META_KEY: shifted.to_json()})
        assert _detector(args, store).version == "v3-robust"
        monkeypatch.setenv("MODEL_ON_SHIFT", "none")
        assert _detector(args, store).version == "v2"
    finally:
        store.close()

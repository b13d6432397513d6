"""The front process: what it hands over survives any chunking of its pipe; it acknowledges a
frame only after logging it and only while fewer than AHEAD frames wait to be applied; it stops
on SIGTERM, and dies with the service; the service starts none while its message log waits."""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aki_alert import config, hl7
from aki_alert.detect.nhs import NhsDetector
from aki_alert.durable import Durable
from aki_alert.front import AHEAD, EVENT, Decoder, FrontProcess, Handoff, ServiceGone, encode
from aki_alert.hospital import messages
from aki_alert.ingest import Ingest
from aki_alert.mllp import FrameDecoder, frame
from aki_alert.service import Service
from aki_alert.store.msglog import FRAME_ERROR, MESSAGE, SegmentWriter, segment_records
from aki_alert.store.sqlite import SqliteStore
from aki_alert.timeutil import DAY, parse_hl7_time
from loopback_hospital import TIMEOUT, Hospital

T0 = parse_hl7_time("20240301080000")

records = st.lists(st.tuples(
    st.sampled_from([MESSAGE, FRAME_ERROR, EVENT]),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.floats(allow_nan=False), st.floats(allow_nan=False), st.binary(max_size=300)),
    max_size=12)


@given(records, st.data())
def test_records_come_through_whatever_pieces_the_pipe_cuts(recs, data):
    stream = b"".join(encode(*r) for r in recs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder, got = Decoder(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[a:b])
    assert got == recs and decoder.pending == 0


def test_handoff_waits_for_a_credit_once_ahead_frames_are_unapplied():
    out_r, out_w = os.pipe()
    credit_r, credit_w = os.pipe()
    h = Handoff(out_w, credit_r, ahead=2)
    try:
        h.send(MESSAGE, (0, 0), 1.0, 0.1, b"one")
        h.event("connected")                   # events need no credit
        h.wait_for_room()                      # one unapplied: room for another
        h.send(MESSAGE, (0, 1), 2.0, 0.1, b"two")
        os.write(credit_w, b"\1")              # the service applied one
        h.wait_for_room()
        assert h.unapplied == 1
        h.send(MESSAGE, (0, 2), 3.0, 0.1, b"three")
        os.close(credit_w)                     # the service is gone
        with pytest.raises(ServiceGone):
            h.wait_for_room()
        assert [r[4] for r in Decoder().feed(os.read(out_r, 4096))] == [
            b"one", b"connected", b"two", b"three"]
    finally:
        for fd in (out_r, out_w, credit_r):
            os.close(fd)


@pytest.fixture
def hospital():
    h = Hospital()
    yield h
    h.close()


def started_front(hospital, tmp_path) -> FrontProcess:
    front = FrontProcess(f"127.0.0.1:{hospital.port}", str(tmp_path), False, "text", "WARNING")
    front.start()
    return front


def test_the_front_logs_acknowledges_and_hands_over_no_more_than_ahead(hospital, tmp_path):
    front = started_front(hospital, tmp_path)
    try:
        conn = hospital.accept()
        msgs = [messages.result(T0 + i * 60, str(100 + i), 80.0) for i in range(AHEAD + 1)]
        for m in msgs[:AHEAD]:
            assert Hospital.exchange(conn, m).startswith(b"MSH|")
        # AHEAD frames handed over and none applied: the next one is logged, not acknowledged.
        conn.settimeout(0.5)
        with pytest.raises(TimeoutError):
            Hospital.exchange(conn, msgs[AHEAD])
        handed = front.records()
        got = [next(handed) for _ in range(AHEAD + 1)]
        assert [r[0] for r in got] == [EVENT] + [MESSAGE] * AHEAD
        assert [r[4] for r in got[1:]] == msgs[:AHEAD]
        assert [r[1] for r in got[1:]] == [(0, i) for i in range(AHEAD)]
        front.credit()                           # one applied: room for the held frame
        conn.settimeout(TIMEOUT)
        assert conn.recv(4096).startswith(b"\x0bMSH|")
        assert next(handed)[4] == msgs[AHEAD]
        # Every acknowledged frame was in the log before its ACK.
        assert [r[1] for _, r in segment_records(str(tmp_path))[0]] == msgs
        front.stop()                             # SIGTERM: it closes the connection, exits
        assert [(r[0], r[4]) for r in handed] == [(EVENT, b"disconnected")]
        assert front.wait() == 0
    finally:
        front.stop()


def test_the_front_dies_with_the_service(hospital, tmp_path):
    """A killed service's front must not keep the hospital's connection."""
    script = textwrap.dedent(f"""
        import sys, time
        from aki_alert.front import FrontProcess
        front = FrontProcess("127.0.0.1:{hospital.port}", {str(tmp_path)!r}, False, "text",
                             "WARNING")
        front.start()
        print(front.proc.pid, flush=True)
        time.sleep(60)
    """)
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        pid = int(service.stdout.readline())
        conn = hospital.accept()               # the front connected
        service.kill()
        service.wait(TIMEOUT)
        conn.settimeout(TIMEOUT)
        assert conn.recv(4096) == b""          # its connection closed: the front is gone
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the front outlived its service")
    finally:
        service.kill()
        service.stdout.close()


def waiting_for_credit(pid: int) -> bool:
    """The process is blocked in read(0, …): its credit pipe, its stdin (Linux x86-64's
    syscall numbers; other machines skip the test)."""
    with open(f"/proc/{pid}/syscall") as f:
        return f.read().startswith("0 0x0 ")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="read(2) is syscall 0 on x86-64")
def test_a_front_waiting_for_credit_stops_when_the_service_does(hospital, tmp_path):
    """The service stops while its state cannot take a frame: it gives no more credit, and
    reaping the front must not wait for one."""
    front = started_front(hospital, tmp_path)
    try:
        conn = hospital.accept()
        for i in range(AHEAD):
            Hospital.exchange(conn, messages.result(T0 + i * 60, str(100 + i), 80.0))
        conn.sendall(frame(messages.result(T0 + DAY, "7", 300.0)))   # held: no credit
        deadline = time.monotonic() + TIMEOUT
        while not waiting_for_credit(front.proc.pid):
            assert time.monotonic() < deadline, "the front never waited for credit"
            time.sleep(0.01)
        front.stop()
        started = time.monotonic()
        assert front.wait() == 0
        assert time.monotonic() - started < 2.0
    finally:
        front.stop()


# --- the service's side ------------------------------------------------------------------------

def _fail_commit():
    raise sqlite3.OperationalError("database or disk is full")


def test_no_front_starts_until_the_log_a_crash_left_is_applied(hospital, tmp_path):
    """A start whose recovery failed (the state could not be written) must apply the message
    log before it starts a front: the recovery would otherwise take the new front's segments
    for leftovers, and drop one while the front appends to it."""
    history = tmp_path / "history.csv"
    history.write_text("mrn,creatinine_date_0,creatinine_result_0\n")
    cfg = config.load(argparse.Namespace(), {
        "MLLP_ADDRESS": f"127.0.0.1:{hospital.port}", "PAGER_ADDRESS": "127.0.0.1:9",
        "STATE_DIR": str(tmp_path), "HISTORY_PATH": str(history), "DETECTOR": "nhs"})
    store = SqliteStore(str(tmp_path / "state.db"))
    left = SegmentWriter(str(tmp_path))          # a crash left an acknowledged frame
    left.append(MESSAGE, messages.result(T0, "7", 100.0))
    left.close()
    durable = Durable(store, Ingest(store, NhsDetector()), str(tmp_path))
    store.commit_batch = _fail_commit            # the state cannot be written at start
    with pytest.raises(sqlite3.OperationalError):
        durable.recover()
    service = Service(cfg, store, durable)
    applier = threading.Thread(target=service.follow_front, daemon=True)
    applier.start()
    try:
        hospital.server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            hospital.accept()                    # no front while the log waits
        del store.commit_batch                   # space again: the log is applied, then a front
        hospital.server.settimeout(TIMEOUT)
        conn = hospital.accept()
        assert store.db.execute("SELECT count(*) FROM journal").fetchone()[0] == 1
        new = messages.result(T0 + 60, "8", 80.0)
        assert Hospital.exchange(conn, new).startswith(b"MSH|")
        # The leftover was applied and dropped; the front's own segment holds its frame.
        assert [r for _, r in segment_records(str(tmp_path))[0]] == [(MESSAGE, new)]
    finally:
        service.stop()
        applier.join(TIMEOUT)
    assert not applier.is_alive()
    durable.flush()
    assert store.db.execute("SELECT count(*) FROM journal").fetchone()[0] == 2
    store.close()
    durable.close()


# --- the NACK policy --------------------------------------------------------------------------

def test_the_default_front_argv_carries_no_nack_policy(tmp_path):
    front = FrontProcess("127.0.0.1:9", str(tmp_path), False, "text", "INFO")
    assert "--nack-policy" not in front.argv and "--feed-profile" not in front.argv
    front = FrontProcess("127.0.0.1:9", str(tmp_path), False, "text", "INFO", nack_policy="hl7",
                         feed_profile="/p.toml")
    assert front.argv[-4:] == ["--nack-policy", "hl7", "--feed-profile", "/p.toml"]


def test_an_hl7_policy_front_answers_ae_ar_with_its_profile_and_says_so(hospital, tmp_path):
    """The front judges a message with the service's feed profile (here one that knows a local
    code `CREA`): a message that will be a dead letter is answered AE, an oversized frame AR,
    and the service learns the code from an `ack:` event before the frame's record; every
    frame is logged and handed over all the same."""
    profile = tmp_path / "feed.toml"
    profile.write_text('[[creatinine]]\ncode = "CREA"\nunit = "umol/L"\n')
    front = FrontProcess(f"127.0.0.1:{hospital.port}", str(tmp_path), False, "text", "WARNING",
                         nack_policy="hl7", feed_profile=str(profile))
    front.start()
    try:
        conn = hospital.accept()
        good = messages.result(T0, "7", 80.0).replace(b"CREATININE", b"CREA")
        bad = messages.result(T0 + 60, "7", 80.0).replace(b"80.0", b"high")
        handed = front.records()
        assert next(handed)[4] == b"connected"
        reply = Hospital.exchange(conn, good)
        assert reply.split(b"\r")[1] == b"MSA|AA"
        assert next(handed)[4] == good
        front.credit()
        reply = Hospital.exchange(conn, bad)
        assert reply.split(b"\r")[1] == b"MSA|AE"
        assert reply.split(b"\r")[2].startswith(b"ERR|||102^Data type error^HL70357|E|")
        assert [(r[0], r[4]) for r in (next(handed), next(handed))] == [
            (EVENT, b"ack:AE"), (MESSAGE, bad)]
        front.credit()
        conn.sendall(b"\x0b" + b"x" * (3 << 20) + b"\x1c\x0d")   # over the 1 MiB cap
        decoder, replies = FrameDecoder(), []
        while not replies:
            replies = decoder.feed(conn.recv(4096))
        assert replies[0].split(b"\r")[1] == b"MSA|AR"
        assert [r[0] for r in (next(handed), next(handed))] == [EVENT, FRAME_ERROR]
    finally:
        front.stop()
        front.wait()


def test_durable_accept_answers_by_the_nack_policy(tmp_path):
    """With a PostgreSQL state the reader thread acknowledges through Durable.accept itself."""
    store = SqliteStore(str(tmp_path / "state.db"))
    durable = Durable(store, Ingest(store, NhsDetector()), str(tmp_path), commit_each=True,
                      nack=True)
    bad = messages.result(T0, "7", 80.0).replace(b"80.0", b"high")
    code, reply = durable.accept(bad, 0.0)
    assert code == "AE" and reply.split(b"\r")[1] == b"MSA|AE"
    code, reply = durable.accept(messages.result(T0, "7", 80.0), 0.0)
    assert code == "AA" and reply.split(b"\r")[1] == b"MSA|AA"
    # Still a dead letter in the journal: nothing silent.
    assert store.db.execute("SELECT status FROM journal ORDER BY id").fetchall() == [
        ("dead",), ("applied",)]
    durable.close()
    store.close()


def counted_parses(monkeypatch) -> list[bytes]:
    """The messages `hl7.parse` parses from now on, under whichever module's name for it."""
    parsed, original = [], hl7.parse

    def counting(raw, *args):
        parsed.append(raw)
        return original(raw, *args)
    for name, module in list(sys.modules.items()):
        if name.startswith("aki_alert") and getattr(module, "parse", None) is original:
            monkeypatch.setattr(module, "parse", counting)
    return parsed


@pytest.mark.parametrize("commit_each", [True, False], ids=["commit-each", "batch"])
def test_durable_parses_each_message_once_for_its_verdict_and_its_application(
        tmp_path, monkeypatch, commit_each):
    """Under the `hl7` NACK policy, the parse that decides the ACK is the one applied."""
    store = SqliteStore(str(tmp_path / "state.db"))
    durable = Durable(store, Ingest(store, NhsDetector()), str(tmp_path),
                      commit_each=commit_each, nack=True)
    good = messages.result(T0, "7", 80.0)
    bad = good.replace(b"80.0", b"high")
    parses = counted_parses(monkeypatch)
    codes = []
    for m in (good, bad):
        codes.append(durable.accept(m, 0.0)[0])
        durable.settle()
    durable.flush()
    assert codes == ["AA", "AE"]
    assert parses == [good, bad]
    assert store.db.execute("SELECT status FROM journal ORDER BY id").fetchall() == [
        ("applied",), ("dead",)]
    durable.close()
    store.close()


def test_nack_policy_and_patient_log_settings_are_checked():
    base = {"MLLP_ADDRESS": "h:1", "PAGER_ADDRESS": "h:2"}
    cfg = config.load(argparse.Namespace(), base)
    assert (cfg.nack_policy, cfg.log_patient_ids, cfg.feed_profile_path) == ("accept", "plain", "")
    assert config.load(argparse.Namespace(), {**base, "NACK_POLICY": "hl7"}).nack_policy == "hl7"
    with pytest.raises(config.ConfigError, match="NACK_POLICY"):
        config.load(argparse.Namespace(), {**base, "NACK_POLICY": "ae"})
    with pytest.raises(config.ConfigError, match="LOG_PATIENT_KEY"):
        config.load(argparse.Namespace(), {**base, "LOG_PATIENT_IDS": "hashed"})
    cfg = config.load(argparse.Namespace(), {**base, "LOG_PATIENT_IDS": "hashed",
                                             "LOG_PATIENT_KEY": "k" * 32})
    assert cfg.log_patient_ids == "hashed"

"""The simulator's MLLP side against contract §2, through real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest
from sim_testkit import (ACK_AA, ACK_AE, ACK_AR, DEADLINE, STREAM, Client, hospital)

from aki_alert.hospital.simulator import MllpFaults
from aki_alert.mllp import frame

pytestmark = pytest.mark.timeout(20)


def test_sends_each_message_exactly_and_waits_for_its_ack():
    with hospital() as h:
        c = Client(h.hospital.mllp_port)
        first = c.recv()
        assert first == STREAM[0]
        assert first.endswith(b"\r") and first.startswith(b"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|")
        assert c.silent_for(DEADLINE / 2)          # stop-and-wait: nothing before the ACK
        c.send(ACK_AA)
        assert c.recv() == STREAM[1]
        c.close()


def test_whole_stream_in_fast_mode_then_done():
    with hospital() as h:
        c = Client(h.hospital.mllp_port)
        for expected in STREAM:
            assert c.recv() == expected
            c.send(ACK_AA)
        assert h.wait_done(2.0)
        assert h.hospital.acked == len(STREAM) and h.hospital.sent == len(STREAM)
        c.close()


def test_no_ack_within_deadline_drops_the_connection():
    with hospital() as h:
        c = Client(h.hospital.mllp_port)
        assert c.recv() == STREAM[0]
        start = time.monotonic()
        assert c.closed_within(DEADLINE * 5)
        assert DEADLINE * 0.8 <= time.monotonic() - start
        assert h.hospital.drops["timeout"] == 1
        c.close()


@pytest.mark.parametrize("bad", [
    b"MSH|^~\\&|||||20240129093837||ACK|||2.5\nMSA|AA\n",          # \n separators
    b"MSH|^~\\&|||||20240129093837||ACK|||2.5\r\rMSA|AA\r",         # blank segment
    b"MSA|AA\rMSH|^~\\&|||||20240129093837||ACK|||2.5\r",           # MSH not first
    b"MSH|^~\\&|||||20240129093837||ACK|||2.5\rMS|AA\r",            # 2-char segment name
    b"MSH|^~\\&|||||20240129093837||ACK|||2.5\rMSA|XX\r",           # not AA/AE/AR
    b"MSH|^~\\&|||||20240129093837||ACK|||2.5\r",                   # no MSA
])
def test_bad_ack_drops_the_connection(bad):
    with hospital() as h:
        c = Client(h.hospital.mllp_port)
        c.recv()
        c.send(frame(bad))
        assert c.closed_within(DEADLINE / 2 + 0.5)
        assert h.hospital.drops["bad_ack"] == 1 and h.hospital.acked == 0
        c.close()


def test_junk_around_an_ack_drops_the_connection():
    with hospital() as h:
        c = Client(h.hospital.mllp_port)
        c.recv()
        c.send(b"\n" + ACK_AA)
        assert c.closed_within(1.0)
        assert h.hospital.acked == 0


def test_two_acks_in_one_read_drop_the_connection():
    with hospital() as h:
        c = Client(h.hospital.mllp_port)
        c.recv()
        c.send(ACK_AA + ACK_AA)
        assert c.closed_within(1.0)
        assert h.hospital.drops["two_acks"] == 1 and h.hospital.acked == 0


def test_ack_split_across_writes_is_accepted():
    with hospital() as h:
        c = Client(h.hospital.mllp_port)
        c.recv()
        for i in range(0, len(ACK_AA), 7):
            c.send(ACK_AA[i:i + 7])
            time.sleep(0.01)
        assert c.recv() == STREAM[1]
        c.close()


@pytest.mark.parametrize("nak", [ACK_AE, ACK_AR])
def test_ae_and_ar_resend_the_same_message(nak):
    with hospital() as h:
        c = Client(h.hospital.mllp_port)
        assert c.recv() == STREAM[0]
        c.send(nak)
        assert c.recv() == STREAM[0]
        c.send(ACK_AA)
        assert c.recv() == STREAM[1]
        assert h.hospital.nacked == 1
        c.close()


def test_a_new_connection_takes_over_and_replays_from_the_start():
    with hospital() as h:
        a = Client(h.hospital.mllp_port)
        for expected in STREAM[:3]:
            assert a.recv() == expected
            a.send(ACK_AA)
        assert a.recv() == STREAM[3]
        b = Client(h.hospital.mllp_port)
        assert a.closed_within(1.0)                 # the old connection is dropped
        assert b.recv() == STREAM[0]                # replay from the start
        assert h.hospital.drops["takeover"] == 1
        b.close()


def test_resume_after_last_ack_survives_a_hospital_restart(tmp_path):
    state = tmp_path / "hospital.json"
    with hospital(resume_state=state) as h:
        c = Client(h.hospital.mllp_port)
        for expected in STREAM[:3]:
            assert c.recv() == expected
            c.send(ACK_AA)
        assert c.recv() == STREAM[3]                # sent, never acknowledged
        c.close()
        c = Client(h.hospital.mllp_port)
        assert c.recv() == STREAM[3]                # resume, not replay
        c.close()
    assert json.loads(state.read_text())["next"] == 3
    with hospital(resume_state=state) as h:         # a restarted hospital
        c = Client(h.hospital.mllp_port)
        assert c.recv() == STREAM[3]
        c.close()


def test_resume_state_of_another_stream_is_refused(tmp_path):
    state = tmp_path / "hospital.json"
    state.write_text(json.dumps({"stream": "0" * 64, "next": 2}))
    h = hospital(resume_state=state)
    with pytest.raises(ValueError, match="another message stream"):
        h.start()
    h.stop()


def test_real_time_mode_spaces_messages_by_their_timestamps():
    with hospital(speed=360_000.0) as h:           # an hour of hospital time in 10 ms
        c = Client(h.hospital.mllp_port)
        stamps = []
        for _ in STREAM:
            c.recv()
            stamps.append(time.monotonic())
            c.send(ACK_AA)
        # 20240401100000 → 20240402110000 is 25 h = 90,000 s → 0.25 s at 360,000×.
        assert stamps[-1] - stamps[2] >= 0.24
        assert stamps[1] - stamps[0] < 0.1          # admissions before the first result go at once
        c.close()


def test_fault_disconnect_every_n_messages():
    with hospital(mllp_faults=MllpFaults(disconnect_every=2)) as h:
        c = Client(h.hospital.mllp_port)
        for _ in range(2):
            c.recv()
            c.send(ACK_AA)
        assert c.closed_within(1.0)
        c = Client(h.hospital.mllp_port)            # replays the first two, then two new ones
        for expected in STREAM[:4]:
            assert c.recv() == expected
            c.send(ACK_AA)
        assert c.closed_within(1.0)
        assert h.hospital.drops["injected"] == 2


def test_fault_split_frames_across_writes():
    with hospital(mllp_faults=MllpFaults(split_writes=True)) as h:
        c = Client(h.hospital.mllp_port)
        pieces = []
        for expected in STREAM[:3]:
            chunks = c.recv_raw_frame()
            assert b"".join(chunks) == frame(expected)
            pieces.append(len(chunks))
            c.send(ACK_AA)
        assert max(pieces) >= 2
        c.close()


def test_fault_corrupt_message_then_resent_intact_after_ae():
    with hospital(mllp_faults=MllpFaults(corrupt_every=3)) as h:
        c = Client(h.hospital.mllp_port)
        for expected in STREAM[:2]:
            assert c.recv() == expected
            c.send(ACK_AA)
        bad = c.recv()
        assert bad != STREAM[2] and STREAM[2].startswith(bad)
        c.send(ACK_AE)
        assert c.recv() == STREAM[2]
        c.close()


def test_ports_are_reported_and_listen_on_loopback():
    with hospital() as h:
        assert h.hospital.mllp_port > 0 and h.hospital.pager_port > 0
        assert h.hospital._server.sockets[0].getsockname()[0] == "127.0.0.1"

"""The MLLP client's reader thread against a real loopback server: ACK only what `on_frame`
accepted, `after_ack` after every accepted frame, no ACK and a reconnect after our own failure,
and a stop from another thread that ends `run()` at once."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from aki_alert import connection
from aki_alert.connection import MllpClient
from loopback_hospital import TIMEOUT, Hospital


@pytest.fixture
def hospital():
    h = Hospital()
    yield h
    h.close()


def run_client(client: MllpClient) -> threading.Thread:
    t = threading.Thread(target=client.run, daemon=True)
    t.start()
    return t


def test_each_frame_is_acked_then_settled_in_order(hospital):
    events: list[str] = []

    def on_frame(item, received):
        events.append(f"accept {item.decode()}")
        return b"ACK " + item

    client = MllpClient("127.0.0.1", hospital.port, on_frame,
                        after_ack=lambda: events.append("settle"))
    reader = run_client(client)
    conn = hospital.accept()
    assert hospital.exchange(conn, b"one") == b"ACK one"
    assert hospital.exchange(conn, b"two") == b"ACK two"
    client.stop()
    reader.join(TIMEOUT)
    assert not reader.is_alive()
    assert events == ["accept one", "settle", "accept two", "settle"]
    conn.close()


def test_a_frame_whose_ack_cannot_be_written_is_still_settled(hospital):
    """Accepted means durable: the message is applied even if its ACK never left (the
    hospital resends it, and the journal makes the resend a no-op)."""
    events: list[str] = []

    def on_frame(item, received):
        events.append(f"accept {item.decode()}")
        client.stop()                      # the link goes down between accept and the ACK
        return b"ACK " + item

    client = MllpClient("127.0.0.1", hospital.port, on_frame,
                        after_ack=lambda: events.append("settle"))
    reader = run_client(client)
    conn = hospital.accept()
    assert hospital.exchange(conn, b"one") is None         # no ACK arrived
    reader.join(TIMEOUT)
    assert not reader.is_alive()
    assert events == ["accept one", "settle"]
    conn.close()


def test_our_failure_closes_without_an_ack_and_reconnects(hospital, monkeypatch):
    monkeypatch.setattr(connection.client, "RECONNECT_FIRST", 0.01)
    calls = []

    def on_frame(item, received):
        calls.append(item)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return b"ACK " + item

    client = MllpClient("127.0.0.1", hospital.port, on_frame)
    reader = run_client(client)
    first = hospital.accept()
    assert hospital.exchange(first, b"msg") is None        # closed, not acknowledged
    second = hospital.accept()                             # the client came back by itself
    assert hospital.exchange(second, b"msg") == b"ACK msg"  # the resend goes through
    client.stop()
    reader.join(TIMEOUT)
    assert not reader.is_alive()
    first.close()
    second.close()


def test_stop_from_another_thread_ends_a_blocked_read_at_once(hospital):
    client = MllpClient("127.0.0.1", hospital.port, lambda item, received: b"ACK")
    reader = run_client(client)
    conn = hospital.accept()
    time.sleep(0.05)                                       # the reader now waits in recv()
    started = time.monotonic()
    client.stop()
    reader.join(TIMEOUT)
    assert not reader.is_alive() and time.monotonic() - started < 1.0
    assert conn.recv(10) == b""                            # our side closed the link
    conn.close()


def test_a_refused_connection_is_retried_until_stopped(monkeypatch):
    monkeypatch.setattr(connection.client, "RECONNECT_FIRST", 0.01)
    with socket.socket() as s:                             # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    attempts = []
    client = MllpClient("127.0.0.1", port, lambda item, received: b"",
                        may_connect=lambda: attempts.append(1) or True)
    reader = run_client(client)
    deadline = time.monotonic() + TIMEOUT
    while len(attempts) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.stop()
    reader.join(TIMEOUT)
    assert len(attempts) >= 3 and not reader.is_alive()


def test_a_replica_that_may_not_lead_never_connects(hospital):
    client = MllpClient("127.0.0.1", hospital.port, lambda item, received: b"",
                        may_connect=lambda: False)
    reader = run_client(client)
    reader.join(TIMEOUT)
    assert not reader.is_alive()
    hospital.server.settimeout(0.2)
    with pytest.raises(TimeoutError):
        hospital.server.accept()

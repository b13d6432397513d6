"""The MLLP listener in-process (connection/listener.py) and TLS on both modes
(connection/tls.py), on loopback: several connections interleaved, each frame handled before
its ACK, the cap and its eviction, timeouts, the frame cap, backpressure, a failure of ours;
TLS with a CA made in the test (trustme), mutual TLS accepted and refused, plaintext to a TLS
port refused, a bad or expired certificate a start-up error naming its setting."""

from __future__ import annotations

import argparse
import datetime
import socket
import ssl
import threading
import time

import pytest
import trustme

from aki_alert import config
from aki_alert.connection import (LISTENER_EVICTED, LISTENER_TIMED_OUT, TLS_HANDSHAKE_FAILED,
                                  MllpClient, MllpListener, bind)
from aki_alert.connection.tls import TlsSettings, server_context
from aki_alert.mllp import FrameDecoder, FrameError, frame

TIMEOUT = 5.0


class Served:
    """A listener in a thread, recording what it handled and the events it reported."""

    def __init__(self, on_frame=None, tls: ssl.SSLContext | None = None, **kwargs) -> None:
        self.frames: list[bytes | FrameError] = []
        self.events: list[str] = []
        self.settled = 0
        self.server = bind("127.0.0.1", 0)
        self.port = self.server.getsockname()[1]
        self.listener = MllpListener(self.server, on_frame or self.ack, self.after_ack, tls=tls,
                                     events=self.events.append, **kwargs)
        self.thread = threading.Thread(target=self.listener.run, daemon=True)
        self.thread.start()

    def ack(self, item, received) -> bytes:
        self.frames.append(item)
        name = item.reason.encode() if isinstance(item, FrameError) else item
        return b"MSH|^~\\&|ACK\rMSA|AA|" + name + b"\r"

    def after_ack(self) -> None:
        self.settled += 1

    def close(self) -> None:
        self.listener.stop()
        self.thread.join(TIMEOUT)
        self.server.close()
        assert not self.thread.is_alive()


@pytest.fixture
def served():
    made: list[Served] = []

    def make(*args, **kwargs) -> Served:
        s = Served(*args, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def connect(port: int, tls: ssl.SSLContext | None = None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return tls.wrap_socket(s, server_hostname="localhost") if tls else s


def exchange(sock: socket.socket, message: bytes) -> bytes | None:
    """Send one frame; the ACK's payload, or None when the listener closed instead."""
    sock.sendall(frame(message))
    decoder = FrameDecoder()
    while True:
        try:
            data = sock.recv(4096)
        except (ConnectionResetError, ssl.SSLError):
            return None
        if not data:
            return None
        if frames := decoder.feed(data):
            return frames[0]


def closed_by_peer(sock: socket.socket, within: float = TIMEOUT) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def wait_for(predicate, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_two_connections_interleaved_each_frame_handled_before_its_ack(served):
    s = served()
    adt, oru = connect(s.port), connect(s.port)
    for k in range(5):
        assert exchange(adt, b"ADT%d" % k).endswith(b"ADT%d\r" % k)
        assert exchange(oru, b"ORU%d" % k).endswith(b"ORU%d\r" % k)
    assert s.frames == [m for k in range(5) for m in (b"ADT%d" % k, b"ORU%d" % k)]
    assert wait_for(lambda: s.settled == 10)


def test_pipelined_frames_are_acked_one_by_one_in_order(served):
    s = served()
    c = connect(s.port)
    c.sendall(b"".join(frame(b"M%d" % k) for k in range(50)))
    decoder, acks = FrameDecoder(), []
    while len(acks) < 50:
        acks += decoder.feed(c.recv(65536))
    assert [a.rsplit(b"|", 1)[1] for a in acks] == [b"M%d\r" % k for k in range(50)]


def test_a_frame_over_the_cap_is_handed_on_as_a_frame_error_and_answered(served):
    # The decoder caps what it must buffer across reads (a frame whole within one 64 KiB
    # read is taken as it is: mllp.py).
    s = served(max_frame=100)
    c = connect(s.port)
    assert b"exceeds the 100-byte cap" in exchange(c, b"x" * 300_000)
    assert exchange(c, b"next").endswith(b"next\r")
    assert isinstance(s.frames[0], FrameError) and s.frames[1] == b"next"


def test_past_the_cap_the_longest_idle_silent_connection_is_evicted_not_the_engines(served):
    s = served(max_connections=3)
    engine = connect(s.port)
    assert exchange(engine, b"one")
    silent = [connect(s.port), connect(s.port)]
    time.sleep(0.05)
    newcomer = connect(s.port)                  # a fourth: the oldest silent one goes
    assert closed_by_peer(silent[0])
    assert not closed_by_peer(silent[1], 0.2)
    assert exchange(engine, b"two") and exchange(newcomer, b"three")
    assert LISTENER_EVICTED in s.events
    assert len(s.listener.conns) == 3


def test_no_first_message_in_time_and_an_idle_connection_are_closed(served):
    s = served(idle_timeout=0.6, first_frame_timeout=0.3)
    loris = connect(s.port)
    loris.sendall(b"\x0bMSH|")                 # half a frame: does not count
    busy = connect(s.port)
    assert exchange(busy, b"one")
    started = time.monotonic()
    assert closed_by_peer(loris)
    assert time.monotonic() - started < 0.5
    assert closed_by_peer(busy)                 # no message for 0.6 s
    assert s.events.count(LISTENER_TIMED_OUT) == 2


def test_a_failure_of_ours_closes_that_connection_without_an_ack_and_others_go_on(served):
    def on_frame(item, received):
        if item == b"poison-disk":
            raise OSError("disk full")
        return b"MSH|ACK\rMSA|AA|" + item + b"\r"

    s = served(on_frame)
    bad, good = connect(s.port), connect(s.port)
    assert exchange(bad, b"poison-disk") is None
    assert exchange(good, b"fine").endswith(b"fine\r")


def test_backpressure_a_blocked_handler_stops_reading_every_connection(served):
    gate, entered = threading.Event(), threading.Event()
    handled: list[bytes] = []

    def on_frame(item, received):
        handled.append(item)
        entered.set()
        gate.wait(TIMEOUT)
        return b"MSH|ACK\rMSA|AA\r"

    s = served(on_frame)
    a, b = connect(s.port), connect(s.port)
    a.sendall(frame(b"a1"))
    assert entered.wait(TIMEOUT)
    b.sendall(frame(b"b1"))
    time.sleep(0.2)
    assert handled == [b"a1"]                   # nothing more read meanwhile
    b.settimeout(0.1)
    with pytest.raises(TimeoutError):
        b.recv(100)                             # and no ACK for b1
    gate.set()
    assert wait_for(lambda: handled == [b"a1", b"b1"])


def test_100_connects_and_disconnects_leave_nothing_behind(served):
    s = served()
    for k in range(100):
        c = connect(s.port)
        if k % 2:
            c.sendall(b"\x0bhalf")
        c.close()
    c = connect(s.port)
    assert exchange(c, b"after")
    assert wait_for(lambda: len(s.listener.conns) == 1)


def test_a_replica_that_may_not_lead_accepts_nothing(served):
    s = served(may_accept=lambda: False)
    c = connect(s.port)
    assert closed_by_peer(c)
    s.thread.join(TIMEOUT)
    assert not s.thread.is_alive()


# --- TLS ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA, the listener's certificate (localhost) and an engine's client certificate,
    and another CA's client certificate, as PEM files."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    files = {}
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    for name, issuer, ident in (("server", ca, "localhost"), ("engine", ca, "engine"),
                                ("stranger", other, "engine")):
        leaf = issuer.issue_cert(ident, "127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(str(d / f"{name}.crt"))
        leaf.private_key_pem.write_to_path(str(d / f"{name}.key"))
    expired = ca.issue_cert("localhost", not_before=datetime.datetime(2020, 1, 1),
                            not_after=datetime.datetime(2021, 1, 1))
    expired.cert_chain_pems[0].write_to_path(str(d / "expired.crt"))
    expired.private_key_pem.write_to_path(str(d / "expired.key"))
    files = {p.stem + p.suffix: str(p) for p in d.iterdir()}
    return files


def client_ctx(pki, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["ca.pem"])
    if cert:
        ctx.load_cert_chain(pki[f"{cert}.crt"], pki[f"{cert}.key"])
    return ctx


def test_tls_handshake_with_a_test_ca_then_messages(served, pki):
    s = served(tls=server_context(TlsSettings(pki["server.crt"], pki["server.key"])))
    c = connect(s.port, client_ctx(pki))
    assert exchange(c, b"over tls").endswith(b"over tls\r")
    assert TLS_HANDSHAKE_FAILED not in s.events


def test_mutual_tls_accepts_the_cas_client_and_refuses_others(served, pki):
    settings = TlsSettings(pki["server.crt"], pki["server.key"], pki["ca.pem"],
                           verify_client=True)
    s = served(tls=server_context(settings))
    engine = connect(s.port, client_ctx(pki, "engine"))
    assert exchange(engine, b"mtls").endswith(b"mtls\r")
    for cert in (None, "stranger"):
        try:
            c = connect(s.port, client_ctx(pki, cert))
            refused = exchange(c, b"let me in") is None     # TLS 1.3: refused after
        except (ssl.SSLError, ConnectionResetError):
            refused = True
        assert refused, cert
    assert wait_for(lambda: s.events.count(TLS_HANDSHAKE_FAILED) == 2)
    assert exchange(engine, b"still here").endswith(b"still here\r")
    assert s.frames == [b"mtls", b"still here"]


def test_plaintext_to_a_tls_port_is_refused_cleanly_and_others_go_on(served, pki):
    s = served(tls=server_context(TlsSettings(pki["server.crt"], pki["server.key"])))
    good = connect(s.port, client_ctx(pki))
    plain = connect(s.port)
    plain.sendall(frame(b"MSH|plaintext"))
    assert closed_by_peer(plain)
    assert wait_for(lambda: TLS_HANDSHAKE_FAILED in s.events)
    assert exchange(good, b"fine").endswith(b"fine\r")
    assert s.frames == [b"fine"]


def test_a_handshake_never_finished_is_closed_and_counted(served, pki):
    s = served(tls=server_context(TlsSettings(pki["server.crt"], pki["server.key"])),
               handshake_timeout=0.3)
    silent = connect(s.port)
    assert closed_by_peer(silent)
    assert TLS_HANDSHAKE_FAILED in s.events


def test_the_client_verifies_the_hospitals_certificate_and_name(served, pki):
    s = served(tls=server_context(TlsSettings(pki["server.crt"], pki["server.key"])))
    acks: list[bytes] = []

    def on_frame(item, received):
        acks.append(item)
        return b"MSH|ACK\rMSA|AA\r"

    # The client's side of this test: the listener above stands in for a TLS hospital that
    # *receives*; what matters here is the handshake, so the client connects and is then told
    # nothing. Its events say whether the handshake passed.
    for name, expect in (("localhost", "connected"), ("wrong.example", TLS_HANDSHAKE_FAILED)):
        events: list[str] = []
        client = MllpClient("127.0.0.1", s.port, on_frame, events=events.append,
                            tls=client_ctx(pki), server_name=name)
        t = threading.Thread(target=client.run, daemon=True)
        t.start()
        assert wait_for(lambda ev=events: ev), name
        client.stop()
        t.join(TIMEOUT)
        assert events[0] == expect, (name, events)


# --- settings -------------------------------------------------------------------------------

BASE = {"PAGER_ADDRESS": "127.0.0.1:8441"}


def load(**env: str) -> config.Config:
    return config.load(argparse.Namespace(), {**BASE, **env})


def test_listen_alone_is_enough_and_one_of_the_two_is_required():
    cfg = load(MLLP_LISTEN="0.0.0.0:2575")
    assert cfg.mllp_host is None and cfg.mllp_listen == ("0.0.0.0", 2575)
    assert cfg.max_connections == 8 and cfg.idle_timeout == 300 and cfg.tls is None
    assert cfg.environment == "0.0.0.0:2575"
    both = load(MLLP_ADDRESS="h:1", MLLP_LISTEN="0.0.0.0:2575", MLLP_MAX_CONNECTIONS="2",
                MLLP_IDLE_TIMEOUT="0")
    assert both.mllp_port == 1 and both.max_connections == 2 and both.idle_timeout == 0
    with pytest.raises(config.ConfigError, match="MLLP_ADDRESS is not set.*MLLP_LISTEN"):
        load()
    for bad in ({"MLLP_LISTEN": "2575"}, {"MLLP_LISTEN": "0.0.0.0:1", "MLLP_MAX_CONNECTIONS": "0"},
                {"MLLP_LISTEN": "0.0.0.0:1", "MLLP_IDLE_TIMEOUT": "soon"}):
        with pytest.raises(config.ConfigError, match=next(iter(bad)) if len(bad) == 1
                           else list(bad)[1]):
            load(**bad)


def test_tls_settings_are_checked_at_start_naming_the_setting(pki, tmp_path):
    ok = load(MLLP_LISTEN="0.0.0.0:2575", MLLP_TLS="on", TLS_CERT=pki["server.crt"],
              TLS_KEY=pki["server.key"], TLS_CA=pki["ca.pem"], TLS_VERIFY_CLIENT="true")
    assert ok.tls == TlsSettings(pki["server.crt"], pki["server.key"], pki["ca.pem"], None, True)
    listen = {"MLLP_LISTEN": "0.0.0.0:2575", "MLLP_TLS": "on"}
    unreadable = tmp_path / "secret.key"
    unreadable.write_text("")
    unreadable.chmod(0)
    cases = [
        ({}, "TLS_CERT is not set"),
        ({"TLS_CERT": pki["expired.crt"], "TLS_KEY": pki["expired.key"]},
         "TLS_CERT=.*expired on"),
        ({"TLS_CERT": pki["ca.pem"] + ".missing", "TLS_KEY": pki["server.key"]},
         "TLS_CERT=.*cannot be read"),
        ({"TLS_CERT": pki["server.key"], "TLS_KEY": pki["server.key"]},
         "TLS_CERT=.*not a PEM certificate"),
        ({"TLS_CERT": pki["server.crt"], "TLS_KEY": pki["engine.key"]},
         "TLS_KEY=.*not the private key"),
        ({"TLS_CERT": pki["server.crt"], "TLS_KEY": pki["server.key"],
          "TLS_VERIFY_CLIENT": "true"}, "TLS_CA is not set"),
        ({"TLS_CERT": pki["server.crt"], "TLS_KEY": pki["server.key"],
          "TLS_CA": pki["server.key"]}, "TLS_CA=.*not a PEM CA bundle"),
        ({"TLS_CERT": pki["server.crt"], "TLS_KEY": pki["server.key"], "MLLP_TLS": "yes"},
         "MLLP_TLS='yes'"),
    ]
    import os
    if os.geteuid() != 0:                       # root reads any file
        cases.append(({"TLS_CERT": pki["server.crt"], "TLS_KEY": str(unreadable)},
                      "TLS_KEY=.*cannot be read"))
    for env, message in cases:
        with pytest.raises(config.ConfigError, match=message):
            load(**{**listen, **env})
    # The client: an expired certificate of its own is refused too; none is fine.
    assert load(MLLP_ADDRESS="h:1", MLLP_TLS="on", TLS_CA=pki["ca.pem"]).tls is not None
    with pytest.raises(config.ConfigError, match="expired"):
        load(MLLP_ADDRESS="h:1", MLLP_TLS="on", TLS_CERT=pki["expired.crt"],
             TLS_KEY=pki["expired.key"])

"""The listener (MLLP_LISTEN) end to end, against the real `aki-alert serve`: an engine double
sends admissions and results on two connections of its own, interleaved; `kill -9` of the
service mid-stream; floods of connections that connect and go, or stay and send nothing or half
a frame (slow loris). The guarantees are the client mode's: every acknowledged message in the
journal, the pages an uninterrupted run makes, none twice."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

from integration.double import Pager
from integration.engine import Engine, split_adt_oru
from integration.service_process import log_text, start, wait_for

from .harness import assert_journal_complete, free_port, outcome, query, score_pages
from .test_kill9 import front_pid

pytestmark = pytest.mark.timeout(180)

KILLS = 5


def serve_listening(harness, port: int, pager: Pager, state, history, **env: str):
    proc = start(0, pager.port, state, history, MLLP_ADDRESS="",
                 MLLP_LISTEN=f"127.0.0.1:{port}", **env)
    harness.procs.append(proc)
    return proc


def pages_done(state) -> bool:
    return query(state, "SELECT count(*) FROM outbox WHERE status = 'pending'") == 0


def check_outcome(stream, pager: Pager, state, kills: int) -> str:
    assert_journal_complete(state, stream.messages)
    assert query(state, "SELECT count(*) FROM journal WHERE status = 'dead'") == 0
    live = score_pages(stream.rows, pager.bodies)
    assert outcome(live) == outcome(stream.expected), live.summary()
    distinct = set(pager.bodies)
    assert distinct == set(stream.expected_pages)
    duplicates = len(pager.bodies) - len(distinct)
    # A page the pager took just before a kill -9, not yet recorded, is sent again (at most
    # one per crash; the client mode's test allows the same).
    assert duplicates <= kills, f"{duplicates} duplicate deliveries for {kills} crashes"
    return f"{live.summary()}; {len(pager.bodies)} deliveries, {duplicates} duplicates"


def test_two_interfaces_interleaved_kill_9_mid_stream_scores_as_a_clean_run(
        tmp_path, stream, harness):
    """ADT on one connection, ORU on another, as a trust's engine sends them; the service is
    killed (-9) at 5 points and started again; the engine reconnects and resends the message
    it had in hand. Nothing acknowledged is lost, and the pages are the clean run's."""
    feeds = split_adt_oru(stream.messages)
    assert feeds["ADT"] and feeds["ORU"]
    pager = Pager()
    harness.cleanups.append(pager.close)
    port = free_port()
    state = harness.state(tmp_path / "state")
    proc = serve_listening(harness, port, pager, state, stream.history)
    engine = Engine(port, feeds).start()
    harness.cleanups.append(engine.close)
    rng = random.Random(17)
    n = engine.total
    points = sorted(rng.sample(range(50, n - 50), KILLS))
    for point in points:
        assert wait_for(lambda p=point, q=proc: engine.acked >= p or q.poll() is not None, 60,
                        interval=0.001), log_text(proc)[-3000:]
        assert proc.poll() is None, log_text(proc)[-3000:]
        harness.kill9(proc)
        proc = serve_listening(harness, port, pager, state, stream.history)
    assert engine.wait_done(90), f"stalled at {engine.acked}/{n}:\n" + log_text(proc)[-3000:]
    assert wait_for(lambda: pages_done(state), 60, interval=0.05), log_text(proc)[-3000:]
    time.sleep(0.3)
    code, _, log = harness.terminate(proc)
    assert code == 0, log[-3000:]
    both = {name: i.connections for name, i in engine.interfaces.items()}
    # The engine reconnected after the kills (an interface whose share was all sent before the
    # first kill needed no other connection).
    assert sum(both.values()) > len(both), both
    print("\n" + check_outcome(stream, pager, state, KILLS) + f"; connections {both}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Flood(threading.Thread):
    """Bad connections to `port`, until `count` were opened: every fourth connects and goes at
    once (connect/disconnect), the others stay open, half sending nothing (half-open), half a
    frame's first bytes and then a byte every `drip` seconds (slow loris). At most `hold` stay
    open on our side (the oldest are dropped), so the test's own descriptors stay bounded."""

    def __init__(self, port: int, count: int, hold: int = 600, drip: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.hold, self.drip = port, count, hold, drip
        self.opened = self.refused = 0
        self.stop = threading.Event()
        self.all_opened = threading.Event()
        self.seconds = 0.0                 # how long the opening took
        self.socks: list[socket.socket] = []

    def run(self) -> None:
        started = last_drip = time.monotonic()
        for k in range(self.count):
            if self.stop.is_set():
                break
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            except OSError:
                self.refused += 1
                continue
            self.opened += 1
            if k % 4 == 0:
                s.close()
                continue
            if k % 2:
                try:
                    s.sendall(b"\x0bMSH|^~\\&|")
                except OSError:
                    pass
            self.socks.append(s)
            if len(self.socks) > self.hold:
                self.socks.pop(0).close()
            if time.monotonic() - last_drip > self.drip:
                last_drip = time.monotonic()
                for s in self.socks[1::2]:
                    try:
                        s.send(b"x")
                    except OSError:
                        pass
        self.seconds = time.monotonic() - started
        self.all_opened.set()
        while not self.stop.wait(self.drip):
            for s in self.socks[1::2]:
                try:
                    s.send(b"x")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        for s in self.socks:
            s.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_1000_half_open_or_slow_loris_and_100_connects_do_not_stop_the_feed_or_grow_memory(
        tmp_path, stream, harness):
    """While the engine sends the stream on its two connections, 100 connections come and go
    and then 1,000 more flood the listener (MLLP_MAX_CONNECTIONS=8: each past the cap evicts
    the longest-idle connection that never sent a message). The feed goes on to the end, and
    the front's memory after the floods is within a few MiB of before."""
    feeds = split_adt_oru(stream.messages)
    pager = Pager()
    harness.cleanups.append(pager.close)
    port = free_port()
    state = harness.state(tmp_path / "state")
    proc = serve_listening(harness, port, pager, state, stream.history,
                           MLLP_MAX_CONNECTIONS="8", LOG_LEVEL="INFO")
    # A first part of the stream, so that the front's memory is warm before it is measured.
    head = {name: msgs[: len(msgs) // 4] for name, msgs in feeds.items()}
    engine = Engine(port, head).start()
    assert engine.wait_done(60), log_text(proc)[-3000:]
    engine.close()
    front = front_pid(proc)
    assert front is not None
    before = rss_kib(front)
    # 100 connects and disconnects, some with a frame's first bytes.
    for k in range(100):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            if k % 2:
                s.sendall(b"\x0bMSH|^~\\&|half")
    # Paced (a feed of several seconds), so that the flood below meets it; it resends the
    # head: duplicates, ignored.
    engine = Engine(port, feeds, pause=0.002).start()
    harness.cleanups.append(engine.close)
    flood = Flood(port, 1000)
    started = time.monotonic()
    flood.start()
    harness.cleanups.append(flood.close)
    assert engine.wait_done(120), (f"stalled at {engine.acked}/{engine.total} with "
                                   f"{flood.opened} flood connections:\n"
                                   + log_text(proc)[-3000:])
    feed_seconds = time.monotonic() - started
    assert flood.all_opened.wait(120)
    opened = flood.opened
    flood.close()
    assert opened + flood.refused == 1000 and opened >= 900, (opened, flood.refused)
    assert wait_for(lambda: pages_done(state), 60, interval=0.05), log_text(proc)[-3000:]
    time.sleep(0.5)
    after = rss_kib(front)
    assert front_pid(proc) == front, "the front was restarted"
    code, _, log = harness.terminate(proc)
    assert code == 0, log[-3000:]
    growth = (after - before) / 1024
    assert growth < 8, f"front RSS {before / 1024:.1f} → {after / 1024:.1f} MiB"
    assert "MLLP_MAX_CONNECTIONS" in log            # evictions were logged (throttled)
    assert log.count("closing the one from") < 100
    print(f"\n{check_outcome(stream, pager, state, 0)}; flood of {opened} connections in "
          f"{flood.seconds:.1f}s alongside a feed of {feed_seconds:.1f}s; "
          f"front RSS {before / 1024:.1f} → {after / 1024:.1f} MiB")

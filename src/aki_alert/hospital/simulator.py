"""The hospital's MLLP endpoint and pager, behaving as contract §2–§5 says.

The hospital is the TCP server; the service connects to it. It sends one message and waits for
its acknowledgement (stop-and-wait) with a deadline (10 s by default): no valid ACK in time drops
the connection. The ACK check is strict (`ackcheck.py`), and two replies in one read, or bytes
nobody asked for, drop the connection too. `AA` advances; `AE`/`AR` resend the same message.
One connection is served at a time: a new one takes over from the old. On every connection the
stream replays from the start (fast test mode, the default) or resumes after the last ACKed
message (live mode; the position is kept in a state file so the hospital survives a restart).
Messages go as fast as they are acknowledged, or at their timestamps (`speed` × real time).

`Hospital` is the asyncio object; `HospitalThread` runs one in a thread for synchronous callers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..mllp import FrameDecoder, frame
from ..timeutil import parse_hl7_time
from .ackcheck import check_ack
from .datafiles import AkiRow, format_page
from .metrics import metrics_text
from .pager_server import PagerFaults, PagerServer
from .scoring import Scorer


@dataclass(frozen=True, slots=True)
class MllpFaults:
    disconnect_every: int = 0    # close the connection after every N newly acknowledged messages
    split_writes: bool = False   # write every frame in three pieces, a millisecond apart
    corrupt_every: int = 0       # the first send of every Nth message is truncated


class Dropped(Exception):
    """The connection was dropped while waiting for an ACK."""


class _Connection(asyncio.Protocol):
    """One client connection: hands every read to the ACK check while an ACK is awaited."""

    def __init__(self, hospital: Hospital) -> None:
        self.hospital = hospital
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(max_frame=1 << 16)
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.hospital._attach(self)

    def data_received(self, data: bytes) -> None:
        w = self.waiter
        if w is None or w.done():
            return self.drop("unsolicited")
        frames = self.decoder.feed(data)
        if self.decoder.junk_bytes:
            return self.drop("bad_ack")
        if not frames:
            return      # an ACK split across reads: wait for the rest
        if len(frames) > 1 or self.decoder.pending:
            return self.drop("two_acks")
        if not isinstance(frames[0], bytes):
            return self.drop("bad_ack")     # an oversized frame
        try:
            code = check_ack(frames[0])
        except ValueError:
            return self.drop("bad_ack")
        w.set_result(code)

    def timeout(self) -> None:
        self.drop("timeout")

    def drop(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.hospital.drops[reason] += 1
            self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(Dropped(reason))

    def connection_lost(self, exc) -> None:
        self.drop("closed")
        self.hospital._detach(self)


class Hospital:
    """The simulated hospital: MLLP endpoint, pager and live scorer, on 127.0.0.1 by default.

    Ports 0 pick free ports; `start()` returns the bound (mllp_port, pager_port).
    """

    def __init__(self, messages: list[bytes], aki_rows: list[AkiRow], *,
                 host: str = "127.0.0.1", mllp_port: int = 0, pager_port: int = 0,
                 deadline: float = 10.0, resume_state: Path | None = None,
                 speed: float | None = None, mllp_faults: MllpFaults = MllpFaults(),
                 pager_faults: PagerFaults | None = None, pages_out: Path | None = None) -> None:
        self.host, self.mllp_port, self.pager_port = host, mllp_port, pager_port
        self.deadline = deadline
        self.resume_state = resume_state
        self.speed = speed
        self.faults = mllp_faults
        self.scorer = Scorer(aki_rows)
        self.frames = [frame(m) for m in messages]
        self.results: list[tuple[str, int] | None] = [_result_key(m) for m in messages]
        self.n_results = sum(r is not None for r in self.results)
        self.times = [_message_time(m) for m in messages]
        # Real time counts from the first result; earlier stamps (admissions of patients
        # already in hospital) go at once.
        self._ref_time = next(
            (t for t, r in zip(self.times, self.results, strict=True) if r is not None),
            self.times[0] if self.times else 0)
        self.digest = hashlib.sha256(b"".join(self.frames)).hexdigest()
        self.pager = PagerServer(self._on_page, lambda: metrics_text(self),
                                 pager_faults or PagerFaults())
        self.pages_out = pages_out
        self._pages_file = None
        # Counters (read by /metrics and the summary).
        self.sent = 0                 # frames written, resends included
        self.acked = 0                # AA received
        self.nacked = 0               # AE/AR received (each resends)
        self.connections = 0
        self.drops: Counter[str] = Counter()
        self.next = 0                 # resume position: first message not yet acknowledged
        self.first_send: float | None = None
        self.done_at: float | None = None
        self._conn: _Connection | None = None
        self._task: asyncio.Task | None = None
        self._server: asyncio.Server | None = None
        self._done = asyncio.Event()
        self._t0 = 0.0

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> tuple[int, int]:
        if self.resume_state is not None:
            self.next = self._load_state()
        if self.pages_out is not None:
            # Appending keeps a resumed hospital's earlier pages for the offline scorer.
            self._pages_file = open(self.pages_out, "a" if self.resume_state else "w")
        self.pager_port = await self.pager.start(self.host, self.pager_port)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host,
                                                self.mllp_port)
        self.mllp_port = self._server.sockets[0].getsockname()[1]
        self._t0 = time.monotonic()
        if self.next >= len(self.frames):
            self._finish()
        return self.mllp_port, self.pager_port

    async def wait_done(self, timeout: float | None = None) -> bool:
        """True once every message has been acknowledged (False on timeout)."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._conn is not None:
            self._conn.drop("stopped")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await self.pager.stop()
        if self._pages_file is not None:
            self._pages_file.close()
            self._pages_file = None

    def score(self):
        return self.scorer.score(only_sent=True)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def rate(self) -> float | None:
        """Messages acknowledged per second, first send to end of stream."""
        if self.first_send is None or self.done_at is None or self.done_at <= self.first_send:
            return None
        return self.acked / (self.done_at - self.first_send)

    # --- connections --------------------------------------------------------------------------

    def _attach(self, conn: _Connection) -> None:
        self.connections += 1
        if self._conn is not None:
            self._conn.drop("takeover")
        if self._task is not None:
            self._task.cancel()
        self._conn = conn
        self._task = asyncio.get_running_loop().create_task(self._feed(conn))

    def _detach(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    async def _feed(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        frames, results, scorer = self.frames, self.results, self.scorer
        faults, deadline, perf = self.faults, self.deadline, time.perf_counter
        i = self.next if self.resume_state is not None else 0
        new_here = 0      # messages acknowledged for the first time on this connection
        corrupted: set[int] = set()
        try:
            while i < len(frames):
                if self.speed:
                    await self._due(i)
                data = frames[i]
                if faults.corrupt_every and (i + 1) % faults.corrupt_every == 0 \
                        and i not in corrupted:
                    corrupted.add(i)
                    data = data[: len(data) * 3 // 5] + data[-2:]
                fut = conn.waiter = loop.create_future()
                timer = loop.call_later(deadline, conn.timeout)
                try:
                    if faults.split_writes:
                        third = len(data) // 3
                        for piece in (data[:third], data[third:2 * third]):
                            conn.transport.write(piece)
                            await asyncio.sleep(0.001)
                        conn.transport.write(data[2 * third:])
                    else:
                        conn.transport.write(data)
                    now = perf()
                    if self.first_send is None:
                        self.first_send = now
                    self.sent += 1
                    key = results[i]
                    if key is not None:
                        scorer.result_sent(key[0], key[1], now)
                    code = await fut
                finally:
                    timer.cancel()
                if code != "AA":
                    self.nacked += 1
                    continue
                i += 1
                self.acked += 1
                if i <= self.next:
                    continue        # a replayed message
                self.next = i
                new_here += 1
                if self.resume_state is not None:
                    self._save_state()
                if faults.disconnect_every and new_here % faults.disconnect_every == 0 \
                        and i < len(frames):
                    conn.drop("injected")
                    return
            self._finish()
        except Dropped:
            pass

    async def _due(self, i: int) -> None:
        """Real-time mode: wait until message i's time (`speed` × real time since start)."""
        wait = self._t0 + max(0.0, (self.times[i] - self._ref_time) / self.speed) \
            - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def _finish(self) -> None:
        if not self._done.is_set():
            self.done_at = time.perf_counter()
            self._done.set()

    # --- pages --------------------------------------------------------------------------------

    def _on_page(self, mrn: str, t: int | None, at: float) -> None:
        key = self.scorer.page(mrn, t, at)
        if self._pages_file is not None:
            self._pages_file.write(format_page(*key) + "\n")
            self._pages_file.flush()

    # --- resume state -------------------------------------------------------------------------

    def _load_state(self) -> int:
        try:
            state = json.loads(self.resume_state.read_text())
        except FileNotFoundError:
            return 0
        if state.get("stream") != self.digest:
            raise ValueError(f"{self.resume_state} belongs to another message stream; "
                             "delete it to start this one from the beginning")
        return int(state["next"])

    def _save_state(self) -> None:
        tmp = self.resume_state.with_name(self.resume_state.name + ".tmp")
        tmp.write_text(json.dumps({"stream": self.digest, "next": self.next}))
        os.replace(tmp, self.resume_state)


def _segments(message: bytes) -> list[list[bytes]]:
    return [s.split(b"|") for s in message.split(b"\r") if s]


def _message_time(message: bytes) -> int:
    msh = message.split(b"\r", 1)[0].split(b"|")
    return parse_hl7_time(msh[6].decode()) if len(msh) > 6 and msh[6] else 0


def _result_key(message: bytes) -> tuple[str, int] | None:
    """(MRN, OBR-7 time) of an ORU^R01 result, else None."""
    if b"|ORU^R01|" not in message.split(b"\r", 1)[0]:
        return None
    mrn = t = None
    for seg in _segments(message):
        if seg[0] == b"PID" and len(seg) > 3:
            mrn = seg[3].split(b"^")[0].decode()
        elif seg[0] == b"OBR" and len(seg) > 7:
            try:
                t = parse_hl7_time(seg[7].decode("utf-8", "replace"))
            except ValueError:
                return None       # not a result the hospital can score: sent, never expected
    return (mrn, t) if mrn and t is not None else None


class HospitalThread:
    """A `Hospital` on its own event loop thread, for synchronous code and tests:
    `start()` → (mllp_port, pager_port), `wait_done(timeout)`, `score()`, `stop()`."""

    def __init__(self, *args, **kwargs) -> None:
        self._args, self._kwargs = args, kwargs
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hospital",
                                        daemon=True)
        self.hospital: Hospital | None = None

    def _call(self, coro, timeout: float | None = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> tuple[int, int]:
        self._thread.start()

        async def make() -> tuple[int, int]:
            self.hospital = Hospital(*self._args, **self._kwargs)
            return await self.hospital.start()
        return self._call(make())

    def wait_done(self, timeout: float) -> bool:
        return self._call(self.hospital.wait_done(timeout), timeout + 5.0)

    def score(self):
        async def get():
            return self.hospital.score()
        return self._call(get())

    def stop(self) -> None:
        if self._thread.is_alive():
            if self.hospital is not None:
                self._call(self.hospital.stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> HospitalThread:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

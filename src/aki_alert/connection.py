"""The MLLP client connection: asyncio moves bytes, everything else is sans-I/O.

`MllpClient.run()` connects to the hospital, feeds received bytes to the frame decoder, hands
each frame to `on_frame` (which applies it durably and returns the ACK), writes the ACK, and
reconnects forever with capped, jittered exponential backoff. A failure of our own (state not
writable) closes the connection without acknowledging: the hospital resends that message.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from . import metrics
from .mllp import FrameDecoder, FrameError, frame

log = logging.getLogger(__name__)

RECONNECT_FIRST = 0.05
RECONNECT_CAP = 2.0


def reconnect_delay(failures: int) -> float:
    """Delay before reconnect number `failures` (1-based), jittered to 50–100%."""
    return min(RECONNECT_CAP, RECONNECT_FIRST * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


# on_frame(payload, received_perf_counter) -> ACK bytes (without framing)
FrameHandler = Callable[[bytes | FrameError, float], bytes]


class _Protocol(asyncio.Protocol):
    def __init__(self, on_frame: FrameHandler, max_frame: int) -> None:
        self.on_frame = on_frame
        self.decoder = FrameDecoder(max_frame)
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.messages = 0
        self.paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        received = time.perf_counter()
        for item in self.decoder.feed(data):
            if self.paused:
                return
            try:
                reply = self.on_frame(item, received)
            except Exception as e:  # noqa: BLE001 - our failure: do not ACK, drop the link
                metrics.STORAGE_FAILURES.inc()
                log.error("cannot store message, not acknowledging it (%s); dropping the "
                          "connection so the hospital resends it", e)
                self.transport.abort()
                return
            self.transport.write(frame(reply))
            self.messages += 1

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


class MllpClient:
    def __init__(self, host: str, port: int, on_frame: FrameHandler,
                 max_frame: int = 1 << 20, may_connect: Callable[[], bool] = lambda: True) -> None:
        """`may_connect`: checked before every (re)connection; False stops the client (a
        replica that lost its lease must not take the feed back from the new leader)."""
        self.host, self.port = host, port
        self.on_frame = on_frame
        self.may_connect = may_connect
        self.max_frame = max_frame
        self._stopping = asyncio.Event()
        self._protocol: _Protocol | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stopping.is_set():
            if not self.may_connect():
                log.error("not connecting to the hospital: this replica does not lead")
                break
            try:
                _, proto = await loop.create_connection(
                    lambda: _Protocol(self.on_frame, self.max_frame), self.host, self.port)
            except OSError as e:
                failures += 1
                metrics.RECONNECTS.labels(outcome="failed").inc()
                delay = reconnect_delay(failures)
                log.warning("cannot connect to hospital at %s: %s (retry %d in %.2fs)",
                            self.address, e.strerror or e, failures, delay)
                await self._sleep(delay)
                continue
            metrics.RECONNECTS.labels(outcome="connected").inc()
            metrics.CONNECTED.set(1)
            log.info("connected to hospital at %s", self.address)
            self._protocol = proto
            stop = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({proto.closed, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            metrics.CONNECTED.set(0)
            self._protocol = None
            if not proto.closed.done():          # we are stopping: close our side
                proto.transport.close()
                await proto.closed
            exc = proto.closed.result()
            log.info("disconnected from hospital at %s after %d message(s)%s", self.address,
                     proto.messages, f": {exc}" if exc else "")
            # A connection that carried traffic resets the backoff; one that failed at once
            # (e.g. our storage failing on the first message) keeps backing off.
            failures = 0 if proto.messages else failures + 1
            if failures and not self._stopping.is_set():
                await self._sleep(reconnect_delay(failures))

    async def _sleep(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass

    def stop(self) -> None:
        """Stop reading at once: no further frame is handled; the link closes."""
        if self._protocol is not None:
            self._protocol.paused = True
        self._stopping.set()

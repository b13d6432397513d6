"""The MLLP client connection: a blocking socket in a thread of its own (optionally TLS).

`MllpClient.run()` connects to the hospital, feeds received bytes to the frame decoder, hands
each frame to `on_frame` (which makes it durable and returns the ACK), writes the ACK, then
calls `after_ack` (which applies the message while the hospital reads the ACK and sends the
next one). It reconnects forever with capped, jittered exponential backoff. A failure of our
own (the message log not writable) closes the connection without acknowledging: the hospital
resends that message.

Why not asyncio: the hospital is one peer, stop-and-wait; there is nothing to multiplex, and
an event loop's callback machinery cost more per message than everything else the service
does for it (measured in docs/performance.md). `after_ack` also sends the message's page, if
any; the pager's retries keep their asyncio loop in the main thread.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable

from ..mllp import DEFAULT_MAX_FRAME, FrameDecoder, FrameError, frame

log = logging.getLogger(__name__)

RECONNECT_FIRST = 0.05
RECONNECT_CAP = 2.0
# A blocking connect cannot be interrupted: this bounds how long a stop waits for one to a
# silent address (a lost SYN is retransmitted after 1 s, so one loss still connects).
CONNECT_TIMEOUT = 3.0
RECV_BYTES = 1 << 16


def reconnect_delay(failures: int) -> float:
    """Delay before reconnect number `failures` (1-based), jittered to 50–100%."""
    return min(RECONNECT_CAP, RECONNECT_FIRST * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


# on_frame(payload, received_perf_counter) -> ACK bytes (without framing)
FrameHandler = Callable[[bytes | FrameError, float], bytes]

# What happens to the connection, as `MllpClient` reports it to its `events` callback (the
# service counts them in its metrics: `metrics.connection_event`; the front hands them over).
CONNECTED, CONNECT_FAILED, DISCONNECTED, NOT_ACKNOWLEDGED = (
    "connected", "connect-failed", "disconnected", "not-acknowledged")
# A TLS handshake that failed (either mode: the listener reports it too).
TLS_HANDSHAKE_FAILED = "tls-handshake-failed"


class MllpClient:
    def __init__(self, host: str, port: int, on_frame: FrameHandler,
                 after_ack: Callable[[], None] = lambda: None,
                 max_frame: int = DEFAULT_MAX_FRAME,
                 may_connect: Callable[[], bool] = lambda: True,
                 events: Callable[[str], None] = lambda event: None,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None) -> None:
        """`may_connect`: checked before every (re)connection; False stops the client (a
        replica that lost its lease must not take the feed back from the new leader).
        `events`: told each connection event (CONNECTED, …). `tls`: connect over TLS with
        this context (connection/tls.py), checking the certificate against `server_name`
        (default: `host`)."""
        self.host, self.port = host, port
        self.on_frame = on_frame
        self.after_ack = after_ack
        self.may_connect = may_connect
        self.events = events
        self.max_frame = max_frame
        self.tls = tls
        self.server_name = server_name or host
        self._stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._sock_lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def run(self) -> None:
        """Serve the hospital until stop(); blocking (run it in a thread)."""
        failures = 0
        while not self._stopping.is_set():
            if not self.may_connect():
                log.error("not connecting to the hospital: this replica does not lead")
                break
            try:
                sock = socket.create_connection((self.host, self.port), CONNECT_TIMEOUT)
            except OSError as e:
                failures += 1
                self.events(CONNECT_FAILED)
                delay = reconnect_delay(failures)
                log.warning("cannot connect to hospital at %s: %s (retry %d in %.2fs)",
                            self.address, e.strerror or e, failures, delay)
                self._stopping.wait(delay)
                continue
            if self.tls is not None:
                try:
                    sock = self._handshake(sock)
                except (ssl.SSLError, ssl.CertificateError, OSError) as e:
                    sock.close()
                    failures += 1
                    self.events(TLS_HANDSHAKE_FAILED)
                    delay = reconnect_delay(failures)
                    log.warning("TLS handshake with hospital at %s failed: %s (retry %d in "
                                "%.2fs)", self.address, getattr(e, "reason", None) or e,
                                failures, delay)
                    self._stopping.wait(delay)
                    continue
            self.events(CONNECTED)
            log.info("connected to hospital at %s", self.address)
            messages, reason = self._serve(sock)
            self.events(DISCONNECTED)
            log.info("disconnected from hospital at %s after %d message(s)%s", self.address,
                     messages, f": {reason}" if reason else "")
            # A connection that carried traffic resets the backoff; one that failed at once
            # (e.g. our storage failing on the first message) keeps backing off.
            failures = 0 if messages else failures + 1
            if failures:
                self._stopping.wait(reconnect_delay(failures))

    def _handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        """TLS over the connected socket (within CONNECT_TIMEOUT): the hospital's certificate
        verified, and its name."""
        sock.settimeout(CONNECT_TIMEOUT)
        return self.tls.wrap_socket(sock, server_hostname=self.server_name)

    def _serve(self, sock: socket.socket) -> tuple[int, str | None]:
        """Acknowledge frames until the connection ends; returns (messages, why it ended)."""
        with self._sock_lock:
            if self._stopping.is_set():
                sock.close()
                return 0, None
            self._sock = sock
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = FrameDecoder(self.max_frame)
        messages = 0
        try:
            while True:
                data = sock.recv(RECV_BYTES)
                if not data:
                    return messages, None
                received = time.perf_counter()
                for item in decoder.feed(data):
                    if self._stopping.is_set():
                        return messages, None
                    try:
                        reply = self.on_frame(item, received)
                    except Exception as e:  # noqa: BLE001 - ours: do not ACK, drop the link
                        self.events(NOT_ACKNOWLEDGED)
                        log.error("cannot store message, not acknowledging it (%s); dropping "
                                  "the connection so the hospital resends it", e)
                        return messages, "not acknowledged"
                    try:
                        sock.sendall(frame(reply))
                    finally:
                        self.after_ack()
                    messages += 1
        except OSError as e:
            return messages, str(e.strerror or e) if not self._stopping.is_set() else None
        finally:
            with self._sock_lock:
                self._sock = None
            sock.close()

    def stop(self) -> None:
        """Stop reading at once (from any thread): no further frame is handled; the link
        closes."""
        with self._sock_lock:
            self._stopping.set()
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

"""The MLLP listener: the integration engine connects to us, on as many connections as it has
interfaces (one for ADT, one for ORU, ...), up to a cap.

One thread, one `selectors` loop, non-blocking sockets: a connection that sends nothing, half a
frame a minute (slow loris) or never finishes its TLS handshake costs a slot and a buffer, never
the thread. Every complete frame goes to the same `on_frame` as the client's (in the service:
the front's, which logs it, hands it over and returns its ACK), then its ACK is sent and
`after_ack` called — the client's contract, so there is one ingest path for both modes.

Bounds, so that 1,000 bad connections cannot stop the feed or grow the memory:
- at most `max_connections` open; a new one past the cap evicts the connection that has gone
  longest without a message, preferring one that never sent any (a half-open connection left
  by an engine's restart goes first, the engine's live ones last);
- per connection: the frame decoder holds at most one frame (the cap, as the client's), at
  most one 64 KiB read of frames waits to be handled, and one ACK waits to be sent (a peer
  that does not read its ACKs is not read from either);
- time: a TLS handshake must finish within `handshake_timeout`; a connection must deliver its
  first message within `first_frame_timeout` and then one at least every `idle_timeout`
  (bytes that do not complete a message do not count: a slow loris is closed all the same).

Backpressure: `on_frame` blocks while the service cannot keep up (the front's credit wait), and
then nothing is read from any connection: TCP's window stops the engine. Frames of different
connections are handled in whatever order they arrive; each connection's in its own order.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable

from ..mllp import DEFAULT_MAX_FRAME, FrameDecoder, FrameError, frame
from .client import NOT_ACKNOWLEDGED, TLS_HANDSHAKE_FAILED, FrameHandler

log = logging.getLogger(__name__)

RECV_BYTES = 1 << 16
BACKLOG = 128
DEFAULT_MAX_CONNECTIONS = 8
DEFAULT_IDLE_TIMEOUT = 300.0
FIRST_FRAME_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0
# Floods (evictions, timeouts, failed handshakes) are logged at most this often, with a count.
LOG_EVERY = 10.0

LISTENER_ACCEPTED, LISTENER_CLOSED, LISTENER_EVICTED, LISTENER_TIMED_OUT = (
    "listener-accepted", "listener-closed", "listener-evicted", "listener-timed-out")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (raises OSError when the address cannot be bound). The service binds
    it and its front inherits it, so a failure is a start-up error and a restarted front keeps
    the connections the kernel queued meanwhile."""
    sock = socket.create_server((host, port), backlog=BACKLOG)
    sock.set_inheritable(True)
    return sock


class _Conn:
    __slots__ = ("sock", "peer", "decoder", "frames", "out", "handshaking", "accepted",
                 "last_message", "messages", "mask", "want_write", "closed")

    def __init__(self, sock: socket.socket, peer: str, max_frame: int, now: float,
                 handshaking: bool) -> None:
        self.sock = sock
        self.peer = peer
        self.decoder = FrameDecoder(max_frame)
        self.frames: collections.deque[tuple[bytes | FrameError, float]] = collections.deque()
        self.out = b""                   # an ACK (or the rest of one) not yet sent
        self.handshaking = handshaking
        self.accepted = now
        self.last_message = now
        self.messages = 0
        self.mask = 0
        self.want_write = False          # TLS: a read or handshake step waits for writability
        self.closed = False


class _Throttle:
    """Log one line per kind at most every LOG_EVERY seconds, with how many were not logged."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._quiet: collections.Counter[str] = collections.Counter()

    def warn(self, kind: str, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -LOG_EVERY) >= LOG_EVERY:
            more = self._quiet.pop(kind, 0)
            log.warning(message + (f" ({more} more since the last such line)" if more else ""),
                        *args)
            self._last[kind] = now
        else:
            self._quiet[kind] += 1


class MllpListener:
    def __init__(self, server: socket.socket, on_frame: FrameHandler,
                 after_ack: Callable[[], None] = lambda: None, *,
                 max_frame: int = DEFAULT_MAX_FRAME,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 first_frame_timeout: float = FIRST_FRAME_TIMEOUT,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 tls: ssl.SSLContext | None = None,
                 may_accept: Callable[[], bool] = lambda: True,
                 events: Callable[[str], None] = lambda event: None) -> None:
        """`server`: a bound, listening socket (`bind()`); `idle_timeout` 0: none.
        `may_accept`: checked before each accept; False stops the listener (a replica that
        lost its lease). `events`: told each connection event (LISTENER_ACCEPTED, …)."""
        self.server = server
        self.on_frame, self.after_ack = on_frame, after_ack
        self.max_frame = max_frame
        self.max_connections = max(1, max_connections)
        self.idle_timeout = idle_timeout
        self.first_frame_timeout = (min(first_frame_timeout, idle_timeout) if idle_timeout
                                    else first_frame_timeout)
        self.handshake_timeout = handshake_timeout
        self.tls = tls
        self.may_accept = may_accept
        self.events = events
        self.conns: dict[int, _Conn] = {}
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = selectors.DefaultSelector()
        self._throttle = _Throttle()
        host, port = server.getsockname()[:2]
        self.address = f"{host}:{port}"

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        """Accept and serve connections until stop(); blocking (its own thread, or the front's
        main thread)."""
        self.server.setblocking(False)
        self._sel.register(self.server, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        log.info("listening for MLLP%s on %s (at most %d connections)",
                 " over TLS" if self.tls else "", self.address, self.max_connections)
        try:
            while not self._stopping.is_set():
                for key, mask in self._sel.select(self._next_deadline()):
                    if self._stopping.is_set():
                        break
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    elif not key.data.closed:        # not closed by an earlier event
                        self._serve(key.data, mask)
                self._expire(time.monotonic())
        finally:
            for conn in list(self.conns.values()):
                self._close(conn, None)
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            log.info("stopped listening on %s", self.address)

    def stop(self) -> None:
        """Stop after the frame in hand (from any thread or a signal handler): no further frame
        is handled; every connection closes. The listening socket stays open (its owner's)."""
        self._stopping.set()
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 256):
                pass
        except OSError:
            pass

    def _next_deadline(self) -> float:
        """Seconds until the earliest timeout (at most 1 s: the loop also checks the flag)."""
        now, soonest = time.monotonic(), 1.0
        for c in self.conns.values():
            soonest = min(soonest, self._deadline(c) - now)
        return max(0.0, soonest)

    def _deadline(self, c: _Conn) -> float:
        if c.handshaking:
            return c.accepted + self.handshake_timeout
        if not c.messages:
            return c.accepted + self.first_frame_timeout
        return c.last_message + self.idle_timeout if self.idle_timeout else float("inf")

    def _expire(self, now: float) -> None:
        for c in [c for c in self.conns.values() if self._deadline(c) <= now]:
            if c.handshaking:
                self.events(TLS_HANDSHAKE_FAILED)
                self._throttle.warn("handshake", "TLS handshake with %s not finished within "
                                    "%.0fs: closed", c.peer, self.handshake_timeout)
                self._close(c, None)
                continue
            self.events(LISTENER_TIMED_OUT)
            if c.messages:
                self._close(c, f"no message for {self.idle_timeout:.0f}s")
            else:
                self._throttle.warn("first-frame", "connection from %s sent no message within "
                                    "%.0fs: closed", c.peer, self.first_frame_timeout)
                self._close(c, None)

    # --- connections ----------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(BACKLOG):                      # whatever the kernel has queued
            try:
                sock, addr = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:                      # EMFILE and the like: try again later
                self._throttle.warn("accept", "cannot accept a connection: %s", e)
                return
            if not self.may_accept():
                sock.close()
                log.error("not accepting connections: this replica does not lead")
                self.stop()
                return
            if len(self.conns) >= self.max_connections:
                self._evict()
            self._open(sock, f"{addr[0]}:{addr[1]}")

    def _evict(self) -> None:
        victim = min(self.conns.values(), key=lambda c: (c.messages > 0, c.last_message))
        self.events(LISTENER_EVICTED)
        self._throttle.warn("evict", "%d connections open (MLLP_MAX_CONNECTIONS): closing the "
                            "one from %s, %s", self.max_connections, victim.peer,
                            f"silent for {time.monotonic() - victim.last_message:.1f}s"
                            if victim.messages else "which sent no message")
        self._close(victim, None if not victim.messages else "evicted")

    def _open(self, sock: socket.socket, peer: str) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            pass
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False)
            except (OSError, ValueError) as e:
                sock.close()
                self._handshake_failed(peer, e)
                return
        conn = _Conn(sock, peer, self.max_frame, time.monotonic(), self.tls is not None)
        self.conns[sock.fileno()] = conn
        conn.mask = selectors.EVENT_READ
        self._sel.register(sock, conn.mask, conn)
        self.events(LISTENER_ACCEPTED)
        log.debug("connection from %s accepted", peer)
        if conn.handshaking:
            self._handshake(conn)

    def _close(self, c: _Conn, reason: str | None) -> None:
        """Close a connection; logged at INFO when it carried messages (the engine's)."""
        if c.closed:
            return
        c.closed = True
        self.conns.pop(c.sock.fileno(), None)
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        try:
            c.sock.close()
        except OSError:
            pass
        self.events(LISTENER_CLOSED)
        if c.messages:
            log.info("connection from %s closed after %d message(s)%s", c.peer, c.messages,
                     f": {reason}" if reason else "")
        else:
            log.debug("connection from %s closed without a message%s", c.peer,
                      f": {reason}" if reason else "")

    def _interest(self, c: _Conn) -> None:
        """Read unless an ACK waits to be sent (or TLS waits to write)."""
        mask = (selectors.EVENT_WRITE if c.out or c.want_write else selectors.EVENT_READ)
        if mask != c.mask:
            c.mask = mask
            self._sel.modify(c.sock, mask, c)

    def _handshake_failed(self, peer: str, e: Exception) -> None:
        self.events(TLS_HANDSHAKE_FAILED)
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        self._throttle.warn(f"handshake:{peer.rsplit(':', 1)[0]}",
                            "TLS handshake with %s failed: %s", peer, reason)

    def _handshake(self, c: _Conn) -> bool:
        """One step of the TLS handshake; True once it is done."""
        try:
            c.sock.do_handshake()
        except ssl.SSLWantReadError:
            c.want_write = False
        except ssl.SSLWantWriteError:
            c.want_write = True
        except (ssl.SSLError, OSError, ValueError) as e:
            self._handshake_failed(c.peer, e)
            self._close(c, None)
            return False
        else:
            c.handshaking = c.want_write = False
            peer_cert = c.sock.getpeercert()
            if peer_cert:
                subject = dict(x[0] for x in peer_cert.get("subject", ()))
                log.info("TLS connection from %s: client certificate %s", c.peer,
                         subject.get("commonName", "?"))
            return True
        self._interest(c)
        return False

    def _serve(self, c: _Conn, mask: int) -> None:
        if c.handshaking and not self._handshake(c):
            return
        if c.out and not self._flush(c):
            return
        self._handle(c)                   # frames read before their turn (pipelined)
        if c.closed or c.out or c.frames:
            return
        if self._read(c):
            self._handle(c)

    def _flush(self, c: _Conn) -> bool:
        """Send what is left of the ACK; False when the connection was closed."""
        try:
            sent = c.sock.send(c.out)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except OSError as e:
            self._close(c, str(e.strerror or e))
            return False
        c.out = c.out[sent:]
        self._interest(c)
        return True

    def _read(self, c: _Conn) -> bool:
        """One read (and what TLS already decrypted), decoded; False when closed."""
        c.want_write = False
        received = time.perf_counter()
        while True:
            try:
                data = c.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                c.want_write = True
                break
            except OSError as e:
                self._close(c, str(e.strerror or e))
                return False
            if not data:
                self._close(c, None)
                return False
            for item in c.decoder.feed(data):
                c.frames.append((item, received))
            # TLS may hold decrypted bytes that select() will not announce.
            if c.frames or not isinstance(c.sock, ssl.SSLSocket) or not c.sock.pending():
                break
        self._interest(c)
        return True

    def _handle(self, c: _Conn) -> None:
        """Handle the frames read, each durable before its ACK, while its ACKs go out."""
        while c.frames and not c.out and not self._stopping.is_set():
            item, received = c.frames.popleft()
            try:
                reply = self.on_frame(item, received)
            except Exception as e:  # noqa: BLE001 - ours: do not ACK, drop the connection
                self.events(NOT_ACKNOWLEDGED)
                log.error("cannot store message from %s, not acknowledging it (%s); closing "
                          "the connection so the engine resends it", c.peer, e)
                self._close(c, "not acknowledged")
                return
            c.messages += 1
            c.last_message = time.monotonic()
            c.out = frame(reply)
            try:
                alive = self._flush(c)
            finally:
                self.after_ack()
            if not alive:
                return

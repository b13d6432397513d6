"""The front: a process of its own that holds the hospital's connection, logs and acknowledges.

Why a process: applying a message (parse, state, detector) and serving the connection (the
socket's system calls, the message log's `write()`) used to take turns on one core, since
Python runs one thread at a time (a second thread made it slower: docs/performance.md, round
4). The front does the second part on the other core, at about an acknowledge-only client's
cost: it receives a frame, appends it to the message log (store/msglog.py), hands it over to
the service and sends the ACK; the service applies the frame (durable.py, `take`) while the
front reads the next one.

The handover is two pipes, the front's stdout and stdin. Front → service: one record per frame,
(kind, log position, receive time, processing time, payload), and the connection's events
(kind `E`, for the service's metrics). Service → front: a byte per frame applied, a credit. The
front acknowledges a frame only while fewer than AHEAD frames it handed over wait unapplied, so
that a page never waits behind a long queue, and so that when the service cannot apply (its
storage fails) the front soon stops acknowledging and the hospital waits.

The front holds the client (connection/client.py: it dials the hospital, MLLP_ADDRESS), the
listener (connection/listener.py: the integration engine dials in, MLLP_LISTEN), or both; both
call the same `Front.on_frame`, so every frame takes the same way: log, hand over, ACK. The
client alone runs in the main thread as before (its blocking fast path); the listener's one
`selectors` loop runs beside it in a thread of its own, the two taking turns at `on_frame`
under a lock. The listening socket is the service's, inherited (`--listen-fd`): the service
binds it at start-up, and a restarted front serves the connections queued meanwhile.

The front dies with the service (PR_SET_PDEATHSIG), so that a killed service's front cannot
keep the hospital's connection; it stops on SIGTERM from the service after the frame in hand.

Under the `hl7` NACK policy (`--nack-policy hl7`) the front parses each message itself with the
service's feed profile (`--feed-profile`; a pure function, the same the service applies) to
answer a message that will be a dead letter AE, and an unreadable frame AR (hl7/ack.py); it
tells the service the code with an event record (`ack:AE`) before the frame's own record. The
default policy, `accept`, answers AA and costs nothing more.

    python -m aki_alert.front HOST:PORT|- STATE_DIR PARENT_PID [--sync] [--listen-fd FD ...]
    (started by the service)
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

from . import logs
from .connection import MllpClient, MllpListener
from .connection.listener import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from .connection.tls import TlsSettings, client_context, server_context
from .hl7 import (FeedProfile, acknowledgement, load_profile,
                  nack_acknowledgement)
from .mllp import FrameError
from .store.msglog import Position, SegmentWriter, log_record

log = logging.getLogger(__name__)

# Frames acknowledged and handed over but not yet applied, at most. Two overlap the hospital's
# round trip with the service's work; more would only queue pages behind other messages.
AHEAD = 2
EVENT = b"E"
ACK_EVENT = "ack:"                   # + MSA-1, an event record before a frame not answered AA
_RECORD = struct.Struct(">cIIddI")   # kind, segment, index, received, processing, length
_PR_SET_PDEATHSIG = 1


class ServiceGone(Exception):
    """The service closed its end of the pipes (it stopped or died)."""


def encode(kind: bytes, at: Position, received: float, processing: float,
           payload: bytes) -> bytes:
    return _RECORD.pack(kind, at[0], at[1], received, processing, len(payload)) + payload


class Decoder:
    """Records out of the bytes of the front's stdout, in whatever pieces they arrive."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, Position, float, float, bytes]]:
        buf = self._buf
        buf += data
        out, pos, n = [], 0, len(buf)
        while n - pos >= _RECORD.size:
            kind, segment, index, received, processing, length = _RECORD.unpack_from(buf, pos)
            end = pos + _RECORD.size + length
            if end > n:
                break
            out.append((kind, (segment, index), received, processing,
                        bytes(buf[pos + _RECORD.size:end])))
            pos = end
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record."""
        return len(self._buf)


# --- the front's side ----------------------------------------------------------------------

class Handoff:
    """The front's ends of the two pipes."""

    def __init__(self, out_fd: int, credit_fd: int, ahead: int = AHEAD) -> None:
        self.out_fd, self.credit_fd, self.ahead = out_fd, credit_fd, ahead
        self.unapplied = 0

    def wait_for_room(self) -> None:
        """Block until fewer than `ahead` frames handed over wait to be applied."""
        while self.unapplied >= self.ahead:
            credits = os.read(self.credit_fd, 4096)
            if not credits:
                raise ServiceGone("the service closed the credit pipe")
            self.unapplied -= len(credits)

    def send(self, kind: bytes, at: Position, received: float, processing: float,
             payload: bytes) -> None:
        data = memoryview(encode(kind, at, received, processing, payload))
        while data:
            data = data[os.write(self.out_fd, data):]
        if kind != EVENT:
            self.unapplied += 1

    def event(self, name: str) -> None:
        self.send(EVENT, (0, 0), 0.0, 0.0, name.encode())


class Front:
    """The front's work for each frame, before its ACK: log it, hand it over."""

    def __init__(self, frames: SegmentWriter, handoff: Handoff,
                 nack_profile: FeedProfile | None = None) -> None:
        """`nack_profile`: answer under the `hl7` NACK policy, judging messages with this feed
        profile; None: the `accept` policy (AA to every frame)."""
        self.frames, self.handoff = frames, handoff
        self.nack_profile = nack_profile

    def on_frame(self, item: bytes | FrameError, received: float) -> bytes:
        """The frame's ACK, once it is in the log and handed over. Handing over before the
        ACK starts the service's work while the ACK travels (measured: p90 latency in live
        mode −0.2 ms, throughput unchanged), and an acknowledged frame has always reached
        the service's pipe."""
        self.handoff.wait_for_room()
        kind, payload = log_record(item)
        at = self.frames.append(kind, payload)
        reply = None
        if self.nack_profile is not None:
            code, reply = nack_acknowledgement(item, self.nack_profile)
            if code != "AA":
                self.handoff.event(ACK_EVENT + code)
        self.handoff.send(kind, at, received, time.perf_counter() - received, payload)
        return reply or acknowledgement(item)


def _die_with_parent(parent: int) -> None:
    """Be killed when the service dies (Linux); exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):      # not Linux: the closed pipes stop us instead
        pass
    if os.getppid() != parent:
        os._exit(1)


def _serialised(lock: threading.Lock, fn: Callable) -> Callable:
    """`fn` taking turns under `lock` (the client and the listener share the log and pipes)."""
    def call(*args):
        with lock:
            return fn(*args)
    return call


def _tls_settings(args: argparse.Namespace) -> TlsSettings | None:
    if not args.tls:
        return None
    return TlsSettings(args.tls_cert, args.tls_key, args.tls_ca, args.tls_server_name,
                       args.tls_verify_client)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aki_alert.front", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hospital", help="HOST:PORT to connect to, or - for none")
    ap.add_argument("state_dir")
    ap.add_argument("parent", type=int)
    ap.add_argument("--sync", action="store_true")
    ap.add_argument("--log-format", default="text")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--nack-policy", choices=("accept", "hl7"), default="accept")
    ap.add_argument("--feed-profile", default="")
    ap.add_argument("--listen-fd", type=int, help="a listening socket to accept MLLP on")
    ap.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    ap.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-ca")
    ap.add_argument("--tls-server-name")
    ap.add_argument("--tls-verify-client", action="store_true")
    args = ap.parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    _die_with_parent(args.parent)
    # A terminal's ^C reaches both processes: the service stops us when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tls = _tls_settings(args)
    handoff = Handoff(sys.stdout.fileno(), sys.stdin.fileno())
    nack_profile = None
    if args.nack_policy == "hl7":
        nack_profile = load_profile(args.feed_profile)
    front = Front(SegmentWriter(args.state_dir, args.sync), handoff, nack_profile)
    on_frame, event = front.on_frame, handoff.event
    both = args.hospital != "-" and args.listen_fd is not None
    if both:
        lock = threading.Lock()
        on_frame, event = _serialised(lock, on_frame), _serialised(lock, event)
    client = listener = None
    if args.hospital != "-":
        host, _, port = args.hospital.rpartition(":")
        client = MllpClient(host, int(port), on_frame, events=event,
                            tls=client_context(tls) if tls else None,
                            server_name=tls.server_name if tls else None)
    if args.listen_fd is not None:
        listener = MllpListener(socket.socket(fileno=args.listen_fd), on_frame, events=event,
                                max_connections=args.max_connections,
                                idle_timeout=args.idle_timeout,
                                tls=server_context(tls) if tls else None)

    def stop(*_) -> None:
        for side in (client, listener):
            if side is not None:
                side.stop()

    signal.signal(signal.SIGTERM, stop)
    try:
        if both:
            thread = threading.Thread(target=_listen_or_die, args=(listener,), name="listener",
                                      daemon=True)
            thread.start()
            client.run()
            listener.stop()
            thread.join(5)
        elif client is not None:
            client.run()
        else:
            listener.run()
    except OSError:                         # the service is gone: nothing to hand over to
        pass
    front.frames.close()
    return 0


def _listen_or_die(listener: MllpListener) -> None:
    """The listener's thread beside the client's: if it fails, the whole front exits, and the
    service applies what it logged and starts it again (it never runs half)."""
    try:
        listener.run()
    except BaseException as e:  # noqa: BLE001 - any failure: the service restarts the front
        log.error("the MLLP listener failed (%s): the front exits", e)
        os._exit(1)


# --- the service's side --------------------------------------------------------------------

class FrontProcess:
    """The service's handle on its front: starts it, yields what it hands over, credits it."""

    def __init__(self, hospital: str | None, state_dir: str, sync: bool, log_format: str,
                 log_level: str, *, listen: socket.socket | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 tls: TlsSettings | None = None, nack_policy: str = "accept",
                 feed_profile: str = "") -> None:
        """`hospital`: HOST:PORT to connect to (None: none); `listen`: the bound listening
        socket the front accepts on (None: none), which stays the service's."""
        self.argv = [sys.executable, "-m", "aki_alert.front", hospital or "-", state_dir,
                     str(os.getpid()), "--log-format", log_format, "--log-level", log_level]
        if sync:
            self.argv.append("--sync")
        self.pass_fds: tuple[int, ...] = ()
        if listen is not None:
            self.pass_fds = (listen.fileno(),)
            self.argv += ["--listen-fd", str(listen.fileno()), "--max-connections",
                          str(max_connections), "--idle-timeout", str(idle_timeout)]
        if tls is not None:
            self.argv += tls.argv()
        if nack_policy != "accept":
            self.argv += ["--nack-policy", nack_policy, "--feed-profile", feed_profile]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0, pass_fds=self.pass_fds)
        self._credit_fd = self.proc.stdin.fileno()

    def records(self) -> Iterator[tuple[bytes, Position, float, float, bytes]]:
        """What the front hands over, until it exits."""
        assert self.proc is not None and self.proc.stdout is not None
        fd, decoder = self.proc.stdout.fileno(), Decoder()
        while data := os.read(fd, 1 << 16):
            yield from decoder.feed(data)

    def credit(self) -> None:
        """One frame handed over has been applied."""
        try:
            os.write(self._credit_fd, b"\1")
        except BrokenPipeError:            # the front has exited; records() ends soon
            pass

    def stop(self) -> None:
        """Ask the front to stop after the frame in hand (from any thread)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 5.0) -> int:
        """Reap the front (it exited, or was asked to stop); its exit status. Its credit pipe
        is closed first: a front waiting for credit stops at once (what it acknowledged is in
        the log). One still stuck after `timeout` is killed."""
        assert self.proc is not None
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the front process did not stop within %.0fs: killing it", timeout)
            self.proc.kill()
            return self.proc.wait()

if __name__ == "__main__":
    sys.exit(main())

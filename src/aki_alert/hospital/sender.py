"""A send-only MLLP client: the integration engine's side, for the listener (MLLP_LISTEN).

It connects to the service, sends each message of an MLLP file stop-and-wait (the next only
after the `AA` of this one), as an engine's MLLP sender does, and reports the rate. Blocking
socket: one peer, nothing to multiplex. Used by `make bench` (the listener's row) and by hand:

    python -m aki_alert.hospital.sender 127.0.0.1:2575 messages.mllp
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import threading
import time

from ..mllp import FrameDecoder, frame
from .datafiles import read_messages


class MllpSender(threading.Thread):
    """Sends `messages` to HOST:PORT stop-and-wait, as an engine's MLLP sender does: the next
    only after an `AA` for this one. When the connection fails or no ACK comes within
    `ack_timeout`, it reconnects after `retry` seconds and sends the message in hand again,
    until every one is acknowledged, `close()` is called, or `connect_for` seconds have passed.
    `tls`: wrap each connection; `pause`: seconds to wait after each `AA` (a paced feed).
    `acked`, `rate()`; `done` is set at the end, `complete` says whether all were sent."""

    def __init__(self, host: str, port: int, messages: list[bytes],
                 connect_for: float = 60.0, *, tls: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, ack_timeout: float = 30.0,
                 retry: float = 0.05, pause: float = 0.0, name: str | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.host, self.port, self.messages = host, port, messages
        self.connect_for = connect_for
        self.tls, self.server_hostname = tls, server_hostname
        self.ack_timeout, self.retry, self.pause = ack_timeout, retry, pause
        self.acked = 0                    # the first message not yet acknowledged
        self.connections = 0
        self.failures = 0                 # connections that failed (refused, cut, TLS)
        self.acks: list[bytes] = []       # every ACK received, in order
        self.first_send: float | None = None
        self.done_at: float | None = None
        self.done = threading.Event()
        self.closing = threading.Event()
        self._sock: socket.socket | None = None

    @property
    def complete(self) -> bool:
        return self.acked >= len(self.messages)

    def run(self) -> None:
        deadline = time.monotonic() + self.connect_for
        while not (self.complete or self.closing.is_set()) and time.monotonic() < deadline:
            try:
                self._connection()
            except (OSError, ssl.SSLError):
                self.failures += 1
                self.closing.wait(self.retry)
        self.done_at = time.perf_counter()
        self.done.set()

    def _connection(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.ack_timeout)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.server_hostname or self.host)
        self._sock = sock
        self.connections += 1
        decoder = FrameDecoder()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.first_send is None:
                self.first_send = time.perf_counter()
            while not (self.complete or self.closing.is_set()):
                sock.sendall(frame(self.messages[self.acked]))
                replies: list = []
                while not replies:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionResetError("closed by the peer")
                    replies = decoder.feed(data)
                if len(replies) != 1 or not replies[0].startswith(b"MSH|"):
                    raise ConnectionResetError(f"not one ACK: {replies!r}")
                self.acks.append(replies[0])
                if b"\rMSA|AA" in replies[0]:
                    self.acked += 1
                    if self.pause:
                        time.sleep(self.pause)
        finally:
            self._sock = None
            sock.close()

    def cut(self) -> None:
        """Break the connection in hand (the sender reconnects)."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closing.set()
        self.cut()

    def rate(self) -> float | None:
        if self.first_send is None or self.done_at is None or self.done_at <= self.first_send:
            return None
        return self.acked / (self.done_at - self.first_send)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aki_alert.hospital.sender",
                                description="Send an MLLP file to a listener, stop-and-wait.")
    p.add_argument("address", help="HOST:PORT of the service's MLLP_LISTEN")
    p.add_argument("messages", help="an MLLP file (0x0B … 0x1C 0x0D frames)")
    args = p.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    from pathlib import Path

    sender = MllpSender(host or "127.0.0.1", int(port), read_messages(Path(args.messages)))
    sender.run()
    print(f"sent {sender.acked} of {len(sender.messages)} messages "
          f"({sender.rate() or 0:.0f}/s)", file=sys.stderr)
    return 0 if sender.acked == len(sender.messages) else 1


if __name__ == "__main__":
    sys.exit(main())

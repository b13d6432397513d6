"""A stand-in integration engine for the listener's tests: MLLP *senders* that connect to the
service (MLLP_LISTEN), one per interface (e.g. ADT and ORU), each in a thread of its own.

Each interface sends its messages stop-and-wait, as Mirth's or Rhapsody's MLLP sender does:
the next one only after an `AA` for this one; when the connection fails or no ACK comes within
`ack_timeout`, it reconnects (after `retry` seconds) and sends the message in hand again. The
interfaces run independently, so their messages interleave in whatever order the threads and
the service make. Everything on loopback; `close()` stops the threads.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from aki_alert.mllp import FrameDecoder, frame


def split_adt_oru(messages: list[bytes]) -> dict[str, list[bytes]]:
    """A stream cut into a trust's two interfaces: admissions (ADT) and results (ORU...)."""
    out: dict[str, list[bytes]] = {"ADT": [], "ORU": []}
    for m in messages:
        msh9 = m.split(b"\r", 1)[0].split(b"|")[8]
        out["ADT" if msh9.startswith(b"ADT") else "ORU"].append(m)
    return out


class Interface(threading.Thread):
    def __init__(self, name: str, host: str, port: int, messages: list[bytes],
                 tls: ssl.SSLContext | None, server_hostname: str | None,
                 ack_timeout: float, retry: float, pause: float) -> None:
        super().__init__(name=f"engine-{name}", daemon=True)
        self.host, self.port, self.messages = host, port, messages
        self.tls, self.server_hostname = tls, server_hostname
        self.ack_timeout, self.retry, self.pause = ack_timeout, retry, pause
        self.next = 0                     # the first message not yet acknowledged
        self.connections = 0
        self.failures = 0                 # connections that failed (refused, cut, TLS)
        self.acks: list[bytes] = []
        self.done = threading.Event()
        self.closing = threading.Event()
        self.sock: socket.socket | None = None

    def run(self) -> None:
        while not self.closing.is_set() and self.next < len(self.messages):
            try:
                self._connection()
            except (OSError, ssl.SSLError):
                self.failures += 1
                self.closing.wait(self.retry)
        if self.next >= len(self.messages):
            self.done.set()

    def _connection(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.ack_timeout)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.server_hostname or self.host)
        self.sock = sock
        self.connections += 1
        decoder = FrameDecoder()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while self.next < len(self.messages) and not self.closing.is_set():
                sock.sendall(frame(self.messages[self.next]))
                replies: list = []
                while not replies:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionResetError("closed by the service")
                    replies = decoder.feed(data)
                if len(replies) != 1 or not replies[0].startswith(b"MSH|"):
                    raise ConnectionResetError(f"not one ACK: {replies!r}")
                self.acks.append(replies[0])
                if b"\rMSA|AA" in replies[0]:
                    self.next += 1
                    if self.pause:
                        time.sleep(self.pause)
        finally:
            self.sock = None
            sock.close()

    def cut(self) -> None:
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Engine:
    """`interfaces`: name → its messages, in order. `start()`, `wait_done()`, `close()`."""

    def __init__(self, port: int, interfaces: dict[str, list[bytes]], host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 ack_timeout: float = 10.0, retry: float = 0.05, pause: float = 0.0) -> None:
        """`pause`: seconds each interface waits after an ACK (a paced feed)."""
        self.interfaces = {name: Interface(name, host, port, msgs, tls, server_hostname,
                                           ack_timeout, retry, pause)
                           for name, msgs in interfaces.items()}

    def start(self) -> Engine:
        for i in self.interfaces.values():
            i.start()
        return self

    @property
    def acked(self) -> int:
        return sum(i.next for i in self.interfaces.values())

    @property
    def total(self) -> int:
        return sum(len(i.messages) for i in self.interfaces.values())

    def wait_done(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(i.done.wait(max(0.0, deadline - time.monotonic()))
                   for i in self.interfaces.values())

    def close(self) -> None:
        for i in self.interfaces.values():
            i.closing.set()
            i.cut()
        for i in self.interfaces.values():
            i.join(5)

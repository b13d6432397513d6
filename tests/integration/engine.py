"""A stand-in integration engine for the listener's tests: MLLP senders that connect to the
service (MLLP_LISTEN), one per interface (e.g. ADT and ORU), each in a thread of its own.

Each interface is the package's stop-and-wait sender (`hospital/sender.py`, as Mirth's or
Rhapsody's MLLP sender behaves). The interfaces run independently, so their messages
interleave in whatever order the threads and the service make. Everything on loopback;
`close()` stops the threads.
"""

from __future__ import annotations

import ssl
import time

from aki_alert.hospital.sender import MllpSender


def split_adt_oru(messages: list[bytes]) -> dict[str, list[bytes]]:
    """A stream cut into a trust's two interfaces: admissions (ADT) and results (ORU...)."""
    out: dict[str, list[bytes]] = {"ADT": [], "ORU": []}
    for m in messages:
        msh9 = m.split(b"\r", 1)[0].split(b"|")[8]
        out["ADT" if msh9.startswith(b"ADT") else "ORU"].append(m)
    return out


class Engine:
    """`interfaces`: name → its messages, in order. `start()`, `wait_done()`, `close()`."""

    def __init__(self, port: int, interfaces: dict[str, list[bytes]], host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 ack_timeout: float = 10.0, retry: float = 0.05, pause: float = 0.0) -> None:
        """`pause`: seconds each interface waits after an ACK (a paced feed)."""
        self.interfaces = {
            name: MllpSender(host, port, msgs, connect_for=3600.0, tls=tls,
                             server_hostname=server_hostname, ack_timeout=ack_timeout,
                             retry=retry, pause=pause, name=f"engine-{name}")
            for name, msgs in interfaces.items()}

    def start(self) -> Engine:
        for i in self.interfaces.values():
            i.start()
        return self

    @property
    def acked(self) -> int:
        return sum(i.acked for i in self.interfaces.values())

    @property
    def total(self) -> int:
        return sum(len(i.messages) for i in self.interfaces.values())

    def wait_done(self, timeout: float) -> bool:
        """Whether every interface sent all its messages within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(i.complete
                                                      for i in self.interfaces.values()):
            time.sleep(0.01)
        return all(i.complete for i in self.interfaces.values())

    def close(self) -> None:
        for i in self.interfaces.values():
            i.close()
        for i in self.interfaces.values():
            i.join(5)

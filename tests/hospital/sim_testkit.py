"""Helpers for the hospital's socket tests: a tiny stream, a scripted MLLP client, a pager call.
(Imported by the test files of this directory; pytest puts the directory on sys.path.)"""

from __future__ import annotations

import http.client
import socket

from aki_alert.hospital.datafiles import AkiRow
from aki_alert.hospital.simulator import HospitalThread
from aki_alert.mllp import END, FrameDecoder, frame
from aki_alert.timeutil import parse_hl7_time

DEADLINE = 0.3   # the tests' ACK deadline (the hospital's is 10 s)
ACK_AA = frame(b"MSH|^~\\&|||||20240129093837||ACK|||2.5\rMSA|AA\r")
ACK_AE = frame(b"MSH|^~\\&|||||20240129093837||ACK|||2.5\rMSA|AE\r")
ACK_AR = frame(b"MSH|^~\\&|||||20240129093837||ACK|||2.5\rMSA|AR\r")


def adt_a01(t: str, mrn: str) -> bytes:
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{t}||ADT^A01|||2.5\r"
            f"PID|1||{mrn}||JO DOE||19680919|F\r").encode()


def oru(t: str, mrn: str, value: float) -> bytes:
    return (f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{t}||ORU^R01|||2.5\r"
            f"PID|1||{mrn}\rOBR|1||||||{t}\rOBX|1|SN|CREATININE||{value!r}\r").encode()


# Patient 1001 has an AKI at 20240402100000; 1002 has none.
STREAM = [
    adt_a01("20240301080000", "1001"),
    adt_a01("20240401090000", "1002"),
    oru("20240401100000", "1001", 80.0),
    oru("20240401120000", "1002", 70.0),
    oru("20240402100000", "1001", 190.5),
    oru("20240402110000", "1002", 72.0),
]
AKIS = [AkiRow("1001", parse_hl7_time("20240402100000"), True, True)]


def hospital(messages=STREAM, akis=AKIS, **kwargs) -> HospitalThread:
    kwargs.setdefault("deadline", DEADLINE)
    return HospitalThread(list(messages), list(akis), **kwargs)


class Client:
    """A scripted MLLP client with blocking reads bounded by `timeout`."""

    def __init__(self, port: int, timeout: float = 2.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder()
        self.frames: list[bytes] = []

    def recv(self) -> bytes | None:
        """The next message payload, or None when the hospital closed the connection."""
        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    def recv_raw_frame(self) -> list[bytes]:
        """The reads that made up the next frame, as they arrived."""
        chunks = []
        while not chunks or not chunks[-1].endswith(END):
            data = self.sock.recv(65536)
            assert data, "connection closed mid-frame"
            chunks.append(data)
        return chunks

    def silent_for(self, seconds: float) -> bool:
        """True when nothing arrives (and the connection stays open) for `seconds`."""
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
            return False
        except (TimeoutError, socket.timeout):
            return True
        finally:
            self.sock.settimeout(2.0)

    def closed_within(self, seconds: float) -> bool:
        """True when the hospital closes the connection within `seconds` (pending data ignored)."""
        self.sock.settimeout(seconds)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except (TimeoutError, socket.timeout):
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(2.0)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def post_page(port: int, body: bytes, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/page", body=body, headers={"Content-Type": "text/plain"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get_metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()

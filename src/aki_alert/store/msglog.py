"""The write-ahead message log: every message is appended here before it is acknowledged.

The state database commits in batches (a commit per message would cost more than everything
else the service does for it); between two commits, this file is what makes an acknowledged
message survive a crash. An append is one `write()` into the page cache, which outlives the
process (durability "process"); with durability "machine" it is also `fdatasync`ed before the
ACK. After each batch commit the log is emptied; at start, whatever it still holds is applied
again (the journal's digests make that idempotent).

A record is a kind byte (`M` a message, `F` a frame set aside, `D` a page the pager accepted), a
4-byte big-endian length and the payload. A `D` record stands in for a commit after each
delivery: a recovery that decides a page again finds it delivered and does not resend it. A
torn last record (a machine crash mid-append) was never acknowledged and is dropped.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct(">cI")
MESSAGE = b"M"
FRAME_ERROR = b"F"
DELIVERED = b"D"
_KINDS = (MESSAGE, FRAME_ERROR, DELIVERED)


def encode(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def decode(data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """The complete records of `data`, and how many trailing bytes were torn."""
    records = []
    pos, n = 0, len(data)
    while pos + _HEADER.size <= n:
        kind, length = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if end > n or kind not in _KINDS:
            break
        records.append((kind, data[pos + _HEADER.size:end]))
        pos = end
    return records, n - pos


class MessageLog:
    def __init__(self, path: str, sync: bool = False) -> None:
        self.path = path
        self.sync = sync
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self.fd).st_size

    def append(self, kind: bytes, payload: bytes) -> None:
        record = encode(kind, payload)
        written = os.write(self.fd, record)
        if written != len(record):       # a short write (disk full): undo it, report failure
            os.ftruncate(self.fd, self.size)
            raise OSError(28, "short write to the message log")
        self.size += written
        if self.sync:
            os.fdatasync(self.fd)

    def records(self) -> tuple[list[tuple[bytes, bytes]], int]:
        with open(self.path, "rb") as f:
            return decode(f.read())

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)
        self.size = 0

    def close(self) -> None:
        os.close(self.fd)

"""The write-ahead message log: every message is appended here before it is acknowledged.

The state database commits in batches (a commit per message would cost more than everything
else the service does for it); between two commits, this log is what makes an acknowledged
message survive a crash. An append is one `write()` into the page cache, which outlives the
process (durability "process"); with durability "machine" it is also `fdatasync`ed before the
ACK. At start, whatever the log still holds is applied again (the journal's digests make that
idempotent); after each batch commit, what it committed is dropped.

Two writers, two kinds of file, in the state directory:
- `messages-NNNNNNNN.log`, *segments*: the frames, appended by the front (front.py, a process of
  its own), which starts a new segment every SEGMENT_RECORDS frames so that the applier can
  drop whole segments once it has committed them (a file's head cannot be cut off). A frame's
  place in the log is its `Position`, (segment, index in the segment).
- `messages.log`: the applier's own records, the pages the pager accepted (`D`), emptied at
  each commit. A `D` record stands in for a commit after each delivery: a recovery that decides
  a page again finds it delivered and does not resend it. (Before segments, this file held
  the frames too; a log left by that version is applied the same way.)

A record is a kind byte (`M` a message, `F` a frame set aside, `D` a page the pager accepted), a
4-byte big-endian length and the payload. A torn last record (a crash mid-append) was never
acknowledged and is dropped.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ..mllp import FrameError

_HEADER = struct.Struct(">cI")
MESSAGE = b"M"
FRAME_ERROR = b"F"
DELIVERED = b"D"
_KINDS = (MESSAGE, FRAME_ERROR, DELIVERED)

# Frames per segment: a restart re-reads at most this many already committed frames (the
# journal skips them), and a segment is ~300 KiB.
SEGMENT_RECORDS = 1024
_SEGMENT_GLOB = "messages-*.log"

Position = tuple[int, int]        # (segment number, index of the frame in the segment)
Record = tuple[bytes, bytes]      # (kind, payload)


def encode(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def log_record(item: bytes | FrameError) -> Record:
    """The record (kind, payload) of a frame: a message, or a frame set aside."""
    if isinstance(item, FrameError):
        return FRAME_ERROR, item.reason.encode() + b"\0" + item.prefix
    return MESSAGE, item


def frame_of(kind: bytes, payload: bytes) -> bytes | FrameError:
    """The frame of a record (the inverse of `log_record`)."""
    if kind == FRAME_ERROR:
        reason, _, prefix = payload.partition(b"\0")
        return FrameError(reason.decode(), prefix)
    return payload


def decode(data: bytes) -> tuple[list[Record], int]:
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
    """One append-only file, emptied by `clear()`."""

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

    def records(self) -> tuple[list[Record], int]:
        with open(self.path, "rb") as f:
            return decode(f.read())

    def clear(self) -> None:
        if self.size:
            os.ftruncate(self.fd, 0)
            self.size = 0

    def close(self) -> None:
        os.close(self.fd)


def segment_path(directory: str, number: int) -> str:
    return os.path.join(directory, f"messages-{number:08d}.log")


def segments(directory: str) -> list[int]:
    """The numbers of the segments in `directory`, ascending."""
    found = []
    for p in Path(directory).glob(_SEGMENT_GLOB):
        number = p.stem.removeprefix("messages-")
        if number.isdigit():
            found.append(int(number))
    return sorted(found)


class SegmentWriter:
    """The frames' side of the log (the front's): appends to the newest segment, starting a
    new one after SEGMENT_RECORDS frames and at every start (never after another writer's
    possibly torn tail)."""

    def __init__(self, directory: str, sync: bool = False) -> None:
        self.directory = directory
        self.per_segment = SEGMENT_RECORDS
        self.sync = sync
        existing = segments(directory)
        self.segment = existing[-1] + 1 if existing else 0
        self.index = 0
        self.log: MessageLog | None = None

    def append(self, kind: bytes, payload: bytes) -> Position:
        """Append one frame's record; its position. Raises OSError when it cannot."""
        if self.log is None or self.index == self.per_segment:
            if self.log is not None:
                self.log.close()
                self.log = None               # a failed open below is retried next time
                self.segment, self.index = self.segment + 1, 0
            self.log = MessageLog(segment_path(self.directory, self.segment), self.sync)
            if self.sync:                 # the new file's name must survive a power cut too
                fsync_directory(self.directory)
        self.log.append(kind, payload)
        self.index += 1
        return self.segment, self.index - 1

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def segment_records(directory: str, upto: Position | None = None
                    ) -> tuple[list[tuple[Position, Record]], int, int | None]:
    """The frames of every segment in order (those at or before `upto`, if given), the torn
    bytes dropped from the segments' tails, and the number of the last segment read."""
    out, torn, last = [], 0, None
    for number in segments(directory):
        if upto is not None and number > upto[0]:
            break
        with open(segment_path(directory, number), "rb") as f:
            records, cut = decode(f.read())
        torn += cut
        last = number
        for index, record in enumerate(records):
            if upto is not None and (number, index) > upto:
                break
            out.append(((number, index), record))
    return out, torn, last


def drop_segments(directory: str, before: int) -> None:
    """Delete the segments numbered below `before` (their frames are committed)."""
    for number in segments(directory):
        if number >= before:
            break
        os.remove(segment_path(directory, number))


def fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""MLLP framing (sans-I/O): `0x0B` + message + `0x1C 0x0D`.

`FrameDecoder` is fed whatever bytes arrive and returns complete frames; it knows nothing of
sockets, so every edge case (splits anywhere, several frames per read, junk between frames,
oversized frames) is tested directly. The client and the listener are in `connection/`.
"""

from __future__ import annotations

from dataclasses import dataclass

START = b"\x0b"
END = b"\x1c\x0d"
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: far above any HL7 message of this feed


@dataclass(frozen=True, slots=True)
class FrameError:
    """A frame that could not be read whole (larger than the cap); its first bytes are kept."""

    reason: str
    prefix: bytes


def frame(message: bytes) -> bytes:
    """Wrap one message in MLLP framing."""
    return START + message + END


class FrameDecoder:
    """Accumulates bytes and returns complete message payloads.

    Bytes outside a frame (before a start byte) are discarded and counted in `junk_bytes`.
    A frame longer than `max_frame` is not buffered: its bytes are dropped up to its end marker,
    and a `FrameError` stands in its place, so the caller can set it aside and answer it.
    """

    __slots__ = ("_buf", "_in_frame", "_skipped", "_prefix", "max_frame", "junk_bytes")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self._skipped = 0          # > 0 while dropping an oversized frame
        self._prefix = b""
        self.max_frame = max_frame
        self.junk_bytes = 0

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Add `data`; return what every frame it completes holds, in order."""
        if (not self._buf and not self._skipped and data[:1] == START
                and 0 < data.find(END) == len(data) - 2 and data.find(START, 1) < 0):
            return [data[1:-2]]               # the usual read: exactly one whole frame
        buf = self._buf
        buf += data
        out: list[bytes | FrameError] = []
        pos = 0
        while True:
            if not self._in_frame:
                start = buf.find(START, pos)
                if start < 0:
                    self.junk_bytes += len(buf) - pos
                    pos = len(buf)
                    break
                self.junk_bytes += start - pos
                pos = start + 1
                self._in_frame = True
            end = buf.find(END, pos)
            if end < 0:
                # Keep the last byte: it may be the first half of the end marker.
                if self._skipped or len(buf) - pos > self.max_frame:
                    if not self._skipped:
                        self._prefix = bytes(buf[pos:pos + 256])
                    keep = max(pos, len(buf) - 1)
                    self._skipped += keep - pos
                    pos = keep
                break
            if self._skipped:
                size = self._skipped + end - pos
                reason = f"MLLP frame of {size} bytes exceeds the {self.max_frame}-byte cap"
                out.append(FrameError(reason, self._prefix))
                self._skipped, self._prefix = 0, b""
            else:
                # A start byte inside a frame means the previous frame was cut short: restart.
                restart = buf.rfind(START, pos, end)
                if restart >= 0:
                    self.junk_bytes += restart + 1 - pos
                    pos = restart + 1
                out.append(bytes(buf[pos:end]))
            pos = end + 2
            self._in_frame = False
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

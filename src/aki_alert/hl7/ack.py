"""The acknowledgement we answer with (pure functions, cheap: one per message)."""

from __future__ import annotations

import time

from ..mllp import FrameError

_ack_cache: tuple[int, bytes] = (-1, b"")


def control_id(raw: bytes) -> str:
    """MSH-10 of a raw message, or "" (also for a message too broken to parse)."""
    head = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = head.split(head[3:4] or b"|", 10)
    if len(fields) <= 9:
        return ""
    text = fields[9].decode("utf-8", "replace").strip()
    # Echoed in MSA-2: never a control character (an MLLP block byte, 0x0B or 0x1C, in the
    # ACK would end or restart its frame early at the hospital's end).
    return text if text.isprintable() else "".join(c for c in text if c.isprintable())


def ack(code: str = "AA", control: str = "") -> bytes:
    """The acknowledgement the hospital's strict parser accepts: MSH then MSA, `\\r` after each."""
    global _ack_cache
    now = int(time.time())
    if _ack_cache[0] != now:
        _ack_cache = (now, time.strftime("%Y%m%d%H%M%S", time.localtime(now)).encode())
    msa = f"MSA|{code}|{control}" if control else f"MSA|{code}"
    return b"MSH|^~\\&|||||" + _ack_cache[1] + b"||ACK|||2.5\r" + msa.encode() + b"\r"


def acknowledgement(item: bytes | FrameError) -> bytes:
    """The ACK of a frame: AA, echoing MSH-10 (a frame set aside has none to echo). Every
    frame gets AA once it is durable: a message that can never be processed is set aside as a
    dead letter, because AE/AR would make the hospital resend it forever."""
    if isinstance(item, FrameError):
        return ack("AA")
    return ack("AA", control_id(item))

"""The acknowledgement we answer with (pure functions, cheap: one per message on the front's
hot path).

HL7 v2 original mode, generated from the message as HAPI's `generateACK` does:

- MSH-1/MSH-2: the message's own separators;
- MSH-3..6: the message's receiving application/facility become the sending ones and the
  sending ones the receiving ones (copied as sent, already encoded with those separators);
- MSH-7: now (`YYYYMMDDHHMMSS`, local time, cached per second);
- MSH-9: `ACK^<the message's trigger>^ACK` (the third component, the message structure,
  exists from v2.3.1: a v2.3 or older message gets `ACK^<trigger>`);
- MSH-10: a control id of its own, unique: a per-process random prefix and a counter;
- MSH-11: echoed as sent (empty stays empty); MSH-12: echoed, `2.5` when the message has none;
- MSA-1 the code (AA, AE, AR), MSA-2 the message's MSH-10 (left out when it has none);
- with AE/AR, an ERR segment: ERR-3 the HL7 table 0357 code (`207^Application internal
  error^HL70357`), ERR-4 severity `E`, ERR-8 the reason, escaped (v2.5 and later); a v2.4 or
  older message has no ERR-3..8, so there ERR-1 carries the code and MSA-3 the reason.

Segments end with `\\r`, no `\\n` anywhere, one MSH first: what the assessment hospital's strict
parser (hospital/ackcheck.py, contract §2) accepts. A frame whose MSH cannot be read (none, or
unusable separators; an oversized frame whose kept prefix does not hold its whole MSH) gets a
minimal ACK: `MSH|^~\\&|||||<now>||ACK|<own id>|P|2.5`.

Which code a message gets is the NACK policy's choice (`verdict`, docs/integration.md): the
service's default answers every durably handled frame `AA`.
"""

from __future__ import annotations

import base64
import itertools
import os
import time
from time import time as _clock

from ..mllp import FrameError
from .encoding import EncodingError, separators
from .events import APPLICATION_INTERNAL_ERROR, Event, HL7Error
from .parse import parse_outcome
from .profile import DEFAULT_PROFILE, FeedProfile

# The policies of NACK_POLICY: `accept` answers AA to every frame it has durably logged (a
# message that can never be processed becomes a dead letter); `hl7` answers such a message
# AE (or AR when it cannot be read as HL7 at all), with an ERR segment saying why.
NACK_POLICIES = ("accept", "hl7")

# HL7 table 0357's names of the codes used (ERR-3's second component).
ERROR_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "207": "Application internal error",
}
USER_MESSAGE_MAX = 200          # ERR-8 is a TX of 250 characters in v2.5; MSA-3 of 80 before
TEXT_MESSAGE_MAX = 80

# MSH-10 of our ACKs: 8 random base32 characters for this process, `-`, then a counter (20
# characters, MSH-10's length in v2.5, for the first 10^11 ACKs).
_PREFIX = base64.b32encode(os.urandom(5)).decode("ascii") + "-"
_counter = itertools.count(1)
_now: list = [-1, b""]          # (second, MSH-7 of that second): the clock read once a second
_versions: dict[bytes, tuple[bool, bool]] = {}


def next_control_id() -> bytes:
    """A control id (MSH-10) for one of our ACKs: unique in this process, and across processes
    by its random prefix."""
    return b"%s%d" % (_PREFIX.encode("ascii"), next(_counter))


def _timestamp() -> bytes:
    now = int(_clock())
    if _now[0] != now:
        _now[1] = _stamp(now)
        _now[0] = now
    return _now[1]


def _stamp(second: int) -> bytes:
    """MSH-7 of an ACK sent in this second (local time)."""
    return time.strftime("%Y%m%d%H%M%S", time.localtime(second)).encode()


def _version(version: bytes, cs: bytes) -> tuple[bool, bool]:
    """(MSH-9 has a message structure component, ERR has ERR-2..ERR-12) for MSH-12 `version`:
    from v2.3.1 and from v2.5 on. Cached: a feed sends one or two versions."""
    known = _versions.get(version)
    if known is None:
        number = version.split(cs, 1)[0].strip() if cs else version.strip()
        try:
            parts = tuple(int(p) for p in number.decode("ascii").split("."))
        except (ValueError, UnicodeDecodeError):
            parts = (2, 5)                  # unreadable: answer as the default version
        known = (parts >= (2, 3, 1), parts >= (2, 5))
        if len(_versions) < 64:
            _versions[version] = known
    return known


def ack(code: str = "AA", control: str = "", error: HL7Error | None = None) -> bytes:
    """The minimal ACK, for a frame whose MSH cannot be read: default separators, no
    applications to swap, MSH-11 `P`, MSH-12 `2.5`; MSA-2 `control` if given."""
    msa = b"MSA|" + code.encode("ascii")
    if control:
        msa += b"|" + control.encode("ascii", "replace")
    out = (b"MSH|^~\\&|||||" + _timestamp() + b"||ACK|" + next_control_id() + b"|P|2.5\r"
           + msa + b"\r")
    if error is not None:
        out += _err(error, b"|", b"^~\\&", True) + b"\r"
    return out


def _head(raw: bytes, whole: bool) -> bytes | None:
    """The MSH segment of a message (of a frame's prefix when not `whole`: None unless the
    prefix holds all of it), or None when the frame does not start with one."""
    if raw[:3] != b"MSH":
        raw = raw.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()   # and a byte-order mark
        if raw[:3] != b"MSH":
            return None
    end = raw.find(b"\r")
    if end < 0:
        if not whole and b"\n" not in raw:
            return None
        end = len(raw)
    head = raw[:end]
    lf = head.find(b"\n")
    return head if lf < 0 else head[:lf]


def acknowledgement(item: bytes | FrameError, code: str = "AA",
                    error: HL7Error | None = None) -> bytes:
    """The ACK of a frame (module docstring): `code` in MSA-1, and with `error` an ERR segment
    saying why. The default, AA without an error, is the front's per-message hot path: for a
    message with the usual separators, all of the ACK but its MSH-10 and MSA-2 is cached per
    second and per header (the fields it echoes), so a message costs one split of its MSH, a
    dictionary look-up and one formatting."""
    if code == "AA" and error is None and item.__class__ is bytes and item[:9] == _USUAL:
        end = item.find(b"\r")
        if end > 0:
            f = item[:end].split(b"|", 12)
            if len(f) > 11:
                echoed = (f[2], f[3], f[4], f[5], f[10], f[11])
                now = int(_clock())
                cached = _aa_cache.get(f[8])
                if cached is None or cached[0] != now or cached[3] != echoed:
                    cached = _aa_parts(f[8], echoed, now)
                if cached is not None:
                    control = f[9]
                    if not control:
                        return b"%s%d%s\r" % (cached[1], next(_counter), cached[2])
                    if len(control.translate(None, _CONTROL)) == len(control):
                        return b"%s%d%s|%s\r" % (cached[1], next(_counter), cached[2], control)
    return _acknowledgement(item, code, error)


_USUAL = b"MSH|^~\\&|"
# Control characters, never echoed into an ACK: an MLLP block byte (0x0B, 0x1C) or a segment
# end (\r, \n) in an echoed field would end or restart its frame or segment early.
_CONTROL = bytes(range(32)) + b"\x7f"
# MSH-9 → (second, the ACK up to its MSH-10's counter, from there to MSA-1, the fields echoed)
_aa_cache: dict[bytes, tuple[int, bytes, bytes, tuple[bytes, ...]]] = {}


def _aa_parts(msh9: bytes, echoed: tuple[bytes, ...], now: int
              ) -> tuple[int, bytes, bytes, tuple[bytes, ...]] | None:
    """The AA ACK of a header with the usual separators, without its own MSH-10's counter and
    without MSA-2: (second, the bytes before, the bytes between, `echoed`), cached for that
    second and that MSH-9 (a feed sends a few message types, from one or two senders). None
    for a header with a line feed in an echoed field: the careful path reads it."""
    if any(len(x.translate(None, _CONTROL)) != len(x) for x in (*echoed, msh9)):
        return None         # the careful path leaves out what must not be echoed
    sending, sending_facility, receiving, receiving_facility, processing, version = echoed
    version = version or b"2.5"
    structured, _ = _version(version, b"^")
    parts = (now,
             b"|".join((b"MSH", b"^~\\&", receiving, receiving_facility, sending,
                        sending_facility, _stamp(now), b"", _ack_type(msh9, b"^", structured),
                        _PREFIX.encode("ascii"))),
             b"|" + processing + b"|" + version + b"\rMSA|AA", echoed)
    if len(_aa_cache) >= 256:
        _aa_cache.clear()
    _aa_cache[msh9] = parts
    return parts


def _ack_type(msh9: bytes, cs: bytes, structured: bool) -> bytes:
    """MSH-9 of the ACK of a message whose MSH-9 is `msh9`: `ACK^<trigger>^ACK`, or without
    the structure before v2.3.1."""
    parts = msh9.split(cs, 2)
    trigger = parts[1] if len(parts) > 1 else b""
    if structured:
        return b"ACK" + cs + trigger + cs + b"ACK"
    return b"ACK" + cs + trigger if trigger else b"ACK"


def _acknowledgement(item: bytes | FrameError, code: str, error: HL7Error | None) -> bytes:
    if isinstance(item, FrameError):
        head = _head(item.prefix, whole=False)
    else:
        head = _head(item, whole=True)
    if head is None:
        return ack(code, "", error)
    if head[:9] == b"MSH|^~\\&|":
        fs, enc, cs = b"|", b"^~\\&", b"^"
    else:
        try:
            seps = separators(head.decode("latin-1"))
        except EncodingError:
            return ack(code, "", error)
        fs, enc = head[3:4], head[4:head.find(head[3:4], 4)]
        cs = seps.component.encode("latin-1")
    f = [x.translate(None, _CONTROL) for x in head.split(fs, 12)]
    if len(f) < 12:
        f += [b""] * (12 - len(f))
    version = f[11] or b"2.5"
    structured, err_v25 = _version(version, cs)
    msh9 = _ack_type(f[8], cs, structured)
    msa = [b"MSA", code.encode("ascii")]
    if f[9]:
        msa.append(f[9])
    tail = b"\r"
    if error is not None:
        if not err_v25:
            if len(msa) == 2:
                msa.append(b"")
            msa.append(_escape(str(error)[:TEXT_MESSAGE_MAX], fs, enc))
        tail = b"\r" + _err(error, fs, enc, err_v25) + b"\r"
    return b"".join((b"MSH", fs, enc, fs, f[4], fs, f[5], fs, f[2], fs, f[3], fs, _timestamp(),
                     fs, fs, msh9, fs, next_control_id(), fs, f[10], fs, version, b"\r",
                     fs.join(msa), tail))


def verdict(item: bytes | FrameError, profile: FeedProfile = DEFAULT_PROFILE,
            parsed: Event | HL7Error | None = None) -> tuple[str, HL7Error | None]:
    """The `hl7` NACK policy's code for a frame, and why: AR for a frame that cannot be read as
    HL7 (oversized, no MSH, unusable separators), AE for a message that will be a dead letter
    (`parse` with the service's feed profile raises HL7Error), AA otherwise. A message that
    fails later, while it is applied (a processing error after MAX_ATTEMPTS), was answered AA:
    the front answers before the service applies it. `parsed`: what `parse_outcome` already
    made of the message with `profile` (not parsed again)."""
    if isinstance(item, FrameError):
        return "AR", HL7Error(item.reason, APPLICATION_INTERNAL_ERROR, reject=True)
    if parsed is None:
        parsed = parse_outcome(item, profile)
    if isinstance(parsed, HL7Error):
        return ("AR" if parsed.reject else "AE"), parsed
    return "AA", None


def nack_acknowledgement(item: bytes | FrameError, profile: FeedProfile = DEFAULT_PROFILE,
                         parsed: Event | HL7Error | None = None) -> tuple[str, bytes]:
    """(code, ACK) of a frame under the `hl7` NACK policy (`parsed`: as for `verdict`)."""
    code, error = verdict(item, profile, parsed)
    return code, acknowledgement(item, code, error)


def _err(error: HL7Error, fs: bytes, enc: bytes, v25: bool) -> bytes:
    """The ERR segment of an AE/AR: v2.5's ERR-3 (code), ERR-4 (severity E) and ERR-8 (the
    reason), or before v2.5 only ERR-1, whose fourth component holds the code."""
    code = getattr(error, "code", APPLICATION_INTERNAL_ERROR)
    text = ERROR_TEXT.get(code, ERROR_TEXT[APPLICATION_INTERNAL_ERROR]).encode("ascii")
    cs = enc[0:1] or b"^"
    if not v25:
        ss = enc[3:4] or b"&"
        return b"ERR" + fs + cs * 3 + code.encode("ascii") + ss + text + ss + b"HL70357"
    err3 = code.encode("ascii") + cs + text + cs + b"HL70357"
    message = _escape(str(error)[:USER_MESSAGE_MAX], fs, enc)
    return fs.join((b"ERR", b"", b"", err3, b"E", b"", b"", b"", message))


def _escape(text: str, fs: bytes, enc: bytes) -> bytes:
    """`text` as an HL7 ST/TX value with these separators: each separator as its escape
    sequence (`\\F\\`, `\\S\\`, `\\R\\`, `\\E\\`, `\\T\\`), a line break as `\\.br\\`, and any
    other byte outside printable ASCII as `\\Xhh..\\` (of its UTF-8), so the ACK stays ASCII
    (the assessment hospital's parser reads ASCII only)."""
    esc = enc[2:3]
    if not esc:                         # no escape character declared: blank the separators
        out = text.encode("ascii", "replace")
        for sep in fs + enc:
            out = out.replace(bytes((sep,)), b" ")
        return out.replace(b"\r", b" ").replace(b"\n", b" ")
    names = {fs: b"F", enc[0:1]: b"S", enc[1:2]: b"R", esc: b"E", enc[3:4]: b"T"}
    names.pop(b"", None)
    out = bytearray()
    for ch in text.replace("\r\n", "\n").replace("\r", "\n"):
        b = ch.encode("utf-8")
        if b in names:
            out += esc + names[b] + esc
        elif b == b"\n":
            out += esc + b".br" + esc
        elif len(b) > 1 or not 0x20 <= b[0] < 0x7F:
            out += esc + b"X" + b.hex().upper().encode("ascii") + esc
        else:
            out += b
    return bytes(out)

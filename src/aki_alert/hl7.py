"""The HL7 v2 messages of the feed, parsed into events, and the ACK we answer with (pure functions).

Only what the service uses is read: ADT^A01 (MRN, name, date of birth, sex), ADT^A03 (MRN) and
ORU^R01 (MRN, OBR-7 sample time, the CREATININE OBX value). Other segments, components and
repetitions are ignored; other message types parse to `Other` and are acknowledged unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .mllp import FrameError
from .timeutil import parse_hl7_date, parse_hl7_time

# Creatinine outside this range (µmol/L) is a unit or transcription error, not a patient.
MIN_CREATININE = 1.0
MAX_CREATININE = 5_000.0


class HL7Error(ValueError):
    """A message that can never be processed, with the reason an operator reads."""


@dataclass(frozen=True, slots=True)
class Admission:
    mrn: str
    name: str
    birth: int | None   # seconds at midnight of the date of birth
    sex: str | None     # "M" / "F"
    time: int | None    # MSH-7


@dataclass(frozen=True, slots=True)
class Discharge:
    mrn: str
    time: int | None


@dataclass(frozen=True, slots=True)
class Result:
    mrn: str
    time: int           # OBR-7, seconds
    time_text: str      # OBR-7's 12 or 14 digits as sent: echoed in the page body
    value: float        # µmol/L


@dataclass(frozen=True, slots=True)
class Other:
    """A well-formed message the service does not act on (another type, or no creatinine)."""

    kind: str
    control_id: str


Event = Admission | Discharge | Result | Other


def _first(field: str) -> str:
    """First component of the first repetition."""
    if "^" not in field and "~" not in field:     # the usual case, without the two splits
        return field.strip()
    return field.split("~", 1)[0].split("^", 1)[0].strip()


def _field(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def _segments(text: str) -> list[list[str]]:
    # Liberal in what we accept: \r is the standard separator; tolerate \n and \r\n too.
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [seg.split("|") for seg in text.split("\r") if seg and not seg.isspace()]


def _mrn(pid: list[str] | None) -> str:
    if pid is None:
        raise HL7Error("no PID segment")
    mrn = _first(_field(pid, 3))
    if not (mrn.isascii() and mrn.isdigit()):
        raise HL7Error(f"PID-3 MRN {mrn!r} is not a number" if mrn else "PID-3 MRN is empty")
    return mrn


def _ts_digits(ts: str) -> str:
    """The date-time of an HL7 TS without what may follow it: fractional seconds (`.123`) and a
    zone offset (`+0100`). The feed's times carry neither; other senders' may."""
    for mark in ".+-":
        cut = ts.find(mark, 12)
        if cut >= 0:
            ts = ts[:cut]
    return ts


def _msh_time(msh: list[str]) -> int | None:
    try:
        return parse_hl7_time(_ts_digits(_first(_field(msh, 6))))
    except ValueError:
        return None


def message_type(msh: list[str]) -> str:
    parts = _field(msh, 8).split("^", 2)
    return parts[0].strip() + "^" + parts[1].strip() if len(parts) > 1 else parts[0].strip()


def control_id(raw: bytes) -> str:
    """MSH-10 of a raw message, or "" (also for a message too broken to parse)."""
    head = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = head.split(b"|", 10)
    return fields[9].decode("utf-8", "replace").strip() if len(fields) > 9 else ""


def parse(raw: bytes) -> Event:
    """Parse one message payload (without MLLP framing). Raises HL7Error for an unusable one."""
    text = raw.decode("utf-8", "replace")
    segs = _segments(text)
    if not segs or segs[0][0] != "MSH":
        raise HL7Error("message does not start with an MSH segment")
    msh = segs[0]
    if not _field(msh, 11).strip():
        raise HL7Error("MSH has no MSH-12 version: an incomplete (truncated?) message")
    kind = message_type(msh)
    if kind == "ORU^R01":
        return _result(segs) or Other(kind, _field(msh, 9))
    if kind == "ADT^A01":
        return _admission(_pid(segs), _msh_time(msh))
    if kind == "ADT^A03":
        return Discharge(_mrn(_pid(segs)), _msh_time(msh))
    if not kind:
        raise HL7Error("MSH-9 message type is empty")
    return Other(kind, _field(msh, 9))


def _pid(segs: list[list[str]]) -> list[str] | None:
    """The first PID segment."""
    for seg in segs[1:]:
        if seg[0].strip() == "PID":
            return seg
    return None


def _admission(pid: list[str] | None, when: int | None) -> Admission:
    mrn = _mrn(pid)
    assert pid is not None
    name = _field(pid, 5).split("~", 1)[0].replace("^", " ").strip()
    dob = _first(_field(pid, 7))
    try:
        birth = parse_hl7_date(dob) if dob else None
    except ValueError:
        raise HL7Error(f"PID-7 date of birth {dob!r} is not YYYYMMDD") from None
    sex = _first(_field(pid, 8)).upper()[:1]
    return Admission(mrn, name, birth, sex if sex in ("M", "F") else None, when)


def _result(segs: list[list[str]]) -> Result | None:
    """One pass over the segments: the first PID, the first OBR's time, the first creatinine."""
    pid = None
    obr_time = ""
    value_text = None
    any_obx = False
    for seg in segs[1:]:
        name = seg[0].strip()
        if name == "PID":
            if pid is None:
                pid = seg
        elif name == "OBR" and not obr_time:
            obr_time = _ts_digits(_first(_field(seg, 7)))
        elif name == "OBX":
            any_obx = True
            if value_text is None and _first(_field(seg, 3)).upper() == "CREATININE":
                value_text = _first(_field(seg, 5))
    if not any_obx:
        raise HL7Error("ORU^R01 without an OBX segment: an incomplete (truncated?) result")
    if value_text is None:
        return None  # a result for another test: not ours
    mrn = _mrn(pid)
    try:
        when = parse_hl7_time(obr_time)
    except ValueError:
        raise HL7Error(f"OBR-7 sample time {obr_time!r} is not a 12- or 14-digit time") from None
    try:
        value = float(value_text)
    except ValueError:
        raise HL7Error(f"OBX-5 creatinine {value_text!r} is not a number") from None
    if not (math.isfinite(value) and MIN_CREATININE <= value <= MAX_CREATININE):
        raise HL7Error(
            f"OBX-5 creatinine {value_text} µmol/L is outside {MIN_CREATININE:g}–{MAX_CREATININE:g}"
        )
    return Result(mrn, when, obr_time, value)


_ack_cache: tuple[int, bytes] = (-1, b"")


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

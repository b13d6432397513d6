"""The hospital's strict ACK parser (contract §2). It is the hospital's check, deliberately
separate from the service's lenient HL7 parser: a reply passes only if

- segments are separated by `\\r` only (no `\\n` anywhere) and none is blank, except the one
  empty piece after a trailing terminator;
- the first segment is `MSH` and every segment name is exactly three characters;
- an `MSA` segment is present and MSA-1 is `AA`, `AE` or `AR`.
"""

from __future__ import annotations

ACK_CODES = ("AA", "AE", "AR")


def check_ack(payload: bytes) -> str:
    """MSA-1 of a valid ACK payload (without framing); raises ValueError saying what is wrong."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("ACK is not ASCII") from None
    if "\n" in text:
        raise ValueError("ACK contains a line feed")
    segments = text.split("\r")
    if segments and segments[-1] == "":
        segments.pop()
    if not segments:
        raise ValueError("empty ACK")
    if any(s == "" for s in segments):
        raise ValueError("blank segment in ACK")
    names = [s.split("|", 1)[0] for s in segments]
    if names[0] != "MSH":
        raise ValueError("ACK does not start with MSH")
    if any(len(n) != 3 for n in names):
        raise ValueError("segment name not three characters")
    for s in segments:
        if s.startswith("MSA"):
            fields = s.split("|")
            code = fields[1] if len(fields) > 1 else ""
            if code not in ACK_CODES:
                raise ValueError(f"MSA-1 is {code!r}, not AA/AE/AR")
            return code
    raise ValueError("ACK has no MSA segment")

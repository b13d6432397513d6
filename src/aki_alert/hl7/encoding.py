"""HL7 v2's encoding layer (pure functions): separators from MSH-1/MSH-2, segments, fields,
components and escape sequences.

A message names its own separators: MSH-1 is the field separator (the character after `MSH`)
and MSH-2 the component, repetition, escape and subcomponent characters, in that order
(`^~\\&` almost everywhere, which is what the fast paths below assume first). A value that
holds a separator character is sent escaped (`\\F\\` for `|`, `\\S\\` for `^`, `\\T\\` for
`&`, `\\R\\` for `~`, `\\E\\` for the escape itself, `\\Xhh…\\` for raw bytes); fields are
split first and the pieces the service reads are unescaped after, never before.
"""

from __future__ import annotations

from dataclasses import dataclass


class EncodingError(ValueError):
    """The message's MSH header cannot be read: no separators to split it with."""


@dataclass(frozen=True, slots=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


DEFAULT = Separators()


def separators(text: str) -> Separators:
    """The separators a message declares in its MSH segment (`text` starts with `MSH`)."""
    if text.startswith("MSH|^~\\&"):
        return DEFAULT
    if len(text) < 5:
        raise EncodingError("MSH segment too short to hold its separators")
    fs = text[3]
    end = text.find(fs, 4)
    enc = text[4:end] if end >= 0 else ""
    if fs.isalnum() or fs.isspace() or not 1 <= len(enc) <= 5 or len(set(enc + fs)) != len(enc) + 1:
        raise EncodingError(f"MSH-1/MSH-2 separators {text[3:10]!r} are not usable")
    # A separator MSH-2 leaves out is not used by the message: NUL (never in HL7 text) stands
    # in for it, so that splitting on it finds nothing; a missing escape character is "". A
    # fifth character (v2.7's truncation character) only marks where a sender cut a value.
    enc = enc[:4].ljust(4, "\0")
    return Separators(fs, enc[0], enc[1], enc[2].strip("\0"), enc[3])


def segments(text: str, fs: str = "|") -> list[list[str]]:
    """The message's segments, each split into fields. Liberal in what it accepts: `\\r` is
    the standard separator; `\\n` and `\\r\\n` are tolerated, blank segments skipped."""
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [seg.split(fs) for seg in text.split("\r") if seg and not seg.isspace()]


def field(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def first(value: str, seps: Separators = DEFAULT) -> str:
    """First component of the first repetition, unescaped and stripped."""
    if seps.component not in value and seps.repetition not in value:
        part = value
    else:
        part = value.split(seps.repetition, 1)[0].split(seps.component, 1)[0]
    if seps.escape and seps.escape in part:
        part = unescape(part, seps)
    return part.strip()


def components(value: str, seps: Separators = DEFAULT) -> list[str]:
    """The components of a field's first repetition, each unescaped and stripped."""
    rep = value.split(seps.repetition, 1)[0] if seps.repetition in value else value
    return [unescape(c, seps).strip() for c in rep.split(seps.component)]


def unescape(text: str, seps: Separators = DEFAULT) -> str:
    """Decode HL7 escape sequences. Formatting ones (`\\H\\`, `\\N\\`, `\\.br\\` …) become
    nothing or a line break; an unterminated or unknown sequence is kept as sent."""
    esc = seps.escape
    if not esc or esc not in text:
        return text
    out: list[str] = []
    i = 0
    while True:
        start = text.find(esc, i)
        if start < 0:
            out.append(text[i:])
            return "".join(out)
        end = text.find(esc, start + 1)
        if end < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:start])
        out.append(_decode(text[start + 1:end], esc, seps))
        i = end + 1


def _decode(seq: str, esc: str, seps: Separators) -> str:
    simple = {"F": seps.field, "S": seps.component, "T": seps.subcomponent,
              "R": seps.repetition, "E": esc}
    if seq in simple:
        return simple[seq]
    if seq == ".br":
        return "\n"
    if seq in ("H", "N") or seq[:1] in ("C", "M", "Z") or seq.startswith((".sp", ".in", ".ti",
                                                                          ".sk", ".ce", ".fi",
                                                                          ".nf")):
        return ""
    if seq[:1] == "X" and len(seq) % 2 == 1:
        try:
            return bytes.fromhex(seq[1:]).decode("utf-8", "replace")
        except ValueError:
            pass
    return esc + seq + esc

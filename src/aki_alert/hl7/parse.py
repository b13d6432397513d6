"""Messages into events, as a feed profile reads them (pure functions).

ADT^A01 admits (MRN, name, date of birth, sex), A08/A31 update the demographics, A03
discharges, A40/A34/A47 (and A18/A30/A36/A39) merge the MRG-1 number into PID-3's (one pair a
message); ORU (and OUL) carry results, of which
the creatinine OBXs are read: each with its own OBR's sample time (OBR-7, else its OBX-14),
its OBX-11 status, its value (NM, or SN with a comparator) converted to µmol/L. Every other
OBX is noted with the reason it is not judged. Other message types parse to `Other`.
A message that can never be processed raises HL7Error with the reason.
"""

from __future__ import annotations

import codecs
import logging
import math
import re
from collections.abc import Iterator

from ..logs import traceback_of
from ..patientid import is_valid_mrn, mrn_problem
from ..timeutil import parse_hl7_date, parse_hl7_time
from .encoding import (
    DEFAULT, EncodingError, Separators, components, field, first, segments, unescape,
)
from .encoding import separators as read_separators
from .events import (
    APPLICATION_INTERNAL_ERROR, CORRECTED, DATA_TYPE_ERROR, DELETED, FINAL, NOT_OBTAINED,
    PENDING, PRELIMINARY,
    REQUIRED_FIELD_MISSING, SEGMENT_SEQUENCE_ERROR, TABLE_VALUE_NOT_FOUND, WRONG_PATIENT,
    CONFLICTING, Admission, Discharge, Event, HL7Error, Merge, Note, Observation, Other, Result,
    Update,
)
from .profile import NOT_SERUM, DEFAULT_PROFILE, FeedProfile, not_creatinine, not_serum

log = logging.getLogger(__name__)

# Creatinine outside this range (µmol/L) is a unit or transcription error, not a patient: the
# lowest seen in this hospital's cohorts is about 20, and a value in mg/dL sent as µmol/L (1.2)
# falls below the floor instead of entering a baseline.
MIN_CREATININE = 10.0
MAX_CREATININE = 5_000.0
# HL7's NM: an optional sign, digits, an optional decimal point (no exponent, no `_`, ASCII).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")

_ADMIT = ("ADT^A01",)
_UPDATE = ("ADT^A08", "ADT^A31")
_DISCHARGE = ("ADT^A03",)
# Every trigger that moves one patient number's records to another by PID-3 and MRG-1: A40 and
# A34 (merge), A47 (change of identifier), and the older or person-level A18, A30, A36, A39,
# which some PAS send instead. A merge ignored would leave a patient's baseline behind.
_MERGE = ("ADT^A40", "ADT^A34", "ADT^A47", "ADT^A18", "ADT^A30", "ADT^A36", "ADT^A39")
# Observation results, whatever the trigger (R01 from the lab; R30–R32 point of care; OUL from
# lab automation; none at all, as v2.1–2.2 senders write MSH-9): their creatinine is judged alike.
_RESULT_TYPES = ("ORU^", "OUL^")
_UNTRIGGERED_RESULTS = ("ORU", "OUL")
# OBX-11 as acted on: table 0085's letters to the six the service distinguishes. v2.8 added
# A (amended: a value revised, as C), B (appended report, values unchanged) and V (verified).
_STATUS = {"": FINAL, "F": FINAL, "U": FINAL, "C": CORRECTED, "P": PRELIMINARY, "R": PRELIMINARY,
           "S": PRELIMINARY, "W": WRONG_PATIENT, "D": DELETED, "X": NOT_OBTAINED,
           "A": CORRECTED, "B": FINAL, "V": FINAL}
NO_RESULT_YET = {"I": "specimen in lab, result pending", "O": "order detail, no result",
                  "N": "not asked"}
_NO_VALUE = (WRONG_PATIENT, DELETED, NOT_OBTAINED)
_COMPARATORS = ("<=", ">=", "<", ">", "=")


def parse(raw: bytes, profile: FeedProfile = DEFAULT_PROFILE) -> Event:
    """Parse one message payload (without MLLP framing). Raises HL7Error for an unusable one."""
    seps, segs = split_message(raw)
    msh = segs[0]
    # MSH-n is msh[n - 1]: MSH-1, the field separator itself, is not a split field.
    if not field(msh, 11).strip():
        raise HL7Error("MSH has no MSH-12 version: an incomplete (truncated?) message",
                       REQUIRED_FIELD_MISSING)
    kind = message_type(msh, seps)
    if is_result_type(kind):
        return _result(segs, seps, profile, field(msh, 9), kind)
    if kind in _ADMIT or kind in _UPDATE:
        mrn, name, birth, sex = _demographics(_pid(segs), seps, profile)
        cls = Admission if kind in _ADMIT else Update
        return cls(mrn, name, birth, sex, _msh_time(msh, seps))
    if kind in _DISCHARGE:
        return Discharge(_mrn(_pid(segs), seps, profile), _msh_time(msh, seps))
    if kind in _MERGE:
        return _merge(segs, seps, profile, _msh_time(msh, seps))
    if not kind:
        raise HL7Error("MSH-9 message type is empty", REQUIRED_FIELD_MISSING)
    return Other(kind, field(msh, 9), f"message type {kind} is not used")


def split_message(raw: bytes) -> tuple[Separators, list[list[str]]]:
    """A message's separators and segments, each split into fields: UTF-8, or the ISO 8859
    character set its MSH-18 declares; whitespace or a byte-order mark before MSH ignored.
    Raises HL7Error (a reject) when it does not start with a usable MSH."""
    try:
        text, utf8 = raw.decode("utf-8"), True
    except UnicodeDecodeError:
        text, utf8 = raw.decode("utf-8", "replace"), False
    if not text.startswith("MSH"):
        text = _lstrip(text)
        if not text.startswith("MSH"):
            raise HL7Error("message does not start with an MSH segment", SEGMENT_SEQUENCE_ERROR,
                           reject=True)
    try:
        seps = read_separators(text)
    except EncodingError as e:
        raise HL7Error(str(e), DATA_TYPE_ERROR, reject=True) from None
    segs = segments(text, seps.field)
    if not utf8 and (codec := _charset(field(segs[0], 17), seps)):
        # Not UTF-8: a lab declaring ISO 8859 in MSH-18 (its µ, its patients' names).
        segs = segments(_lstrip(raw.decode(codec, "replace")), seps.field)
    return seps, segs


def parse_outcome(raw: bytes, profile: FeedProfile = DEFAULT_PROFILE) -> Event | HL7Error:
    """`parse`'s event, or the HL7Error it raised: one parse that both the ACK's verdict and
    the message's application read (durable.py, ingest.py). A failure of the parser itself
    (any other exception: a bug) is logged with its stack and becomes an HL7Error too, so the
    message is answered AE and dead-lettered with that reason, never stuck or unanswered."""
    try:
        return parse(raw, profile)
    except HL7Error as e:
        return e
    except Exception as e:  # noqa: BLE001 - see above
        log.error("the HL7 parser failed on a message: %r\n%s", e, traceback_of(e))
        return HL7Error(f"parser failure: {e!r}", APPLICATION_INTERNAL_ERROR)


def is_result_type(kind: str) -> bool:
    """True for a message type whose OBX creatinine results are judged (`TYPE^TRIGGER`)."""
    return kind == "ORU^R01" or kind.startswith(_RESULT_TYPES) or kind in _UNTRIGGERED_RESULTS


def _lstrip(text: str) -> str:
    """The text without what may come before MSH: whitespace, and a UTF-8 byte-order mark
    (some engines write one)."""
    text = text.lstrip()
    return text[1:].lstrip() if text.startswith("\ufeff") else text


def _charset(value: str, seps: Separators) -> str | None:
    """The Python codec of an MSH-18 character set of the ISO 8859 family (HL7 table 0211:
    `8859/1` … `8859/15`); None for any other (the message is read as UTF-8)."""
    name = first(value, seps).upper()
    if name.startswith("8859/") and name[5:].isascii() and name[5:].isdigit():
        try:
            return codecs.lookup(f"iso8859-{int(name[5:])}").name
        except LookupError:
            return None
    return None


def message_type(msh: list[str], seps: Separators = DEFAULT) -> str:
    """MSH-9 as `TYPE^TRIGGER` (the message structure, a third component, dropped)."""
    parts = field(msh, 8).split(seps.component, 2)
    return parts[0].strip() + "^" + parts[1].strip() if len(parts) > 1 else parts[0].strip()


def _ts_digits(ts: str) -> str:
    """The date-time of an HL7 TS without what may follow it: fractional seconds (`.123`) and a
    zone offset (`+0100`). The contract's times carry neither; other senders' may."""
    for mark in ".+-":
        cut = ts.find(mark, 12)
        if cut >= 0:
            ts = ts[:cut]
    return ts


def _msh_time(msh: list[str], seps: Separators) -> int | None:
    try:
        return parse_hl7_time(_ts_digits(first(field(msh, 6), seps)))
    except ValueError:
        return None


def _pid(segs: list[list[str]]) -> list[str] | None:
    """The first PID segment."""
    for seg in segs[1:]:
        if seg[0].strip() == "PID":
            return seg
    return None


def _mrn(pid: list[str] | None, seps: Separators, profile: FeedProfile) -> str:
    if pid is None:
        raise HL7Error("no PID segment", REQUIRED_FIELD_MISSING)
    return patient_id(field(pid, 3), seps, profile, "PID-3")


def patient_id(value: str, seps: Separators, profile: FeedProfile, where: str) -> str:
    """The patient's number in a CX field (PID-3, MRG-1), picked and normalised as the profile
    says: the repetition whose identifier type is the first of `identifier_types` present
    (when any repetition is typed), from one of `assigning_authorities` (when set)."""
    if (seps.repetition not in value and seps.component not in value
            and not profile.assigning_authorities):
        mrn = value.strip()         # the contract's plain MRN, without the search below
        if seps.escape and seps.escape in mrn:
            mrn = first(mrn, seps)
    else:
        mrn = _pick(value, seps, profile, where)
    if profile.strip_leading_zeros or profile.upper_case:
        mrn = profile.normalise(mrn)
    if not is_valid_mrn(mrn):
        if mrn:
            raise HL7Error(f"{where} MRN {mrn!r} {mrn_problem(mrn)}", DATA_TYPE_ERROR, mrn=mrn)
        raise HL7Error(f"{where} is empty", REQUIRED_FIELD_MISSING)
    return mrn


def repetitions(value: str, seps: Separators) -> list[tuple[str, str, str]]:
    """(identifier, assigning authority, identifier type) of each non-empty repetition of a CX
    field (PID-3, MRG-1)."""
    out = []
    for rep in value.split(seps.repetition):
        comps = rep.split(seps.component)
        ident = first(comps[0], seps)
        if not ident:
            continue
        authority = comps[3].split(seps.subcomponent)[0] if len(comps) > 3 else ""
        kind = comps[4] if len(comps) > 4 else ""
        out.append((ident, first(authority, seps).upper(), first(kind, seps).upper()))
    return out


def _pick(value: str, seps: Separators, profile: FeedProfile, where: str) -> str:
    reps = repetitions(value, seps)
    if profile.assigning_authorities:
        reps = [r for r in reps if r[1] in profile.assigning_authorities]
        if not reps:
            raise HL7Error(f"{where} has no identifier from assigning authority "
                           f"{'/'.join(profile.assigning_authorities)}", REQUIRED_FIELD_MISSING)
    if not reps:
        return ""
    if any(r[2] for r in reps):
        for wanted in profile.identifier_types:
            for ident, _, kind in reps:
                if kind == wanted:
                    return ident
        untyped = [r for r in reps if not r[2]]
        if untyped:
            return untyped[0][0]
        raise HL7Error(f"{where} has no identifier of type {'/'.join(profile.identifier_types)} "
                       f"(types sent: {', '.join(r[2] for r in reps)}); set identifier_types "
                       "in the feed profile", REQUIRED_FIELD_MISSING)
    return reps[0][0]


def _demographics(pid: list[str] | None, seps: Separators, profile: FeedProfile
                  ) -> tuple[str, str, int | None, str | None]:
    mrn = _mrn(pid, seps, profile)
    assert pid is not None
    name = field(pid, 5)
    if seps.component in name or seps.repetition in name or (seps.escape and seps.escape in name):
        name = " ".join(c for c in components(name, seps) if c)
    else:
        name = name.strip()             # the contract's `JORGIE LOWE`
    if name == '""':                    # HL7's null: no name
        name = ""
    dob = first(field(pid, 7), seps)
    if dob == '""':
        dob = ""
    elif dob.isdigit() and len(dob) in (4, 6):
        # A year or a month of birth only (as some PAS hold it): its middle, for an age.
        dob += "0701" if len(dob) == 4 else "15"
    try:
        birth = parse_hl7_date(dob[:8]) if dob else None
    except ValueError:
        raise HL7Error(f"PID-7 date of birth {dob!r} is not YYYYMMDD", DATA_TYPE_ERROR) from None
    sex = first(field(pid, 8), seps).upper()[:1]
    return mrn, name, birth, sex if sex in ("M", "F") else None


def _merge(segs: list[list[str]], seps: Separators, profile: FeedProfile,
           when: int | None) -> Merge:
    mrn = _mrn(_pid(segs), seps, profile)
    mrgs = [s for s in segs[1:] if s[0].strip() == "MRG"]
    if not mrgs:
        raise HL7Error("merge without an MRG segment: no prior patient number",
                       REQUIRED_FIELD_MISSING)
    if len(mrgs) > 1:
        raise HL7Error(f"merge of {len(mrgs)} patient numbers (PID/MRG pairs) in one message: "
                       "none applied; each merge must come in a message of its own",
                       SEGMENT_SEQUENCE_ERROR)
    mrg = mrgs[0]
    old = patient_id(field(mrg, 1), seps, profile, "MRG-1")
    return Merge(mrn, old, when)


def _result(segs: list[list[str]], seps: Separators, profile: FeedProfile,
            control: str, kind: str) -> Result | Other:
    """One pass over the segments: the first PID; each OBX with its OBR's time."""
    pid = None
    obr: list[str] | None = None
    obr_time = ""
    observations: list[Observation] = []
    from_obr: list[list[str] | None] = []     # the OBR of each observation
    notes: list[Note] = []
    any_obx = False
    specimens: Specimens | None = None        # read only for a message that names them
    for seg in segs[1:]:
        name = seg[0].strip()
        if name == "PID":
            if pid is None:
                pid = seg
            elif field(seg, 3) != field(pid, 3):
                raise HL7Error(f"{kind} holds results of more than one patient (two PID "
                               "segments): each patient's results must come in a message of "
                               "their own", SEGMENT_SEQUENCE_ERROR)
        elif name == "OBR":
            obr = seg
            obr_time = _ts_digits(first(field(seg, 7), seps))
            if not obr_time or (len(seg) > 15 and seg[15].strip()):
                specimens = specimens or Specimens(segs, seps)
                obr_time = obr_time or specimens.time(seg)
        elif name == "OBX":
            any_obx = True
            obs = _observation(seg, seps, profile, obr_time, notes)
            if obs is not None:
                observations.append(obs)
                from_obr.append(obr)
        elif name == "SPM" and specimens is None:
            specimens = Specimens(segs, seps)
    if specimens is not None and observations:
        kept = []
        for obs, of in zip(observations, from_obr, strict=True):
            if specimens.urine(of):
                notes.append(_urine_note(obs.code))
            else:
                kept.append(obs)
        observations = kept
    if not any_obx:
        raise HL7Error(f"{kind} without an OBX segment: an incomplete (truncated?) result",
                       REQUIRED_FIELD_MISSING)
    if not observations:
        reason = "; ".join(n.reason for n in notes) if notes else "no creatinine result"
        try:
            mrn = _mrn(pid, seps, profile)
        except HL7Error:
            mrn = None
        return Other(kind, control, reason, tuple(notes), mrn)
    return Result(_mrn(pid, seps, profile), tuple(observations), tuple(notes))


def each_obx(segs: list[list[str]], seps: Separators, profile: FeedProfile = DEFAULT_PROFILE
             ) -> Iterator[tuple[list[str], Observation | Note | HL7Error]]:
    """Each OBX of a result's segments as `parse` reads it, on its own: its Observation, the
    Note saying why it is not judged, or the HL7Error that makes its message a dead letter.
    Not on the hot path: for `aki-alert feed check`, which reports every OBX, not only the
    first one that fails."""
    obr: list[str] | None = None
    obr_time = ""
    specimens = Specimens(segs, seps)
    for seg in segs[1:]:
        name = seg[0].strip()
        if name == "OBR":
            obr = seg
            obr_time = _ts_digits(first(field(seg, 7), seps)) or specimens.time(seg)
        elif name == "OBX":
            notes: list[Note] = []
            try:
                obs = _observation(seg, seps, profile, obr_time, notes)
            except HL7Error as e:
                yield seg, e
                continue
            if obs is not None and specimens.urine(obr):
                obs, notes = None, [_urine_note(obs.code)]
            yield seg, obs if obs is not None else notes[-1]


class Specimens:
    """Each OBR's specimen (SPM) in a message that names them (the rare path): in the ORU
    layout a group's SPM follows its OBXs; in the OUL^R22 one each SPM comes before the orders
    on it, as a message whose first SPM comes before its first OBR shows."""

    def __init__(self, segs: list[list[str]], seps: Separators) -> None:
        self.seps = seps
        names = [seg[0].strip() for seg in segs]
        before = names[:names.index("OBR")] if "OBR" in names else names
        spm_first = "SPM" in before
        self._of: dict[int, list[str]] = {}      # id(OBR) → its SPM
        obr = spm = None
        for seg, name in zip(segs, names, strict=True):
            if name == "OBR":
                obr = seg
                if spm_first and spm is not None:
                    self._of[id(seg)] = spm
            elif name == "SPM":
                spm = seg
                if not spm_first and obr is not None:
                    self._of.setdefault(id(obr), seg)

    def time(self, obr: list[str]) -> str:
        """The collection time (SPM-17) of the OBR's specimen, as sent; "" for none."""
        spm = self._of.get(id(obr))
        return "" if spm is None else _ts_digits(first(field(spm, 17), self.seps))

    def urine(self, obr: list[str] | None) -> bool:
        """Whether the OBR's specimen is urine: its OBR-15 (specimen source, before v2.5) or
        its SPM-4 (specimen type)."""
        if obr is None:
            return False
        spm = self._of.get(id(obr))
        return _is_urine(field(obr, 15), self.seps) or (
            spm is not None and _is_urine(field(spm, 4), self.seps))


def _is_urine(value: str, seps: Separators) -> bool:
    """A specimen type or source (SPM-4, OBR-15) that says urine: HL7 table 0487's `UR…`
    codes, its text, or SNOMED CT's urine specimen."""
    if not value.strip():
        return False
    parts = [c.split(seps.subcomponent)[0].upper() for c in components(value, seps)[:2]]
    return parts[0].startswith("UR") or any("URIN" in p for p in parts) or \
        parts[0] == "122575003"


def _urine_note(code: str) -> Note:
    return Note(code, f"{code} is named serum creatinine by the feed profile, but its specimen "
                      "is urine: not judged", CONFLICTING)


def _observation(obx: list[str], seps: Separators, profile: FeedProfile, obr_time: str,
                 notes: list[Note]) -> Observation | None:
    n = len(obx)
    ident = obx[3] if n > 3 else ""
    if seps.component in ident:
        parts = components(ident, seps) + ["", "", "", "", ""]
        code, text, system, alt, alt_text, alt_system = parts[:6]
        if code.upper() in NOT_SERUM:
            # The primary code says urine, clearance or eGFR: a local alternate shared by
            # several tests does not make it serum creatinine.
            notes.append(Note(code, *not_creatinine(code, text)))
            return None
        spec = profile.creatinine(code, system)
        if spec is None and alt:
            spec = profile.creatinine(alt, alt_system)
        if spec is not None and (conflict := not_serum(code, text) or
                                 (not_serum(alt, alt_text) if alt else None)):
            # Named serum creatinine, but its own text or alternate code says otherwise: not
            # judged, and loud (an operator must settle which it is).
            notes.append(Note(code, f"{code} is named serum creatinine by the feed profile, but "
                                    f"OBX-3 says {conflict}: not judged", CONFLICTING))
            return None
    else:
        code, text = first(ident, seps), ""
        spec = profile.creatinine(code, "")
    if spec is None:
        notes.append(Note(code, *not_creatinine(code, text)))
        return None
    status_text = first(obx[11], seps).upper() if n > 11 and obx[11] else ""
    status = _STATUS.get(status_text)
    if status is None:
        if status_text in NO_RESULT_YET:
            notes.append(Note(code, f"{code} status {status_text}: "
                                    f"{NO_RESULT_YET[status_text]}", PENDING))
            return None
        raise HL7Error(f"OBX-11 result status {status_text!r} of {code} is not an HL7 status",
                       TABLE_VALUE_NOT_FOUND)
    time_text = obr_time or (_ts_digits(first(obx[14], seps)) if n > 14 else "")
    try:
        when = parse_hl7_time(time_text)
    except ValueError:
        raise HL7Error(f"OBR-7 sample time {time_text!r} of {code} is not a 12- or 14-digit "
                       "time", DATA_TYPE_ERROR) from None
    if status in _NO_VALUE:     # whatever value it carries is not to be used
        return Observation(when, time_text, None, status, "", "", code)
    value_field = obx[5] if n > 5 else ""
    if status_text == "U" and not value_field.strip():
        # "Made final without retransmitting the result": the value is the one stored.
        return Observation(when, time_text, None, FINAL, "", "", code)
    comparator, number = _value(value_field, obx[2].strip() if n > 2 else "", seps, code)
    # The unit sent (its code, else its text: `^umol/L`); the code's default only when OBX-6
    # names none (empty, or separators only).
    unit = (sent_unit(obx[6], seps) if n > 6 and obx[6] else "") or spec.unit
    if not unit:
        raise HL7Error(f"OBX-6 of {code} has no unit and the feed profile gives none for it",
                       REQUIRED_FIELD_MISSING)
    factor = profile.factor(unit)
    if factor is None:
        raise HL7Error(f"OBX-6 unit {unit!r} of {code} is not known to the feed profile: "
                       "add it under [units] with its factor to µmol/L", TABLE_VALUE_NOT_FOUND)
    value = number * factor
    if not (math.isfinite(value) and MIN_CREATININE <= value <= MAX_CREATININE):
        raise HL7Error(f"OBX-5 creatinine {number:g} {unit} ({value:g} µmol/L) is outside "
                       f"{MIN_CREATININE:g}–{MAX_CREATININE:g} µmol/L", DATA_TYPE_ERROR)
    return Observation(when, time_text, value, status, comparator, unit, code)


def sent_unit(value: str, seps: Separators) -> str:
    """The unit an OBX-6 names: its identifier, else its text (`^umol/L`); "" for none."""
    return first(value, seps) or next((c for c in components(value, seps)[1:2] if c), "")


def _value(value: str, kind: str, seps: Separators, code: str) -> tuple[str, float]:
    """(comparator, number) of OBX-5: NM `94.1`, SN `^94.1` / `<^10`, or a text `<10`."""
    if seps.component not in value and seps.escape not in value:
        text = value.strip()
        if _NUMBER.fullmatch(text):
            return "", float(text)          # the usual case
    if seps.repetition in value and any(r.strip() for r in value.split(seps.repetition)[1:]):
        raise HL7Error(f"OBX-5 {value!r} of {code} holds several values, not one",
                       DATA_TYPE_ERROR)
    if seps.component in value and kind in ("SN", "", "NM", "ST"):
        parts = value.split(seps.repetition, 1)[0].split(seps.component)
        if seps.escape and seps.escape in value:     # components are unescaped once split
            parts = [unescape(p, seps) for p in parts]
        comparator = parts[0].strip()
        if len(parts) > 2 and any(p.strip() for p in parts[2:]):
            raise HL7Error(f"OBX-5 {value!r} of {code} is a range or ratio, not one value",
                           DATA_TYPE_ERROR)
        text = parts[1].strip() if len(parts) > 1 else ""
        if comparator and comparator not in _COMPARATORS:
            raise HL7Error(f"OBX-5 comparator {comparator!r} of {code} is not one of "
                           f"{' '.join(_COMPARATORS)}", TABLE_VALUE_NOT_FOUND)
    else:
        text = first(value, seps)
        comparator = ""
        for c in _COMPARATORS:
            if text.startswith(c):
                comparator, text = c, text[len(c):].strip()
                break
    if not _NUMBER.fullmatch(text):
        raise HL7Error(f"OBX-5 creatinine {value!r} of {code} is not a number", DATA_TYPE_ERROR)
    return ("" if comparator == "=" else comparator), float(text)

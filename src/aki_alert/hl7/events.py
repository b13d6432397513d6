"""What a message means to the service: one event per message, read by `parse.parse`."""

from __future__ import annotations

from dataclasses import dataclass


# HL7 table 0357 (message error condition codes) as the service uses them in an ERR segment.
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
SEGMENT_SEQUENCE_ERROR = "100"
APPLICATION_INTERNAL_ERROR = "207"


class HL7Error(ValueError):
    """A message that can never be processed, with the reason an operator reads.

    `code`: the HL7 table 0357 error code an `hl7` NACK policy answers with (ERR-3);
    `reject`: the message cannot even be read as HL7 (AR rather than AE); `mrn`: the patient
    number the reason quotes, if any, so that a log line can hide it (logs.py)."""

    def __init__(self, reason: str, code: str = APPLICATION_INTERNAL_ERROR,
                 reject: bool = False, mrn: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reject = reject
        self.mrn = mrn


@dataclass(frozen=True, slots=True)
class Admission:
    mrn: str
    name: str
    birth: int | None   # seconds at midnight of the date of birth
    sex: str | None     # "M" / "F"
    time: int | None    # MSH-7


@dataclass(frozen=True, slots=True)
class Update:
    """ADT^A08 / A31: the patient's demographics changed (no admission). A field the message
    leaves empty (name "", birth or sex None) is not sent, and keeps its known value."""

    mrn: str
    name: str
    birth: int | None
    sex: str | None
    time: int | None


@dataclass(frozen=True, slots=True)
class Discharge:
    mrn: str
    time: int | None


@dataclass(frozen=True, slots=True)
class Merge:
    """ADT^A40 / A34 / A47: the patient once known as `old` is `mrn` from now on."""

    mrn: str            # the surviving number (PID-3)
    old: str            # the retired one (MRG-1)
    time: int | None


# OBX-11 result status, as the service acts on it (HL7 v2.5.1 table 0085). R (not verified)
# and S (partial) are preliminary; U (made final without resending) is final.
FINAL, CORRECTED, PRELIMINARY = "F", "C", "P"
WRONG_PATIENT, DELETED, NOT_OBTAINED = "W", "D", "X"


# Observation and Result are made for every result message: not frozen, since a frozen
# dataclass takes 2.5× as long to build (detect.Judgement measured the same).
@dataclass(slots=True)
class Observation:
    """One creatinine result of a message."""

    time: int           # its OBR-7 (else OBX-14), seconds
    time_text: str      # that time's 12 or 14 digits as sent: echoed in the page body
    value: float | None  # µmol/L; None only for W, D and X, which carry no usable value
    status: str         # one of the six above
    comparator: str = ""  # "<", ">", "<=" or ">=" for a censored value ("<10"): its bound
    unit: str = ""      # the unit converted from: OBX-6 as sent, else the code's default
    code: str = ""      # OBX-3's identifier


# What an OBX that is not judged is (Note.kind).
NOT_CREATININE = "not creatinine"   # another analyte
NOT_SERUM = "not serum"             # creatinine of urine or another fluid
UNNAMED = "unnamed creatinine"      # looks like creatinine, but the profile does not name it
CONFLICTING = "conflicting creatinine"  # named by the profile, but OBX-3 or the specimen says
                                        # it is not serum (urine, clearance, eGFR, a ratio)
PENDING = "pending"                 # creatinine without a result yet (OBX-11 I, O or N)


@dataclass(frozen=True, slots=True)
class Note:
    """An OBX that is not judged, and why."""

    code: str           # OBX-3 identifier (a code, never patient data)
    reason: str
    kind: str = NOT_CREATININE

    @property
    def suspicious(self) -> bool:
        """Creatinine that is not judged for a reason an operator must settle: the profile does
        not name it, or names it while the message says it is not serum."""
        return self.kind in (UNNAMED, CONFLICTING)


@dataclass(slots=True)
class Result:
    """An ORU^R01 with at least one creatinine observation."""

    mrn: str
    observations: tuple[Observation, ...]
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True, slots=True)
class Other:
    """A well-formed message the service does not act on, and why (another type, or a result
    without creatinine; `notes` then says what each OBX was)."""

    kind: str
    control_id: str
    reason: str = ""
    notes: tuple[Note, ...] = ()
    mrn: str | None = None      # a result message's patient, when its PID-3 could be read


Event = Admission | Update | Discharge | Merge | Result | Other

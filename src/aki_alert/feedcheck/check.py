"""What the service would do with each message of a file, offline: the decision per message
type, the outcome per OBX code × unit × status, and how PID-3 was read (counts only)."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from .. import hl7
from ..hl7.encoding import (
    Separators, components, first, segments,
)
from ..hl7.encoding import DEFAULT as DEFAULT_SEPARATORS
from ..hl7.encoding import field as hl7_field
from ..hl7.parse import (NO_RESULT_YET, each_obx, is_result_type, message_type, patient_id,
                         repetitions, sent_unit, split_message)

UNPARSEABLE = "unparseable"
APPLIED, IGNORED, DEAD = "applied", "ignored", "dead letter"

_STATUS_NAMES = {
    hl7.FINAL: "final", hl7.CORRECTED: "corrected", hl7.PRELIMINARY: "preliminary",
    hl7.WRONG_PATIENT: "wrong patient", hl7.DELETED: "deleted", hl7.NOT_OBTAINED: "not obtained",
}


class UsageError(Exception):
    """The check cannot run: the message says why (exit 2)."""


# --- what one message and one OBX come to ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ObxKey:
    code: str
    system: str
    text: str
    unit: str       # OBX-6 as sent ("" when empty)
    status: str     # OBX-11 as sent, upper case ("" when empty: final)
    alternate: str = ""   # OBX-3's alternate identifier^system, when sent


@dataclass(frozen=True, slots=True)
class ObxOutcome:
    what: str               # what happens, for an integration engineer
    creatinine: bool        # the profile names the code as creatinine
    judged: bool            # it would be judged (paged on if positive)
    problem: bool           # looks like creatinine, and would not be judged


@dataclass
class Report:
    file: str
    profile: hl7.FeedProfile
    profile_path: str
    messages: int = 0
    seconds: float = 0.0
    decisions: Counter = field(default_factory=Counter)     # (type, outcome, reason) -> n
    obx: Counter = field(default_factory=Counter)           # (ObxKey, ObxOutcome) -> n
    ids: Counter = field(default_factory=Counter)           # patient-number statistic -> n
    chosen: Counter = field(default_factory=Counter)        # (type, authority) -> n

    @property
    def not_judged(self) -> int:
        """Creatinine-looking results that would not be judged."""
        return sum(n for (_, o), n in self.obx.items() if o.problem)

    @property
    def judged(self) -> int:
        return sum(n for (_, o), n in self.obx.items() if o.judged)

    @property
    def exit_code(self) -> int:
        return 1 if self.not_judged else 0


def check_items(raws, profile: hl7.FeedProfile = hl7.DEFAULT_PROFILE, file: str = "",
                profile_path: str = "") -> Report:
    """The report on the payloads `raws` (bytes, without MLLP framing)."""
    started = time.perf_counter()
    report = Report(file, profile, profile_path)
    plain = replace(profile, strip_leading_zeros=False, upper_case=False)
    for raw in raws:
        report.messages += 1
        _check_one(raw, profile, plain, report)
    report.seconds = time.perf_counter() - started
    return report


def check_file(path: str, profile: hl7.FeedProfile = hl7.DEFAULT_PROFILE,
               profile_path: str = "") -> Report:
    from ..replay import read_items

    try:
        items = read_items(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    if not items:
        raise UsageError(f"{path} holds no messages (expected MLLP frames, or text with one "
                         "message per line or per blank-line block)")
    return check_items((it.raw for it in items), profile, path, profile_path)


def _header(raw: bytes) -> tuple[str, Separators, list[list[str]]] | None:
    """(message type, separators, segments) when the MSH header can be read, else None."""
    try:
        seps, segs = split_message(raw)
    except hl7.HL7Error:
        return None
    return message_type(segs[0], seps) or "(empty MSH-9)", seps, segs


def _check_one(raw: bytes, profile: hl7.FeedProfile, plain: hl7.FeedProfile,
               report: Report) -> None:
    head = _header(raw)
    parsed = hl7.parse_outcome(raw, profile)      # a parser failure too: what the service does
    event, error = (None, parsed) if isinstance(parsed, hl7.HL7Error) else (parsed, None)
    kind = head[0] if head is not None else UNPARSEABLE
    if error is not None:
        outcome, reason = DEAD, group_reason(str(error))
    else:
        outcome, reason = _decision(event, profile)
    report.decisions[(kind, outcome, reason)] += 1
    if head is None:
        # No header to split by: if OBX segments are there all the same (a message cut in two),
        # its creatinine results are lost with it, and that must show.
        text = raw.decode("utf-8", "replace")
        if "OBX" not in text:
            return
        seps, segs = DEFAULT_SEPARATORS, [["(none)"]] + segments(text, "|")
    else:
        _, seps, segs = head
        _patient_numbers(segs, seps, profile, plain, report)
    if head is not None and not is_result_type(kind):
        # Only ORU and OUL messages are read for results: a creatinine in another type (an ADT
        # carrying OBX segments …) is never judged, and the service does not say so.
        if not any(seg[0].strip() == "OBX" for seg in segs[1:]):
            return
        elsewhere = f"NOT JUDGED: {kind} messages are not read for results"
        for obx, read in each_obx(segs, seps, profile):
            key = _obx_key(obx, seps)
            if isinstance(read, hl7.Note) and not read.suspicious:
                got = _obx_outcome(read, profile, None, key)
            else:
                got = ObxOutcome(elsewhere, not isinstance(read, hl7.Note), False, True)
            report.obx[(key, got)] += 1
        return
    dead = reason if outcome == DEAD else None
    for obx, read in each_obx(segs, seps, profile):
        key = _obx_key(obx, seps)
        report.obx[(key, _obx_outcome(read, profile, dead, key))] += 1


def _decision(event: hl7.Event, profile: hl7.FeedProfile) -> tuple[str, str]:
    """(outcome, reason) of a message that parsed, as Ingest would decide it on its own."""
    if isinstance(event, hl7.Result):
        statuses = {o.status for o in event.observations}
        prelim = hl7.PRELIMINARY in statuses
        effects = []
        if statuses & {hl7.FINAL, hl7.CORRECTED} or (prelim and profile.preliminary == "judge"):
            effects.append("creatinine judged")
        if prelim and profile.preliminary == "store":
            effects.append("preliminary creatinine stored, judged once final")
        if statuses & {hl7.WRONG_PATIENT, hl7.DELETED}:
            effects.append("withdrawn creatinine (W/D) removed from the baseline")
        if not effects:
            return IGNORED, "creatinine not obtained (OBX-11 X): nothing to judge"
        return APPLIED, "; ".join(effects)
    if isinstance(event, hl7.Admission):
        return APPLIED, "admission: patient and demographics stored"
    if isinstance(event, hl7.Update):
        return APPLIED, "demographics updated"
    if isinstance(event, hl7.Discharge):
        return APPLIED, "discharge"
    if isinstance(event, hl7.Merge):
        if event.old == event.mrn:
            return IGNORED, "merge of a number into itself"
        return APPLIED, "merge: MRG-1's results, admissions and episode move to PID-3's number"
    assert isinstance(event, hl7.Other)
    if not is_result_type(event.kind):
        return IGNORED, f"message type {event.kind} is not used"
    if any(n.suspicious for n in event.notes):
        return IGNORED, "a creatinine-looking OBX the profile does not name (NOT JUDGED)"
    if any(n.kind == hl7.PENDING for n in event.notes):
        return IGNORED, "creatinine not resulted yet (OBX-11 I/O/N)"
    return IGNORED, "no creatinine OBX"


def _obx_key(obx: list[str], seps: Separators) -> ObxKey:
    ident = hl7_field(obx, 3)
    alternate = ""
    if seps.component in ident:
        parts = components(ident, seps) + [""] * 6
        code, text, system = parts[0], parts[1], parts[2]
        if parts[3]:
            alternate = " ".join(p for p in (parts[3], parts[5]) if p)
    else:
        code, text, system = first(ident, seps), "", ""
    return ObxKey(code, system, text, sent_unit(hl7_field(obx, 6), seps),
                  first(hl7_field(obx, 11), seps).upper(), alternate)


def _obx_outcome(read, profile: hl7.FeedProfile, dead: str | None, key: ObxKey
                 ) -> ObxOutcome:
    if isinstance(read, hl7.HL7Error):      # only a code the profile names gets this far
        return ObxOutcome(f"DEAD LETTER: {obx_error(str(read))}", True, False, True)
    if isinstance(read, hl7.Note):
        if read.kind == hl7.CONFLICTING:
            return ObxOutcome(f"NOT JUDGED: {read.reason}", True, False, True)
        if read.suspicious:
            return ObxOutcome("NOT JUDGED: looks like creatinine but the profile does not name "
                              "it", False, False, True)
        if read.kind == hl7.NOT_CREATININE:
            return ObxOutcome("ignored: not creatinine", False, False, False)
        if read.kind == hl7.PENDING:
            why = f"{key.status}: {NO_RESULT_YET[key.status]}"
            return ObxOutcome(f"creatinine, no result yet: OBX-11 {why}", True, False, False)
        return ObxOutcome(f"ignored: {read.reason}", False, False, False)
    obs: hl7.Observation = read
    if dead is not None:
        return ObxOutcome(f"NOT JUDGED: its message is a dead letter ({dead})", True, False,
                          obs.status not in (hl7.WRONG_PATIENT, hl7.DELETED, hl7.NOT_OBTAINED))
    if obs.status == hl7.NOT_OBTAINED:
        return ObxOutcome("creatinine not obtained (X): never pages", True, False, False)
    if obs.status in (hl7.WRONG_PATIENT, hl7.DELETED):
        return ObxOutcome(f"creatinine {_STATUS_NAMES[obs.status]} ({obs.status}): removed from "
                          "the baseline, never pages", True, False, False)
    if obs.value is None:
        return ObxOutcome("creatinine made final (U) without a value: the result stored for "
                          "that sample is judged as final", True, True, False)
    unit = _unit_text(obs, profile, key.unit)
    if obs.status == hl7.CORRECTED:
        return ObxOutcome(f"judged as creatinine, {unit}; corrects the stored value (C)",
                          True, True, False)
    if obs.status == hl7.PRELIMINARY:
        if profile.preliminary == "store":
            return ObxOutcome(f"creatinine preliminary (P): stored, judged once final, {unit}",
                              True, False, False)
        return ObxOutcome(f"judged as creatinine, {unit}; preliminary (P), a later F replaces it",
                          True, True, False)
    return ObxOutcome(f"judged as creatinine, {unit}", True, True, False)


def _unit_text(obs: hl7.Observation, profile: hl7.FeedProfile, sent: str) -> str:
    factor = profile.factor(obs.unit)
    text = "µmol/L" if factor == 1.0 else f"converted from {obs.unit} (×{factor:g})"
    return text if sent else f"{text} (OBX-6 empty: the code's default unit)"


# --- reasons without patient data --------------------------------------------------------------

# A quoted value in a parser's reason that may be patient data (an MRN, a date of birth, a
# value, a sample time) is hidden; the ones that describe the interface (a unit, a status,
# separators, a comparator) are kept.
_QUOTED = re.compile(r"""(MRN |birth |time |creatinine |OBX-5 )('[^']*'|"[^"]*")""")
_OUTSIDE = re.compile(r"OBX-5 creatinine \S+ (.*?) \(\S+ µmol/L\) is outside")


def group_reason(reason: str) -> str:
    """A dead letter's reason with what may be patient data taken out, so reasons group."""
    reason = _OUTSIDE.sub(r"OBX-5 creatinine in \1 is outside", reason)
    return _QUOTED.sub(r"\1'…'", reason)


def obx_error(reason: str) -> str:
    """A creatinine OBX's dead-letter reason, short."""
    m = re.search(r"unit ('[^']*'|\"[^\"]*\") of .* is not known", reason)
    if m:
        return f"unit {m.group(1)} unknown (add it under [units] in the profile)"
    if "has no unit" in reason:
        return "no unit in OBX-6 and none in the profile for this code"
    if "is not a number" in reason:
        return "OBX-5 value is not a number"
    if "is outside" in reason:
        return "OBX-5 value outside the plausible range after conversion"
    if "sample time" in reason:
        return "no usable sample time (OBR-7, else OBX-14)"
    if "range or ratio" in reason:
        return "OBX-5 is a range or ratio, not one value"
    return group_reason(reason)


# --- patient numbers ---------------------------------------------------------------------------

def _patient_numbers(segs: list[list[str]], seps: Separators, profile: hl7.FeedProfile,
                     plain: hl7.FeedProfile, report: Report) -> None:
    pid = next((s for s in segs[1:] if s[0].strip() == "PID"), None)
    if pid is None:
        return
    ids = report.ids
    value = hl7_field(pid, 3)
    ids["with PID-3"] += 1
    reps = repetitions(value, seps)
    if len(reps) > 1:
        ids["several identifiers in PID-3"] += 1
    if reps and (reps[0][2] == "NH" or reps[0][1] in ("NHS", "NH")):
        ids["NHS number first in PID-3"] += 1
    try:
        raw = patient_id(value, seps, plain, "PID-3")
        mrn = patient_id(value, seps, profile, "PID-3")
    except hl7.HL7Error:
        ids["no usable patient number (dead letter)"] += 1
        return
    chosen = next(((kind, auth) for ident, auth, kind in reps if ident == raw), ("", ""))
    report.chosen[chosen] += 1
    if chosen[0] == "NH" or chosen[1] in ("NHS", "NH") or (not chosen[0] and _nhs_number(mrn)):
        ids["patient number looks like an NHS number"] += 1
    if raw != mrn:
        ids["changed by normalisation"] += 1


def _nhs_number(s: str) -> bool:
    """Ten digits with a valid Modulus 11 check digit."""
    if len(s) != 10 or not s.isdigit() or not s.isascii():
        return False
    check = 11 - sum(int(d) * w for d, w in zip(s[:9], range(10, 1, -1), strict=True)) % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(s[9])

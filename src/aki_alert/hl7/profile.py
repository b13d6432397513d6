"""A feed profile: what one hospital's interface means (FEED_PROFILE, a TOML file).

It says which observation codes are serum or plasma creatinine and in which unit they come
when OBX-6 is empty, how units convert to µmol/L, how the patient's number is picked from
PID-3's repetitions and normalised, and what a preliminary result does. The default profile
is the assessment hospital's contract (`CREATININE` in µmol/L, one MRN in PID-3) plus the
LOINC codes for creatinine in serum, plasma or blood, so it also reads a LOINC-coded lab.

    name = "St Elsewhere LIMS"
    preliminary = "judge"              # or "store": kept as baseline, judged once final
    [patient]
    identifier_types = ["MR"]          # PID-3 repetition types, in order of preference
    assigning_authorities = ["RVJ"]    # only repetitions from these (empty: any)
    strip_leading_zeros = true         # "0001001" is "1001"
    upper_case = true                  # "rvj1001" is "RVJ1001"
    [[creatinine]]
    code = "CREA"                      # OBX-3 identifier (or alternate identifier)
    system = "L"                       # its coding system ("" or absent: any)
    unit = "umol/L"                    # the unit when OBX-6 is empty ("" : OBX-6 required)
    [units]
    "umol/L(SI)" = 1.0                 # a unit this lab spells its own way, to µmol/L

The profile is a frozen value, built once at start; the per-OBX lookups are dict reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import events

# The µmol/L equivalent of one unit of each. Creatinine's molar mass is 113.12 g/mol, so
# 1 mg/dL = 10 mg/L / 113.12 g/mol = 88.4 µmol/L (the factor labs use).
MG_DL = 88.4
UNITS: dict[str, float] = {
    "umol/l": 1.0, "micromol/l": 1.0, "mmol/l": 1000.0, "mg/dl": MG_DL, "mg/l": MG_DL / 10,
    "mg/100ml": MG_DL,
}

LOINC = "LN"
# Coding systems by the names labs send for them.
_SYSTEM_ALIASES = {"LN": LOINC, "LOINC": LOINC, "HTTP://LOINC.ORG": LOINC, "2.16.840.1.113883.6.1":
                   LOINC}


@dataclass(frozen=True, slots=True)
class Code:
    code: str           # upper case
    system: str = ""    # upper case, aliases resolved; "" matches any system
    unit: str = ""      # default unit (a key of the profile's units); "" means OBX-6 required


# Creatinine in serum, plasma or blood, by mass and by moles; never urine or clearance.
DEFAULT_CODES = (
    Code("CREATININE", "", "umol/l"),       # the assessment hospital's contract
    Code("2160-0", LOINC, "mg/dl"),         # Creatinine [Mass/volume] in Serum or Plasma
    Code("38483-4", LOINC, "mg/dl"),        # Creatinine [Mass/volume] in Blood
    Code("21232-4", LOINC, "mg/dl"),        # Creatinine [Mass/volume] in Arterial blood
    Code("14682-9", LOINC, "umol/l"),       # Creatinine [Moles/volume] in Serum or Plasma
    Code("59826-8", LOINC, "umol/l"),       # Creatinine [Moles/volume] in Blood
    Code("77140-2", LOINC, "umol/l"),       # Creatinine [Moles/volume] in Serum, Plasma or Blood
)

# Codes that mention creatinine but are not serum creatinine: recorded, never warned about.
NOT_SERUM = {
    "2161-8": "urine creatinine", "14683-7": "urine creatinine", "2162-6": "urine creatinine",
    "20624-3": "urine creatinine", "35674-1": "urine creatinine", "2164-2": "creatinine clearance",
    "33914-3": "eGFR", "48642-3": "eGFR", "48643-1": "eGFR", "62238-1": "eGFR", "98979-8": "eGFR",
    "50044-7": "eGFR", "69405-9": "eGFR", "88293-6": "eGFR", "88294-4": "eGFR",
    "14959-1": "albumin/creatinine ratio", "9318-7": "albumin/creatinine ratio",
    "2890-2": "protein/creatinine ratio",
}
# Words that say an analyte is not serum creatinine, as words: "concentration" holds RATIO and
# "during" URIN, and neither may veto a serum creatinine the profile names.
_NOT_SERUM_WORDS = re.compile(r"\bURIN|\bCLEAR|GFR\b|\bRATIO|/CREA|\bACR\b|\bPCR\b|\b24 ?HR?\b")
# Serum creatinine in other code systems (UK Read v2 and CTV3, SNOMED CT): a result coded so
# is creatinine the profile has not named, so it is warned about, not judged.
OTHER_SYSTEM_CREATININE = {"44J3.", "44J30", "XE2Q5", "113075003", "70901006"}
PRELIMINARY_POLICIES = ("judge", "store")


def unit_key(unit: str) -> str:
    """A unit as the profile's table spells it: lower case, µ/μ as u, no spaces."""
    return unit.strip().lower().replace("µ", "u").replace("μ", "u").replace(" ", "")


def system_key(system: str) -> str:
    s = system.strip().upper()
    return _SYSTEM_ALIASES.get(s, s)


@dataclass(frozen=True)
class FeedProfile:
    name: str = "assessment hospital (contract)"
    codes: tuple[Code, ...] = DEFAULT_CODES
    units: dict[str, float] = field(default_factory=lambda: dict(UNITS))
    identifier_types: tuple[str, ...] = ("MR",)
    assigning_authorities: tuple[str, ...] = ()
    strip_leading_zeros: bool = False
    upper_case: bool = False
    preliminary: str = "judge"
    _by_code: dict[str, tuple[Code, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_code: dict[str, tuple[Code, ...]] = {}
        for c in self.codes:
            by_code[c.code] = by_code.get(c.code, ()) + (c,)
        object.__setattr__(self, "_by_code", by_code)

    def creatinine(self, code: str, system: str) -> Code | None:
        """The profile's entry for an OBX-3 identifier and its coding system, if any."""
        entries = self._by_code.get(code.upper())
        if entries is None:
            return None
        sys = system_key(system) if system else ""
        for c in entries:
            if not c.system or not sys or c.system == sys:
                return c
        return None

    def normalise(self, mrn: str) -> str:
        """A patient number as this hospital's numbers compare: without leading zeros and in
        upper case when the profile says so (the feed's and the history's alike)."""
        if self.strip_leading_zeros:
            mrn = mrn.lstrip("0") or mrn[-1:]
        return mrn.upper() if self.upper_case else mrn

    def factor(self, unit: str) -> float | None:
        """µmol/L per one `unit`; None for a unit the profile does not know."""
        factor = self.units.get(unit)       # a code's default unit is spelled as the table's
        return factor if factor is not None else self.units.get(unit_key(unit))


DEFAULT_PROFILE = FeedProfile()


def not_serum(code: str, text: str = "") -> str | None:
    """What an OBX-3 identifier or its text says the analyte is when that is plainly not serum
    creatinine (urine creatinine, clearance, eGFR, a ratio): the code's name, "its text says
    so", or None."""
    key = code.upper()
    if key in NOT_SERUM:
        return f"{NOT_SERUM[key]} ({code})"
    if _NOT_SERUM_WORDS.search(f"{key} {text.upper()}"):
        return f"{code} ({text})" if text else code
    return None


def not_creatinine(code: str, text: str) -> tuple[str, str]:
    """Why an OBX the profile does not name as creatinine is not judged, and what it is (a
    Note kind: UNNAMED when it looks like creatinine all the same, and an operator must hear)."""
    key = code.upper()
    if key in NOT_SERUM:
        return f"{NOT_SERUM[key]} ({code}), not serum creatinine", events.NOT_SERUM
    words = f"{key} {text.upper()}"
    if key in OTHER_SYSTEM_CREATININE or "CREA" in words or "KREA" in words:
        if not_serum(code, text):
            return f"{code} mentions creatinine but is not serum creatinine", events.NOT_SERUM
        return (f"{code} ({text}) looks like creatinine but the feed profile does not name it"
                if text else f"{code} looks like creatinine but the feed profile does not name it"
                ), events.UNNAMED
    return f"{code} is not creatinine", events.NOT_CREATININE


class ProfileError(ValueError):
    """A feed profile file that cannot be used, with where and why."""


_KEYS = {"name", "preliminary", "patient", "creatinine", "units"}
_PATIENT_KEYS = {"identifier_types", "assigning_authorities", "strip_leading_zeros", "upper_case"}


def load_profile(path: str) -> FeedProfile:
    """Read a profile file; "" (FEED_PROFILE unset) is the default profile. Its codes and
    units add to the defaults (a trust's local code beside LOINC); `replace_codes = true` at
    the top makes its codes the only ones."""
    import tomllib

    if not path:
        return DEFAULT_PROFILE

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ProfileError(f"feed profile {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"feed profile {path} is not valid TOML: {e}") from e
    return profile_from(doc, path)


def profile_from(doc: dict, where: str = "feed profile") -> FeedProfile:
    unknown = set(doc) - _KEYS - {"replace_codes"}
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(_KEYS | {'replace_codes'}))}")
    units = dict(UNITS)
    for unit, factor in doc.get("units", {}).items():
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
            raise ProfileError(f"{where}: [units] {unit!r} must be a positive number "
                               f"(µmol/L per unit), e.g. \"mg/dL\" = 88.4")
        units[unit_key(unit)] = float(factor)
    codes = [] if doc.get("replace_codes") else list(DEFAULT_CODES)
    for i, entry in enumerate(doc.get("creatinine", [])):
        at = f"{where}: [[creatinine]] entry {i + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("code"), str) \
                or not entry["code"].strip():
            raise ProfileError(f"{at} needs a code, e.g. code = \"CREA\"")
        extra = set(entry) - {"code", "system", "unit"}
        if extra:
            raise ProfileError(f"{at}: unknown key(s) {', '.join(sorted(extra))}")
        unit = unit_key(str(entry.get("unit", "")))
        if unit and unit not in units:
            raise ProfileError(f"{at}: unit {entry['unit']!r} is not known; add it under [units]")
        codes.append(Code(entry["code"].strip().upper(), system_key(str(entry.get("system", ""))),
                          unit))
    if not codes:
        raise ProfileError(f"{where}: no creatinine codes (replace_codes = true and no entries)")
    patient = doc.get("patient", {})
    extra = set(patient) - _PATIENT_KEYS
    if extra:
        raise ProfileError(f"{where}: [patient] unknown key(s) {', '.join(sorted(extra))}")
    preliminary = doc.get("preliminary", "judge")
    if preliminary not in PRELIMINARY_POLICIES:
        raise ProfileError(f"{where}: preliminary must be one of {PRELIMINARY_POLICIES}, "
                           f"not {preliminary!r}")

    def strings(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = patient.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f"{where}: [patient] {key} must be a list of strings")
        return tuple(v.strip().upper() for v in value)

    def flag(key: str) -> bool:
        value = patient.get(key, False)
        if not isinstance(value, bool):
            raise ProfileError(f"{where}: [patient] {key} must be true or false")
        return value

    return FeedProfile(
        name=str(doc.get("name", where)), codes=tuple(codes), units=units,
        identifier_types=strings("identifier_types", ("MR",)),
        assigning_authorities=strings("assigning_authorities", ()),
        strip_leading_zeros=flag("strip_leading_zeros"), upper_case=flag("upper_case"),
        preliminary=preliminary)

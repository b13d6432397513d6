"""What a medical record number (MRN) may be, everywhere the service reads one: the feed's PID-3,
a merge's MRG-1, the history CSV, the console's URLs.

MRNs are strings end to end. The assessment hospital sends plain integers of varying width;
NHS trusts often send alphanumeric hospital numbers (`RVJ1001`, `K0012345`). A page body is
`MRN,YYYYMMDDHHMMSS`, so an MRN can never hold a comma; it also goes into URLs and log lines,
so it is kept to ASCII letters, digits and `-`, at most MAX_MRN_LENGTH characters.
"""

from __future__ import annotations

import re

MAX_MRN_LENGTH = 32
_MRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,%d}" % (MAX_MRN_LENGTH - 1))


def is_valid_mrn(mrn: str) -> bool:
    """True for an MRN the service can store, page and link to."""
    if mrn.isdigit() and mrn.isascii():        # the usual case, without the regex
        return len(mrn) <= MAX_MRN_LENGTH
    return _MRN.fullmatch(mrn) is not None


def mrn_problem(mrn: str) -> str:
    """Why `mrn` is not valid, for an operator's log line or dead letter."""
    if not mrn:
        return "is empty"
    if len(mrn) > MAX_MRN_LENGTH:
        return f"is longer than {MAX_MRN_LENGTH} characters"
    return "holds characters other than ASCII letters, digits and '-'"

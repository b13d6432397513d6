"""A result for a sample time at which the patient already has one: a repeat, or a revision.

A patient has one result per sample time. Another for the same time replaces it, and is judged
again, when it corrects it (OBX-11 C) or follows a preliminary one; anything else is a repeat
that changes nothing (the same result re-sent in other bytes). The service (ingest.py) and the
offline reference (offline.py) both ask `is_repeat`.
"""

from __future__ import annotations

from . import hl7


def is_repeat(status: str, held_status: str) -> bool:
    """Whether a result with OBX-11 `status`, for a sample time at which the patient has one
    with status `held_status`, is a repeat that changes nothing."""
    return status != hl7.CORRECTED and held_status != hl7.PRELIMINARY

"""A result for a sample time at which the patient already has one: a repeat, or a revision.

A patient has one result per sample time. Another for the same time replaces it, and is judged
again, when it corrects it (OBX-11 C), follows a preliminary one, or carries another value (a
lab that revises a result without marking it C: its latest word stands, and the service warns).
The same value again is a repeat that changes nothing (the same result re-sent in other bytes),
and so is anything but another C after a correction: a final re-sent late must not undo it.
The service (ingest.py) and the offline reference (offline.py) both ask `is_repeat`.
"""

from __future__ import annotations

from . import hl7


def is_repeat(status: str, held_status: str, value: float, held_value: float) -> bool:
    """Whether a result with OBX-11 `status` and `value`, for a sample time at which the
    patient has one with `held_status` and `held_value`, is a repeat that changes nothing."""
    if status == hl7.CORRECTED or held_status == hl7.PRELIMINARY:
        return False
    return held_status == hl7.CORRECTED or value == held_value


def is_unmarked_revision(status: str, held_status: str) -> bool:
    """Of results that are no repeat: one that replaces the held result without saying so
    (neither a correction nor the final of a preliminary)."""
    return status != hl7.CORRECTED and held_status != hl7.PRELIMINARY

"""HL7 v2 as the service reads and answers it.

- `encoding`: separators (MSH-1/MSH-2), segments, components, escape sequences;
- `profile`: the feed profile, what one hospital's codes, units and identifiers mean;
- `parse`: a message into an event (`events`), as a profile reads it;
- `ack`: the acknowledgement.
"""

from .ack import (NACK_POLICIES, ack, acknowledgement, nack_acknowledgement,
                  verdict)
from .events import (
    CONFLICTING, CORRECTED, DELETED, FINAL, NOT_CREATININE, NOT_OBTAINED, NOT_SERUM, PENDING,
    PRELIMINARY, UNNAMED, WRONG_PATIENT, Admission, Discharge, Event, HL7Error, Merge, Note,
    Observation, Other, Result, Update,
)
from .parse import (MAX_CREATININE, MIN_CREATININE, is_result_type, message_type, parse,
                    parse_outcome, split_message)
from .profile import DEFAULT_PROFILE, FeedProfile, ProfileError, load_profile

__all__ = [
    "ack", "acknowledgement", "verdict", "nack_acknowledgement", "NACK_POLICIES",
    "parse", "parse_outcome", "split_message", "message_type", "is_result_type", "MIN_CREATININE",
    "MAX_CREATININE", "Admission", "Update", "Discharge", "Merge", "Result", "Observation",
    "Note", "Other", "Event", "HL7Error", "FeedProfile", "DEFAULT_PROFILE", "ProfileError",
    "load_profile", "FINAL", "CORRECTED", "PRELIMINARY", "WRONG_PATIENT", "DELETED",
    "NOT_OBTAINED", "NOT_CREATININE", "NOT_SERUM", "UNNAMED", "CONFLICTING", "PENDING",
]

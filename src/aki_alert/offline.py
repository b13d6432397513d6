"""The service's decisions computed offline: the same parsing, detector and episode rule over
a history file and a recorded stream, with no sockets and no state. The reference a live run's
pages are compared with."""

from __future__ import annotations

from bisect import bisect_left

from . import hl7
from .detect import Detector, Patient
from .episodes import episode_start_after, opens_episode
from .history import ImportSummary, read_history


def offline_pages(history_path: str | None, messages: list[bytes], detector: Detector) -> list[str]:
    """The page bodies (`MRN,time`) the service would send for this stream, in order."""
    patients: dict[str, Patient] = {}
    episodes: dict[str, int] = {}
    if history_path:
        for mrn, t, v in read_history(history_path, ImportSummary()):
            p = patients.setdefault(mrn, Patient(mrn))
            i = bisect_left(p.times, t)
            if i == len(p.times) or p.times[i] != t:
                p.times.insert(i, t)
                p.values.insert(i, v)
    pages: list[str] = []
    preliminary: set[tuple[str, int]] = set()
    seen: set[bytes] = set()
    for raw in messages:
        if raw in seen:
            continue
        seen.add(raw)
        try:
            event = hl7.parse(raw)
        except hl7.HL7Error:
            continue
        if isinstance(event, (hl7.Admission, hl7.Update)):
            p = patients.setdefault(event.mrn, Patient(event.mrn))
            p.birth, p.sex = event.birth, event.sex
        elif isinstance(event, hl7.Result):
            p = patients.setdefault(event.mrn, Patient(event.mrn))
            for obs in event.observations:
                _observation(p, obs, detector, episodes, preliminary, pages)
    return pages


def _observation(p: Patient, obs: hl7.Observation, detector: Detector, episodes: dict[str, int],
                 preliminary: set[tuple[str, int]], pages: list[str]) -> None:
    """One observation as the service takes it (default profile): a new result, or a
    correction (or a result after a preliminary) judged again; W and D leave the baseline;
    X and a repeat change nothing."""
    i = bisect_left(p.times, obs.time)
    present = i < len(p.times) and p.times[i] == obs.time
    key = (p.mrn, obs.time)
    if obs.status in (hl7.WRONG_PATIENT, hl7.DELETED):
        if present:
            del p.times[i], p.values[i]
            if episodes.get(p.mrn) == obs.time:
                del episodes[p.mrn]
        return
    if obs.value is None or (present and obs.status != hl7.CORRECTED and key not in preliminary):
        return
    if obs.status == hl7.PRELIMINARY:
        preliminary.add(key)
    else:
        preliminary.discard(key)
    j = detector.judge(p, obs.time, obs.value)
    if present and not j.positive and episodes.get(p.mrn) == obs.time:
        del episodes[p.mrn]         # the paged result corrected to no injury: episode closed
    if j.positive and opens_episode(episodes.get(p.mrn), obs.time):
        episodes[p.mrn] = episode_start_after(episodes.get(p.mrn), obs.time)
        pages.append(f"{p.mrn},{obs.time_text}")
    if present:
        p.values[i] = obs.value
    else:
        p.times.insert(i, obs.time)
        p.values.insert(i, obs.value)

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
    seen: set[bytes] = set()
    for raw in messages:
        if raw in seen:
            continue
        seen.add(raw)
        try:
            event = hl7.parse(raw)
        except hl7.HL7Error:
            continue
        if isinstance(event, hl7.Admission):
            p = patients.setdefault(event.mrn, Patient(event.mrn))
            p.birth, p.sex = event.birth, event.sex
        elif isinstance(event, hl7.Result):
            p = patients.setdefault(event.mrn, Patient(event.mrn))
            i = bisect_left(p.times, event.time)
            if i < len(p.times) and p.times[i] == event.time:
                continue
            j = detector.judge(p, event.time, event.value)
            if j.positive and opens_episode(episodes.get(event.mrn), event.time):
                episodes[event.mrn] = episode_start_after(episodes.get(event.mrn), event.time)
                pages.append(f"{event.mrn},{event.time_text}")
            p.times.insert(i, event.time)
            p.values.insert(i, event.value)
    return pages

"""When a positive result becomes a page: once per AKI episode.

An episode starts at the first positive result of a patient and lasts EPISODE_DAYS. Later
positive results inside that window are the same injury still showing (creatinine takes days to
weeks to fall back), so they are not paged again: the hospital scores one page per AKI, and a
repeated page for a known injury is noise that gets alerting switched off. A positive more than
EPISODE_DAYS after the episode started is a new episode and is paged. 90 days is the KDIGO
horizon of acute kidney disease, after which a rise is a new injury rather than the old one.
A result sampled before the episode's start (a late or replayed one) belongs to it when within
the same distance: the window is symmetric, and the episode's start never moves back.

When the result an episode runs from is withdrawn (OBX-11 W, D) or corrected to no injury, the
episode falls back to the patient's latest earlier page whose result still stands and still
reads as an injury (the first page of an episode that paged again), or ends. "Still reads as
an injury" is the detector's judgement of that result on the results before it as they are
now: a page whose own result, or whose baseline, was corrected since is not an injury to fall
back to.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from .detect import Detector, Patient
from .timeutil import DAY

EPISODE_DAYS = 90


def opens_episode(episode_start: int | None, time: int) -> bool:
    """True when a positive result at `time` starts a new episode (and so is paged)."""
    return episode_start is None or abs(time - episode_start) >= EPISODE_DAYS * DAY


def episode_start_after(episode_start: int | None, time: int) -> int:
    """The episode start to keep once a positive at `time` opened an episode."""
    return time if episode_start is None else max(episode_start, time)


def fallback_start(standing_pages: Iterable[int], time: int) -> int | None:
    """The episode start once the result at `time` that the episode ran from is withdrawn or
    corrected to no injury: the latest of `standing_pages` (the result times of the patient's
    pages that still stand: `standing_injuries`) before it; None (no episode) without one."""
    return max((t for t in standing_pages if t < time), default=None)


def standing_injuries(detector: Detector, patient: Patient, times: Iterable[int]
                      ) -> frozenset[int]:
    """Those of `times` whose results are in the patient's series and still judged an injury
    by `detector`, on the results before each as they are now."""
    standing = set()
    for t in times:
        i = bisect_left(patient.times, t)
        if i < len(patient.times) and patient.times[i] == t and \
                detector.judge(patient, t, patient.values[i]).positive:
            standing.add(t)
    return frozenset(standing)

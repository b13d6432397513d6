"""The service's decisions computed offline: the same parsing, detector, episode rule and
re-page policy over a history file and a recorded stream, with no sockets and no state. The
reference a live run's pages are compared with.

In two steps, so that the re-page policy can be tuned without judging the stream again:
`offline_events` judges every result once and keeps each positive (with the patient's earlier
results, which the policy reads) and each withdrawal; `decide` applies the episode rule and a
policy to them. The detector's judgements do not depend on what was paged."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import hl7
from .detect import Detector, Judgement, Patient
from .episodes import episode_start_after, opens_episode
from .history import ImportSummary, read_history
from .ingest import take_demographics
from .repage import PagedResult, Policy, policy_for, should_repage


@dataclass(frozen=True, slots=True)
class Positive:
    """A positive judgement, with the patient's results before it (what the policy reads)."""

    mrn: str
    time: int
    time_text: str
    value: float
    judgement: Judgement
    times: Sequence[int]
    values: Sequence[float]


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A result taken out of the patient's series (OBX-11 W or D) or corrected to no injury,
    and the sample times of the patient's other results left after it."""

    mrn: str
    time: int
    left: frozenset[int]


Event = Positive | Withdrawal


def offline_pages(history_path: str | None, messages: list[bytes], detector: Detector,
                  policy: Policy | None = None) -> list[str]:
    """The page bodies (`MRN,time`) the service would send for this stream, in order.
    `policy`: the re-page policy (default: the one shipped for this detector)."""
    return decide(offline_events(history_path, messages, detector),
                  policy_for(detector.name) if policy is None else policy)


def offline_events(history_path: str | None, messages: list[bytes],
                   detector: Detector) -> list[Event]:
    """Every positive judgement and every withdrawal of the stream, in order."""
    patients: dict[str, Patient] = {}
    if history_path:
        for mrn, t, v in read_history(history_path, ImportSummary()):
            p = patients.setdefault(mrn, Patient(mrn))
            i = bisect_left(p.times, t)
            if i == len(p.times) or p.times[i] != t:
                p.times.insert(i, t)
                p.values.insert(i, v)
    events: list[Event] = []
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
            take_demographics(patients.setdefault(event.mrn, Patient(event.mrn)), event)
        elif isinstance(event, hl7.Result):
            p = patients.setdefault(event.mrn, Patient(event.mrn))
            for obs in event.observations:
                _observation(p, obs, detector, preliminary, events)
    return events


def _observation(p: Patient, obs: hl7.Observation, detector: Detector,
                 preliminary: set[tuple[str, int]], events: list[Event]) -> None:
    """One observation as the service takes it (default profile): a new result, or a
    correction (or a result after a preliminary) judged again; W and D leave the baseline;
    X and a repeat change nothing."""
    i = bisect_left(p.times, obs.time)
    present = i < len(p.times) and p.times[i] == obs.time
    key = (p.mrn, obs.time)
    if obs.status in (hl7.WRONG_PATIENT, hl7.DELETED):
        if present:
            del p.times[i], p.values[i]
            events.append(Withdrawal(p.mrn, obs.time, frozenset(p.times)))
        return
    if obs.value is None or (present and obs.status != hl7.CORRECTED and key not in preliminary):
        return
    if obs.status == hl7.PRELIMINARY:
        preliminary.add(key)
    else:
        preliminary.discard(key)
    j = detector.judge(p, obs.time, obs.value)
    if j.positive:
        events.append(Positive(p.mrn, obs.time, obs.time_text, obs.value, j,
                               p.times[:i], p.values[:i]))
    elif present:
        # A correction to no injury: for the episode, as if its result were withdrawn.
        events.append(Withdrawal(p.mrn, obs.time, frozenset(p.times) - {obs.time}))
    if present:
        p.values[i] = obs.value
    else:
        p.times.insert(i, obs.time)
        p.values.insert(i, obs.value)


def decide(events: Iterable[Event], policy: Policy) -> list[str]:
    """The pages of these events under the episode rule and the re-page policy, as the
    service decides them (ingest.py `_judge`): a positive opening an episode pages; one inside
    it pages again when the policy says so, judged against the page of the episode's start."""
    episodes: dict[str, int] = {}
    paged: dict[str, dict[int, PagedResult]] = {}    # every page of each patient, by time
    pages: list[str] = []
    sent: set[str] = set()       # the outbox's bodies are unique: a body is queued once
    for e in events:
        if isinstance(e, Withdrawal):
            if episodes.get(e.mrn) == e.time:
                # Its page was for a withdrawn result: the episode is the patient's page
                # before it whose result still stands, if any.
                earlier = [t for t in paged.get(e.mrn, ()) if t < e.time and t in e.left]
                if earlier:
                    episodes[e.mrn] = max(earlier)
                else:
                    del episodes[e.mrn]
            continue
        start = episodes.get(e.mrn)
        if not opens_episode(start, e.time):
            page = paged.get(e.mrn, {}).get(start)  # type: ignore[arg-type]
            if page is None or not should_repage(policy, page, e.time, e.value, e.judgement,
                                                 e.times, e.values):
                continue
        episodes[e.mrn] = episode_start_after(start, e.time)
        body = f"{e.mrn},{e.time_text}"
        if body not in sent:
            sent.add(body)
            paged.setdefault(e.mrn, {})[e.time] = PagedResult.of(e.time, e.judgement)
            pages.append(body)
    return pages

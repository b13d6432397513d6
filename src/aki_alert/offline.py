"""The service's decisions computed offline: the same parsing, detector, episode rule, re-page
policy, rules for a repeated or revised result (revisions.py) and for merged patient numbers
(merges.py), over a history file and a recorded stream, with no sockets and no state. The
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
from .episodes import episode_start_after, fallback_start, opens_episode, standing_injuries
from .history import ImportSummary, read_history
from .ingest import take_demographics
from .merges import merged_episode, merged_fields, record_merge, retired
from .population import ROBUST, CreatinineCounts, choose
from .repage import PagedResult, Policy, policy_for, should_repage
from .revisions import is_repeat


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
    and the sample times of the patient's earlier positive results that still stand and still
    read as an injury (episodes.standing_injuries): what its episode may fall back to."""

    mrn: str
    time: int
    standing: frozenset[int]


@dataclass(frozen=True, slots=True)
class Merged:
    """The patient number `old` merged into `new` (ADT^A40 and kin): its pages and episode
    are `new`'s from now on."""

    old: str
    new: str


Event = Positive | Withdrawal | Merged


def served_model(history_path: str, robust: str = ROBUST) -> Detector:
    """The model a service with the default settings serves on a first start on this history
    (population.py: the default, or `robust` when the history shows another population)."""
    from .detect.model import MODELS_DIR, load_model

    counts = CreatinineCounts().add(v for _, _, v in read_history(history_path, ImportSummary()))
    return choose(load_model(), load_model(MODELS_DIR / robust), counts).detector


def offline_pages(history_path: str | None, messages: list[bytes], detector: Detector,
                  policy: Policy | None = None) -> list[str]:
    """The page bodies (`MRN,time`) the service would send for this stream, in order.
    `policy`: the re-page policy (default: the one shipped for this detector)."""
    return decide(offline_events(history_path, messages, detector),
                  policy_for(detector.name) if policy is None else policy)


def offline_events(history_path: str | None, messages: list[bytes],
                   detector: Detector) -> list[Event]:
    """Every positive judgement, withdrawal and merge of the stream, in order."""
    patients: dict[str, Patient] = {}
    # The OBX-11 status of each result of the feed, by patient and sample time (the history's
    # are final).
    statuses: dict[str, dict[int, str]] = {}
    aliases: dict[str, str] = {}      # numbers merged away, and the number each lives on as
    positives: dict[str, set[int]] = {}   # the sample times of each patient's positives
    if history_path:
        for mrn, t, v in read_history(history_path, ImportSummary()):
            p = patients.setdefault(mrn, Patient(mrn))
            i = bisect_left(p.times, t)
            if i == len(p.times) or p.times[i] != t:
                p.times.insert(i, t)
                p.values.insert(i, v)
    events: list[Event] = []
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
            mrn = aliases.get(event.mrn, event.mrn)
            take_demographics(patients.setdefault(mrn, Patient(mrn)), event)
        elif isinstance(event, hl7.Result):
            mrn = aliases.get(event.mrn, event.mrn)
            p = patients.setdefault(mrn, Patient(mrn))
            held = statuses.setdefault(mrn, {})
            mine = positives.setdefault(mrn, set())
            for obs in event.observations:
                _observation(p, held, mine, obs, detector, events)
        elif isinstance(event, hl7.Merge):
            new = aliases.get(event.mrn, event.mrn)
            old = retired(aliases, event.old, new)
            if old is not None:
                _merge(patients, statuses, old, new)
                positives.setdefault(new, set()).update(positives.pop(old, ()))
                record_merge(aliases, old, new)
                events.append(Merged(old, new))
    return events


def _observation(p: Patient, held: dict[int, str], positives: set[int], obs: hl7.Observation,
                 detector: Detector, events: list[Event]) -> None:
    """One observation as the service takes it (default profile): a new result, or a
    correction (or a result after a preliminary) judged again; W and D leave the baseline;
    X and a repeat change nothing. `held`: the statuses of the patient's feed results;
    `positives`: the sample times of its positive results."""
    i = bisect_left(p.times, obs.time)
    present = i < len(p.times) and p.times[i] == obs.time

    def withdrawn() -> Withdrawal:
        earlier = [t for t in positives if t < obs.time]
        return Withdrawal(p.mrn, obs.time, standing_injuries(detector, p, earlier))

    if obs.status in (hl7.WRONG_PATIENT, hl7.DELETED):
        if present:
            del p.times[i], p.values[i]
            held.pop(obs.time, None)
            events.append(withdrawn())
        return
    value = obs.value
    if value is None and obs.status == hl7.FINAL and present:
        value = p.values[i]            # OBX-11 U without a value: the stored one, made final
    if value is None or (present and is_repeat(obs.status, held.get(obs.time, hl7.FINAL),
                                               value, p.values[i])):
        return
    held[obs.time] = obs.status
    j = detector.judge(p, obs.time, value)
    if j.positive:
        positives.add(obs.time)
        events.append(Positive(p.mrn, obs.time, obs.time_text, value, j,
                               p.times[:i], p.values[:i]))
    elif present:
        # A correction to no injury: for the episode, as if its result were withdrawn.
        events.append(withdrawn())
    if present:
        p.values[i] = value
    else:
        p.times.insert(i, obs.time)
        p.values.insert(i, value)


def _merge(patients: dict[str, Patient], statuses: dict[str, dict[int, str]], old: str,
           new: str) -> None:
    """What the state's merge_patient does: `old`'s results move to `new` (at a sample time
    both have, `new`'s is kept), and its demographics where `new` has none."""
    was = patients.pop(old, None)
    was_held = statuses.pop(old, {})
    if was is None:
        return
    p = patients.setdefault(new, Patient(new))
    mine = set(p.times)
    statuses.setdefault(new, {}).update((t, s) for t, s in was_held.items() if t not in mine)
    series = dict(zip(was.times, was.values, strict=True))
    series.update(zip(p.times, p.values, strict=True))
    p.times[:] = sorted(series)
    p.values[:] = [series[t] for t in p.times]
    p.birth, p.sex = merged_fields((p.birth, p.sex), (was.birth, was.sex))


def decide(events: Iterable[Event], policy: Policy) -> list[str]:
    """The pages of these events under the episode rule and the re-page policy, as the
    service decides them (ingest.py `_judge`): a positive opening an episode pages; one inside
    it pages again when the policy says so, judged against the page of the episode's start."""
    episodes: dict[str, int] = {}
    paged: dict[str, dict[int, PagedResult]] = {}    # every page of each patient, by time
    pages: list[str] = []
    sent: set[str] = set()       # the outbox's bodies are unique: a body is queued once
    for e in events:
        if isinstance(e, Merged):
            start = merged_episode(episodes.pop(e.new, None), episodes.pop(e.old, None))
            if start is not None:
                episodes[e.new] = start
            paged[e.new] = paged.pop(e.old, {}) | paged.get(e.new, {})
            continue
        if isinstance(e, Withdrawal):
            if episodes.get(e.mrn) == e.time:
                # Its page was for a withdrawn result: the episode falls back, or ends.
                start = fallback_start((t for t in paged.get(e.mrn, ()) if t in e.standing),
                                       e.time)
                if start is not None:
                    episodes[e.mrn] = start
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

"""Apply one received message to the state as one unit, and decide whether to page.

`Ingest.apply(raw)` journals the bytes, parses them, updates the patient, judges a result and
queues a page in the outbox, all in one `store.transaction()`: its own transaction, or a
savepoint of the service's open batch (durable.py, which has made the message durable in its
log first), or, on the batch's fast path (`isolated=False`), no savepoint at all. It raises
only for failures of our own storage, and on the fast path for any failure (durable.py
restores the batch and applies the log again). A message that can never be processed is
journaled as dead (a dead letter) with its reason. What it did (its judgements, its decision
and the like) is counted in the metrics once its changes are committed (counted.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from . import counted, hl7, logs, metrics
from .detect import LOOKBACK, Detector, Judgement, Patient
from .drift import DriftMonitor
from .episodes import episode_start_after, fallback_start, opens_episode, standing_injuries
from .logs import REQUEST_ID
from .mllp import FrameError
from .merges import record_merge, retired
from .repage import PagedResult, Policy, policy_for, should_repage
from .revisions import is_repeat, is_unmarked_revision
from .store import Store, is_storage_failure
from .timeutil import DAY, format_hl7_time

log = logging.getLogger(__name__)

# A message whose processing raised an unexpected error this many times in a row is
# dead-lettered rather than retried forever (it would stall the feed).
MAX_ATTEMPTS = 3
# Patients kept in memory: several times those in hospital at once (~hundreds); the rest are
# one indexed read away.
MAX_PATIENTS_IN_MEMORY = 5_000
# A patient's results are held back to this long before the newest: the detector's lookback
# and a margin, so that over the years memory holds each patient's last year, not a lifetime.
# A result that comes later than the margin allows reloads its patient from the state.
KEEP = LOOKBACK + 30 * DAY
_DEAD_KINDS = ("unparseable", "oversized-frame")
# What an observation did that changes the patient's series.
_CHANGES = ("judged", "stored", "corrected", "removed")
_DECISIONS = ("applied", "duplicate", "duplicate-result", "ignored", "dead")


class Unisolated(Exception):
    """A message applied without a savepoint failed midway: the batch holds part of it and
    must be rolled back and applied again, each message isolated."""


@dataclass(frozen=True, slots=True)
class Page:
    body: str         # 'MRN,YYYYMMDDHHMMSS': the page's name in the outbox and to the pager
    received: float   # perf_counter() when the message arrived, for the latency histogram


NO_PAGES: tuple[Page, ...] = ()   # what most messages decide (shared, not built per message)


@dataclass(slots=True)
class _Cached:
    patient: Patient
    episode_start: int | None
    since: int      # the patient's results at or after this time are held, no earlier ones

    def keep_from(self, since: int) -> None:
        """Drop the results before `since`, once there are a month's worth of them."""
        times, values = self.patient.times, self.patient.values
        if times and times[0] < since - 30 * DAY:
            cut = bisect_left(times, since)
            del times[:cut], values[:cut]
            self.since = since


def message_digest(raw: bytes) -> bytes:
    """The journal's key for a message: its MSH-7 (the message's time) then a blake2b-16 of
    its bytes. A re-delivery of the same bytes has the same key. Time first, because messages
    arrive in time order: a new key lands at the right edge of the journal's unique index,
    where a random key would cost a B-tree insert at a random page (the dearest statement per
    message, measured in docs/performance.md)."""
    head = raw[:raw.find(b"\r")].split(b"|", 7)
    return (head[6][:14] if len(head) > 7 else b"") + hashlib.blake2b(raw, digest_size=16).digest()


def is_result_message(raw: bytes) -> bool:
    """Whether a message that could not be parsed says it is a result (MSH-9 ORU or OUL), as far
    as its first segment can be read: a dead letter of the kind that may hide an AKI."""
    try:
        seps, segs = hl7.split_message(raw[:2048])
    except hl7.HL7Error:
        return False
    return hl7.is_result_type(hl7.message_type(segs[0], seps).upper())


def explanation(j: Judgement, repage_of: int | None = None) -> str:
    """The outbox's explanation of a page; a re-page names the earlier page's result time."""
    doc = {
        "detector": j.detector, "version": j.version, "score": round(j.score, 6),
        "threshold": j.threshold, "stage": j.stage, "baseline": j.baseline, "ratio": j.ratio,
    }
    if repage_of is not None:
        doc["repage_of"] = format_hl7_time(repage_of)
    return json.dumps(doc)


class Ingest:
    def __init__(self, store: Store, detector: Detector,
                 page_from: int | None = None,
                 profile: hl7.FeedProfile = hl7.DEFAULT_PROFILE,
                 repage: Policy | None = None, drift: DriftMonitor | None = None) -> None:
        """`page_from`: results sampled before this time are judged and open their episode,
        but their page is recorded as suppressed, not sent (a replay of old messages).
        `profile`: what this hospital's feed means (hl7/profile.py).
        `repage`: when a positive inside an episode pages again (repage.py; default: the
        policy shipped for this detector). `drift`: counts every judged result against the
        model's training distribution (drift.py)."""
        self.store = store
        self.detector = detector
        self.repage = policy_for(detector.name) if repage is None else repage
        self.drift = drift
        self.page_from = page_from
        self.profile = profile
        self._patients: OrderedDict[str, _Cached] = OrderedDict()
        # Patient numbers merged into others: a message still sent under one is filed under
        # the number it lives on as.
        self._merged = store.merged_numbers()
        self._decided = {d: metrics.DECISIONS.labels(d) for d in _DECISIONS}
        # What the messages applied and not yet committed did, counted once they are
        # (counted.py): the results judged (flat, counted.FIELDS each), and the series of the
        # other per-message counters to add one to.
        self._notes: list = []
        self._counts: list = []

    def _patient(self, mrn: str, time: int) -> _Cached:
        """The patient, holding at least the results a detector reads for a result at `time`."""
        cached = self._patients.get(mrn)
        if cached is None or time - LOOKBACK < cached.since:
            # First sight since start (or since evicted, or a result older than those held):
            # one indexed read, then kept in memory, least recently seen patients first out,
            # so memory stays flat over the years.
            since = time - KEEP
            cached = _Cached(*self.store.load_patient(mrn, since), since)
            self._patients[mrn] = cached
            if len(self._patients) > MAX_PATIENTS_IN_MEMORY:
                self._patients.popitem(last=False)
        self._patients.move_to_end(mrn)
        return cached

    def serve_with(self, detector: Detector, drift: DriftMonitor | None) -> None:
        """Judge with `detector` from now on (population.py chose another model at start),
        with its own re-page policy and drift window."""
        self.detector, self.drift = detector, drift
        self.repage = policy_for(detector.name)

    def forget(self) -> None:
        """Drop the in-memory patients (after the state changed underneath, e.g. a replay)."""
        self._patients.clear()
        self._merged = self.store.merged_numbers()

    def committed(self) -> None:
        """The messages applied so far are committed (a batch's commit): count what they
        did."""
        if self._notes:
            counted.count_judged(self._notes, self.detector.name, self.drift)
            self._notes.clear()
        if self._counts:
            counted.count_series(self._counts)
            self._counts.clear()

    def rolled_back(self) -> None:
        """The messages applied since the last commit are rolled back (a batch's rollback):
        drop what memory and the uncounted notes hold of them."""
        self._notes.clear()
        self._counts.clear()
        self.forget()

    def apply(self, raw: bytes, received: float, isolated: bool = True, again: bool = False,
              parsed: hl7.Event | hl7.HL7Error | None = None) -> Sequence[Page]:
        """Apply one message; returns the pages to dispatch (a result message of several
        samples may page one and re-page another). Raises only for failures
        of our storage; a message that fails otherwise MAX_ATTEMPTS times is a dead letter.
        `isolated=False` (inside a batch): no savepoint around the message, and a failure of
        any kind raises `Unisolated`: the caller rolls the batch back and applies it again
        isolated (durable.py), where the retries and the dead letter happen. `again`: a
        message of the log applied again by a recovery: not counted as received, nor, when
        its journal row is there (committed before), as a re-delivery. `parsed`: what
        `hl7.parse_outcome` already made of `raw` with this feed profile (not parsed again)."""
        digest = message_digest(raw)
        # Not reset: the page task started for this message inherits it (see logs.py).
        REQUEST_ID.set(digest[-8:].hex())
        try:
            if parsed is None:
                parsed = hl7.parse_outcome(raw, self.profile)
            if isinstance(parsed, hl7.HL7Error):
                raise parsed
            event = parsed
        except hl7.HL7Error as e:
            if not again:
                metrics.child(metrics.MESSAGES, "unparseable").inc()
            self.set_aside(digest, "unparseable", str(e), raw, quoted=e.mrn)
            return NO_PAGES
        kind = type(event).__name__.lower()
        if not again:
            metrics.child(metrics.MESSAGES, kind).inc()
        # Where this message's notes start. Not isolated, a failure rolls the batch back, and
        # its notes with it (`rolled_back`).
        noted = (len(self._notes), len(self._counts)) if isolated else None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self._apply(digest, event, kind, raw, received, isolated, again)
            except Exception as e:  # noqa: BLE001 - classified below
                if noted is not None:             # noted in a unit that was rolled back
                    del self._notes[noted[0]:], self._counts[noted[1]:]
                if is_storage_failure(e):
                    raise
                if not isolated:
                    raise Unisolated(e) from e
                if attempt < MAX_ATTEMPTS:
                    log.warning("processing failed (attempt %d of %d): %s", attempt,
                                MAX_ATTEMPTS, logs.scrub(repr(e), getattr(event, "mrn", None)))
                    continue
                log.error("message failed %d times; dead-lettering it: %s\n%s", attempt,
                          logs.scrub(repr(e), getattr(event, "mrn", None)),
                          logs.traceback_of(e))
                self.set_aside(digest, kind, f"processing error: {e!r}", raw,
                               getattr(event, "mrn", None))
        return NO_PAGES

    def set_aside_frame(self, frame: FrameError, again: bool = False) -> None:
        """A frame that could not be read whole: kept as a dead letter. `again`: applied again
        by a recovery, not counted as received (as in `apply`)."""
        if not again:
            metrics.FRAME_ERRORS.inc()
        digest = message_digest(frame.reason.encode() + frame.prefix)
        REQUEST_ID.set(digest[-8:].hex())
        self.set_aside(digest, "oversized-frame", frame.reason, frame.prefix)

    def set_aside(self, digest: bytes, kind: str, reason: str, raw: bytes,
                  mrn: str | None = None, quoted: str | None = None) -> None:
        """Durably keep a message that can never be processed, with its reason (a dead letter).
        `quoted`: an MRN the reason quotes without it being the row's patient (an invalid one)."""
        with self.store.transaction():
            new = self.store.journal(digest, kind, mrn, "dead", reason, raw)
        if new:
            self._counts += (metrics.child(metrics.DEAD_LETTERS,
                                           kind if kind in _DEAD_KINDS else "processing"),
                             self._decided["dead"])
            if kind == "result" or is_result_message(raw):
                self._counts.append(metrics.RESULTS_DEAD_LETTERED)
            log.warning("dead letter (journal %s): %s", new,
                        logs.scrub(logs.scrub(reason, mrn), quoted))
            if not self.store.in_transaction:
                self.committed()      # its own transaction (a batch's commit counts later)

    def _apply(self, digest: bytes, event: hl7.Event, kind: str, raw: bytes,
               received: float, isolated: bool, again: bool) -> Sequence[Page]:
        store = self.store
        mrn = getattr(event, "mrn", None)
        if mrn is not None:
            mrn = self._merged.get(mrn, mrn)
        pages: Sequence[Page] = NO_PAGES
        commit_memory = None
        with store.transaction(isolated):
            jid = store.journal(digest, kind, mrn, "applied", None, raw)
            decision = "applied"
            if jid is None:
                decision = "duplicate"
            elif isinstance(event, hl7.Result):
                pages, commit_memory, decision = self._result(mrn, event, jid, received)
            elif isinstance(event, (hl7.Admission, hl7.Update)):
                if isinstance(event, hl7.Admission):
                    store.admit(mrn, event.name, event.birth, event.sex, event.time, jid)
                else:
                    store.update_patient(mrn, event.name, event.birth, event.sex)
                commit_memory = lambda: self._demographics(mrn, event)  # noqa: E731
            elif isinstance(event, hl7.Discharge):
                store.discharge(mrn, event.time, jid)
            elif isinstance(event, hl7.Merge):
                commit_memory, decision = self._merge(mrn, event, jid)
            else:
                decision = "ignored"
                store.set_journal_status(jid, decision, event.reason)
                self._unjudged(event.notes, mrn)
        if jid is None:
            # A re-delivery, counted now, not noted: a rolled-back batch would drop the note,
            # and its recovery, applying it `again`, cannot tell it from one committed before.
            if not again:
                metrics.DUPLICATES.inc()
                self._decided["duplicate"].inc()
            return NO_PAGES
        # Committed: now the in-memory view may follow.
        if commit_memory is not None:
            commit_memory()
        self._counts.append(self._decided[decision])
        if isolated and not store.in_transaction:
            self.committed()              # its own transaction (a batch's commit counts later)
        return pages

    def _demographics(self, mrn: str, event: hl7.Admission | hl7.Update) -> None:
        cached = self._patients.get(mrn)
        if cached is not None:
            take_demographics(cached.patient, event)

    def _merge(self, new: str, event: hl7.Merge, jid: int):
        """ADT^A40 and kin: the old number's results, admissions and episode move to `new`."""
        old = retired(self._merged, event.old, new)
        if old is None:
            self.store.set_journal_status(jid, "ignored", f"merge of {event.old} into {new}: "
                                          "already the same patient")
            self._counts.append(metrics.child(metrics.MERGES, "repeated"))
            return None, "ignored"
        if not self.store.merge_patient(old, new, jid):
            self.store.set_journal_status(jid, "ignored", f"{old} was merged before")
            self._counts.append(metrics.child(metrics.MERGES, "repeated"))
            return None, "ignored"
        self.store.set_journal_status(jid, "applied", f"merged {old} into {new}")
        self._counts.append(metrics.child(metrics.MERGES, "merged"))
        log.warning("patient %s merged into %s: its results, admissions and episode moved",
                    logs.patient(old), logs.patient(new))

        def commit_memory() -> None:
            self._patients.pop(old, None)
            self._patients.pop(new, None)
            record_merge(self._merged, old, new)
        return commit_memory, "applied"

    def _unjudged(self, notes: tuple[hl7.Note, ...], mrn: str | None) -> None:
        """Say so, loudly, when a result looks like creatinine but is not judged: the log
        names the patient, whose result someone must look at."""
        for n in notes:
            if n.suspicious:
                self._counts.append(metrics.child(metrics.UNRECOGNISED_CREATININE,
                                                  metrics.unrecognised_code(n.code)))
                advice = ("settle with the lab whether it is serum creatinine"
                          if n.kind == hl7.CONFLICTING else "name its code in the feed profile "
                          "(FEED_PROFILE) if it is serum creatinine")
                log.warning("creatinine-like result of patient %s not judged: %s; %s",
                            logs.patient(mrn), n.reason, advice)

    def _result(self, mrn: str, r: hl7.Result, jid: int, received: float):
        """Every creatinine observation of the message, in order: stored, corrected or removed
        as its status says, and judged. Returns (pages, commit_memory, decision)."""
        obs_list = r.observations
        cached = self._patient(mrn, obs_list[0].time if len(obs_list) == 1
                               else min(o.time for o in obs_list))
        # One observation (the usual case) is judged against the patient as held; several
        # against a copy that takes each one in before the next is judged.
        seen = cached.patient if len(obs_list) == 1 else Patient(
            mrn, list(cached.patient.times), list(cached.patient.values),
            cached.patient.birth, cached.patient.sex)
        pages: list[Page] = []
        episode = cached.episode_start
        changes: list[tuple[int, float | None]] = []   # applied to memory once committed
        reasons: list[str] = []
        all_duplicates = True
        for obs in obs_list:
            action, obs_page, episode = self._observation(mrn, obs, seen, episode, jid,
                                                          received, reasons)
            all_duplicates = all_duplicates and action == "duplicate"
            if action in _CHANGES:
                changes.append((obs.time, obs.value))    # None: removed (W, D carry none)
                if seen is not cached.patient:
                    _take(seen, obs.time, obs.value)
            if action != "judged":
                self._counts.append(metrics.child(metrics.RESULT_ACTIONS, action))
                reasons.append(f"{obs.code} {obs.time_text} {obs.status}: {action}")
            if obs_page is not None:
                pages.append(obs_page)
        if r.notes:
            self._unjudged(r.notes, mrn)
            reasons.extend(n.reason for n in r.notes)
        if changes:
            decision = "applied"
        elif all_duplicates:
            decision = "duplicate-result"
        else:
            decision = "ignored"
        if decision == "duplicate-result":
            self.store.set_journal_status(jid, decision, "a result for this sample time exists")
        elif reasons:
            self.store.set_journal_status(jid, decision, "; ".join(reasons))

        def commit_memory() -> None:
            for t, v in changes:
                _take(cached.patient, t, v)
            cached.episode_start = episode
            if changes:
                cached.keep_from((changes[0][0] if len(changes) == 1
                                  else max(t for t, _ in changes)) - KEEP)

        return pages, commit_memory, decision

    def _observation(self, mrn: str, obs: hl7.Observation, p: Patient, episode: int | None,
                     jid: int, received: float, reasons: list[str]
                     ) -> tuple[str, Page | None, int | None]:
        """What one observation does: (action, page, the episode start after it); why a
        positive was not paged goes into `reasons` (the journal's)."""
        store = self.store
        status = obs.status
        if status == hl7.NOT_OBTAINED:
            return "not-obtained", None, episode
        if status in (hl7.WRONG_PATIENT, hl7.DELETED):
            if store.result_at(mrn, obs.time) is None:
                return "nothing-to-remove", None, episode
            store.remove_result(mrn, obs.time, jid)
            log.warning("result of %s at %s withdrawn (OBX-11 %s): removed from the baseline",
                        logs.patient(mrn), obs.time_text, status)
            if episode == obs.time:
                episode = self._fall_back(mrn, obs, f"withdrawn ({status})", reasons)
            return "removed", None, episode
        if obs.value is None:
            # OBX-11 U without a value: the result sent before (a preliminary) is now final.
            held = store.result_at(mrn, obs.time)
            if held is None:
                log.warning("result of %s at %s made final (OBX-11 U) without a value, and none "
                            "was received before: ask the lab to resend it", logs.patient(mrn),
                            obs.time_text)
                return "nothing-to-finalise", None, episode
            obs.value = held[0]
        elif store.add_result(mrn, obs.time, obs.value, status, obs.comparator):
            held = None
        else:
            held = store.result_at(mrn, obs.time)
        value = obs.value
        action = "judged"
        if held is not None:
            old_value, old_status = held
            if is_repeat(status, old_status, value, old_value):
                self._counts.append(metrics.DUPLICATE_RESULTS)
                return "duplicate", None, episode
            store.correct_result(mrn, obs.time, value, status, obs.comparator, jid)
            if is_unmarked_revision(status, old_status):
                log.warning("result of %s at %s sent again with another value and OBX-11 %s, "
                            "not C: taken as a correction, %g → %g µmol/L", logs.patient(mrn),
                            obs.time_text, status, old_value, value)
                reasons.append(f"{obs.time_text} sent again as {status} with another value "
                               f"({old_value:g} → {value:g} µmol/L): taken as a correction")
            else:
                log.info("result of %s at %s corrected (%s → %s): %g → %g µmol/L",
                         logs.patient(mrn), obs.time_text, old_status, status, old_value, value)
            action = "corrected"
        if status == hl7.PRELIMINARY and self.profile.preliminary == "store":
            return ("stored" if action == "judged" else action), None, episode
        page, episode, positive = self._judge(mrn, obs, value, p, episode, jid, received,
                                              reasons)
        if action == "corrected" and not positive and episode == obs.time:
            # As for a withdrawn result: a real injury later is paged.
            episode = self._fall_back(mrn, obs, f"corrected to {value:g} µmol/L, no longer an "
                                      "injury", reasons)
        return action, page, episode

    def _fall_back(self, mrn: str, obs: hl7.Observation, what: str,
                   reasons: list[str]) -> int | None:
        """The result the patient's episode ran from is withdrawn or corrected to no injury
        (`what`): the episode falls back to an earlier page whose result stands, or ends (the
        rare path: an indexed read of the patient's pages, and of its results to judge them
        again). Returns its start; the log and `reasons` (the journal's) say which."""
        earlier = [t for t in self.store.standing_pages(mrn) if t < obs.time]
        standing: frozenset[int] = frozenset()
        if earlier:
            series, _ = self.store.load_patient(mrn, min(earlier) - LOOKBACK)
            standing = standing_injuries(self.detector, series, earlier)
        start = fallback_start(standing, obs.time)
        self.store.open_episode(mrn, start)
        now = ("is closed" if start is None else
               f"falls back to the page of {format_hl7_time(start)}")
        log.warning("result of %s at %s, paged, is %s: its episode %s", logs.patient(mrn),
                    obs.time_text, what, now)
        reasons.append(f"{obs.time_text} {what}: its episode {now}")
        return start

    def _judge(self, mrn: str, obs: hl7.Observation, value: float, p: Patient,
               episode: int | None, jid: int, received: float, reasons: list[str]
               ) -> tuple[Page | None, int | None, bool]:
        """(the page to send, the episode start after, whether the result is positive); the
        judgement is noted, to be counted once committed."""
        j = self.detector.judge(p, obs.time, value)
        page, repage_of = None, None
        if j.positive:
            page, episode, repage_of = self._positive(mrn, obs, value, j, p, episode, jid,
                                                      received, reasons)
        self._notes += (value, j.score, j.positive, (not p.times) + 2 * (p.birth is None),
                        repage_of is not None)            # counted.FIELDS
        return page, episode, j.positive

    def _positive(self, mrn: str, obs: hl7.Observation, value: float, j: Judgement,
                  p: Patient, episode: int | None, jid: int, received: float,
                  reasons: list[str]) -> tuple[Page | None, int | None, int | None]:
        """A positive result: (the page to send, the episode start after, the episode start
        it re-paged, if it did); one that is not paged says why in `reasons`."""
        store = self.store
        repage_of = None
        if not opens_episode(episode, obs.time):
            if not self._repages(mrn, episode, obs.time, value, j, p):  # type: ignore[arg-type]
                log.info("positive result in an open episode, not paged again: %s,%s (episode "
                         "since %s)", logs.patient(mrn), obs.time_text, episode)
                reasons.append(f"{obs.time_text} positive, not paged: the episode since "
                               f"{format_hl7_time(episode)} is open")
                return None, episode, None
            repage_of = episode
            log.warning("positive result markedly worse than the episode's page: paged again: "
                        "%s,%s (episode since %s)", logs.patient(mrn), obs.time_text, episode)
        body = f"{mrn},{obs.time_text}"
        send = self.page_from is None or obs.time >= self.page_from
        why = explanation(j, repage_of)
        page_id = store.add_page(mrn, obs.time, body, why, jid,
                                 "pending" if send else "suppressed")
        episode = episode_start_after(episode, obs.time)
        store.open_episode(mrn, episode)
        if page_id is not None and send:
            log.info("page decided: %s %s", logs.page(body), why)
            return Page(body, received), episode, repage_of
        reasons.append(f"{obs.time_text} positive: " + (
            "its page was decided before" if page_id is None else
            "page suppressed (sampled before the replay's paging cutoff)"))
        return None, episode, repage_of

    def _repages(self, mrn: str, episode: int, time: int, value: float, j: Judgement,
                 p: Patient) -> bool:
        """Whether a positive inside the episode starting at `episode` pages again (the rare
        path: one indexed read of the episode's page from the outbox)."""
        if not self.repage.enabled:
            return False
        row = self.store.page_at(mrn, episode)
        paged = PagedResult.from_explanation(episode, row) if row is not None else None
        return paged is not None and should_repage(self.repage, paged, time, value, j,
                                                   p.times, p.values)


def take_demographics(p: Patient, event: hl7.Admission | hl7.Update) -> None:
    """An admission's demographics replace the patient's; an update's replace only what it
    sends (the service's and offline.py's rule)."""
    if isinstance(event, hl7.Admission):
        p.birth, p.sex = event.birth, event.sex
    else:
        p.birth = p.birth if event.birth is None else event.birth
        p.sex = p.sex if event.sex is None else event.sex


def _take(p: Patient, t: int, v: float | None) -> None:
    """Put a result into a patient's series (a new one, or a corrected value), or take it out
    (`v` None)."""
    i = bisect_left(p.times, t)
    present = i < len(p.times) and p.times[i] == t
    if v is None:
        if present:
            del p.times[i], p.values[i]
    elif present:
        p.values[i] = v
    else:
        p.times.insert(i, t)
        p.values.insert(i, v)

"""Apply one received message to the state as one unit, and decide whether to page.

`Ingest.apply(raw)` journals the bytes, parses them, updates the patient, judges a result and
queues a page in the outbox, all in one `store.transaction()`: its own transaction, or a
savepoint of the service's open batch (durable.py, which has made the message durable in its
log first), or, on the batch's fast path (`isolated=False`), no savepoint at all. It raises
only for failures of our own storage, and on the fast path for any failure (durable.py
restores the batch and applies the log again). A message that can never be processed is
journaled as dead (a dead letter) with its reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass

from . import hl7, metrics
from .detect import LOOKBACK, Detector, Judgement, Patient
from .episodes import episode_start_after, opens_episode
from .logs import REQUEST_ID
from .mllp import FrameError
from .store import Store, is_storage_failure
from .timeutil import DAY

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


class Unisolated(Exception):
    """A message applied without a savepoint failed midway: the batch holds part of it and
    must be rolled back and applied again, each message isolated."""


@dataclass(frozen=True, slots=True)
class Page:
    body: str         # 'MRN,YYYYMMDDHHMMSS': the page's name in the outbox and to the pager
    received: float   # perf_counter() when the message arrived, for the latency histogram


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


def explanation(j: Judgement) -> str:
    return json.dumps({
        "detector": j.detector, "version": j.version, "score": round(j.score, 6),
        "threshold": j.threshold, "stage": j.stage, "baseline": j.baseline, "ratio": j.ratio,
    })


class Ingest:
    def __init__(self, store: Store, detector: Detector,
                 page_from: int | None = None) -> None:
        """`page_from`: results sampled before this time are judged and open their episode,
        but their page is recorded as suppressed, not sent (a replay of old messages)."""
        self.store = store
        self.detector = detector
        self.page_from = page_from
        self._patients: OrderedDict[str, _Cached] = OrderedDict()

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

    def forget(self) -> None:
        """Drop the in-memory patients (after the state changed underneath, e.g. a replay)."""
        self._patients.clear()

    def apply(self, raw: bytes, received: float, isolated: bool = True,
              again: bool = False) -> Page | None:
        """Apply one message; returns the page to dispatch, if any. Raises only for failures
        of our storage; a message that fails otherwise MAX_ATTEMPTS times is a dead letter.
        `isolated=False` (inside a batch): no savepoint around the message, and a failure of
        any kind raises `Unisolated`: the caller rolls the batch back and applies it again
        isolated (durable.py), where the retries and the dead letter happen. `again`: a
        message of the log applied again by a recovery: not counted as received, nor, when
        its journal row is there (committed before), as a re-delivery."""
        digest = message_digest(raw)
        # Not reset: the page task started for this message inherits it (see logs.py).
        REQUEST_ID.set(digest[-8:].hex())
        try:
            event = hl7.parse(raw)
        except hl7.HL7Error as e:
            if not again:
                metrics.child(metrics.MESSAGES, "unparseable").inc()
            self.set_aside(digest, "unparseable", str(e), raw)
            return None
        kind = type(event).__name__.lower()
        if not again:
            metrics.child(metrics.MESSAGES, kind).inc()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self._apply(digest, event, kind, raw, received, isolated, again)
            except Exception as e:  # noqa: BLE001 - classified below
                if is_storage_failure(e):
                    raise
                if not isolated:
                    raise Unisolated(e) from e
                if attempt < MAX_ATTEMPTS:
                    log.warning("processing failed (attempt %d of %d): %r", attempt,
                                MAX_ATTEMPTS, e)
                    continue
                log.exception("message failed %d times; dead-lettering it", attempt)
                self.set_aside(digest, kind, f"processing error: {e!r}", raw,
                               getattr(event, "mrn", None))
        return None

    def set_aside_frame(self, frame: FrameError) -> None:
        """A frame that could not be read whole: kept as a dead letter."""
        metrics.FRAME_ERRORS.inc()
        digest = message_digest(frame.reason.encode() + frame.prefix)
        REQUEST_ID.set(digest[-8:].hex())
        self.set_aside(digest, "oversized-frame", frame.reason, frame.prefix)

    def set_aside(self, digest: bytes, kind: str, reason: str, raw: bytes,
                  mrn: str | None = None) -> None:
        """Durably keep a message that can never be processed, with its reason (a dead letter)."""
        with self.store.transaction():
            new = self.store.journal(digest, kind, mrn, "dead", reason, raw)
        if new:
            metrics.DEAD_LETTERS.labels(reason=kind if kind in _DEAD_KINDS else "processing").inc()
            log.warning("dead letter (journal %s): %s", new, reason)

    def _apply(self, digest: bytes, event: hl7.Event, kind: str, raw: bytes,
               received: float, isolated: bool, again: bool) -> Page | None:
        store = self.store
        mrn = getattr(event, "mrn", None)
        page: Page | None = None
        commit_memory = None
        with store.transaction(isolated):
            jid = store.journal(digest, kind, mrn, "applied", None, raw)
            if jid is None:
                if not again:
                    metrics.DUPLICATES.inc()
                return None
            if isinstance(event, hl7.Result):
                page, commit_memory = self._result(event, jid, received)
            elif isinstance(event, hl7.Admission):
                store.admit(event.mrn, event.name, event.birth, event.sex, event.time, jid)
                commit_memory = lambda: self._admitted(event)  # noqa: E731
            elif isinstance(event, hl7.Discharge):
                store.discharge(event.mrn, event.time, jid)
            else:
                store.set_journal_status(jid, "ignored", f"message type {event.kind}")
        # Committed: now the in-memory view may follow.
        if commit_memory is not None:
            commit_memory()
        return page

    def _admitted(self, event: hl7.Admission) -> None:
        cached = self._patients.get(event.mrn)
        if cached is not None:
            cached.patient.birth, cached.patient.sex = event.birth, event.sex

    def _result(self, r: hl7.Result, jid: int, received: float):
        store = self.store
        cached = self._patient(r.mrn, r.time)
        p = cached.patient
        if not store.add_result(r.mrn, r.time, r.value):
            store.set_journal_status(jid, "duplicate-result",
                                     "a result for this sample time exists")
            metrics.DUPLICATE_RESULTS.inc()
            return None, None
        j = self.detector.judge(p, r.time, r.value)
        metrics.CREATININE.observe(r.value)
        metrics.child(metrics.SCORES, j.detector).observe(j.score)
        metrics.child(metrics.RESULTS_JUDGED, "yes" if p.times else "no",
                      "yes" if p.birth is not None else "no").inc()
        page = None
        start = cached.episode_start
        if j.positive:
            metrics.child(metrics.POSITIVES, j.detector).inc()
            if opens_episode(start, r.time):
                body = f"{r.mrn},{r.time_text}"
                send = self.page_from is None or r.time >= self.page_from
                page_id = store.add_page(r.mrn, r.time, body, explanation(j), jid,
                                         "pending" if send else "suppressed")
                start = episode_start_after(start, r.time)
                store.open_episode(r.mrn, start)
                if page_id is not None and send:
                    page = Page(body, received)
                    log.info("page decided: %s %s", body, explanation(j))
            else:
                log.info("positive result in an open episode, not paged again: %s,%s (episode "
                         "since %s)", r.mrn, r.time_text, start)

        def commit_memory() -> None:
            i = bisect_left(p.times, r.time)
            p.times.insert(i, r.time)
            p.values.insert(i, r.value)
            cached.episode_start = start
            cached.keep_from(r.time - KEEP)

        return page, commit_memory


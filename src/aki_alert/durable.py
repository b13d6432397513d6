"""Acknowledge fast, lose nothing: a write-ahead message log, then the ACK, then the work.

A frame is appended to the message log (store/msglog.py: one `write()`, `fdatasync`ed too with
durability "machine") and acknowledged; then it is applied to the state inside a long
transaction, and its page, if any, is sent. In the service the two halves run in two processes
on the two cores (front.py): the front logs and acknowledges, and hands each frame over with
its place in the log; `take()` applies it here, while the front is already reading the next.
`accept()` then `settle()` do both halves in one process (the tests and benchmarks).

The log is the durable record of an acknowledged message: the transaction commits every
BATCH_MAX messages or BATCH_SECONDS after the first uncommitted one, and then the log's
committed part is dropped. A crash loses the uncommitted batch from the database but not from
the log: `recover()` applies the log again at the next start, and the journal's keys skip what
was committed. The log also records each page the pager accepted (`delivered()`), so a page
decided again by a recovery is not resent. The metrics of what a batch's messages did are
counted when it commits (counted.py), so a batch applied twice counts them once.

Any storage failure while applying (disk full, read-only) rolls the whole batch back, forgets
the patients held in memory and marks the batch broken; the next frame (or `flush()`)
re-applies the log first, so the database, the memory and the log agree again, and until that
succeeds nothing more is applied (and the front, held back, acknowledges nothing more). A
message is applied without a savepoint of its own (two statements fewer each); when one fails
midway for another reason (a bug, a poison message), the batch is rebuilt from the log the same
way, with each message in a savepoint, so that it is retried and set aside alone (ingest.py). A
frame that cannot be appended to the log is not acknowledged: the hospital resends it.

With `commit_each` (replicas sharing a PostgreSQL state) there is no log: a standby taking
over must find everything the leader acknowledged, and it cannot read this pod's disk, so each
message is applied and committed before its ACK, in one process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from . import metrics
from .hl7 import Event, HL7Error, acknowledgement, nack_acknowledgement, parse_outcome
from .ingest import NO_PAGES, Ingest, Page, Unisolated
from .mllp import FrameError
from .store.msglog import (DELIVERED, MESSAGE, MessageLog, Position, SegmentWriter,
                           drop_segments, frame_of, log_record, segment_records)
from .store import Store

log = logging.getLogger(__name__)

# The log makes a message durable, so these bound only the log's size, the work a restart
# re-applies (≤ ~0.2 s) and how stale other readers' view is (the console, a replay). A larger
# batch writes each of the state's pages fewer times per message (docs/performance.md).
BATCH_MAX = 1024
BATCH_SECONDS = 0.1

Frame = bytes | FrameError


class Durable:
    def __init__(self, store: Store, ingest: Ingest, log_dir: str, sync: bool = False,
                 commit_each: bool = False, nack: bool = False) -> None:
        """`log_dir`: where the message log is (the state directory); `sync`: fdatasync each
        record (durability "machine"); `commit_each`: apply and commit every message before
        its ACK, without the log; `nack`: answer under the `hl7` NACK policy (hl7/ack.py),
        judging each message as Ingest parses it (its feed profile); otherwise AA to every
        frame."""
        self.nack = nack
        self.store = store
        self.commit_each = commit_each
        self.ingest = ingest
        self.log_dir = log_dir
        self.sync = sync
        self.deliveries = MessageLog(os.path.join(log_dir, "messages.log"), sync)
        self.frames: SegmentWriter | None = None      # accept()'s own (in one process)
        self._taken: Position | None = None   # the log position of the last frame applied
        self.uncommitted = 0                  # messages applied since the last commit
        self.batch_started = 0.0              # monotonic time of the first of them
        self.broken = False                   # a failure left the batch to be re-applied
        # The frame accept() made durable and settle() applies, when it came, and what the ACK's
        # verdict parsed it into (None: not parsed yet).
        self._accepted: tuple[Frame, float, Event | HL7Error | None] | None = None
        self._recovered: list[Page] = []      # pages decided before settle() hands them out

    def accept(self, item: Frame, received: float) -> tuple[str, bytes]:
        """Make one frame durable; returns its ACK's code (MSA-1) and the ACK. Raises when it
        cannot (the frame must not be acknowledged). Call `settle()` after sending the ACK,
        even if sending failed."""
        if self.broken:
            self._recovered += self.recover()
        # Parsed once, for both the ACK's verdict and the message's application.
        parsed = (parse_outcome(item, self.ingest.profile)
                  if self.nack and not isinstance(item, FrameError) else None)
        if self.commit_each:
            self._recovered += self._apply(item, received, True, parsed)
        else:
            if self.frames is None:
                self.frames = SegmentWriter(self.log_dir, self.sync)
            self._taken = self.frames.append(*log_record(item))
            self._accepted = (item, received, parsed)
        if not self.nack:
            return "AA", acknowledgement(item)
        return nack_acknowledgement(item, self.ingest.profile, parsed)

    def take(self, item: Frame, received: float, at: Position) -> list[Page]:
        """Apply a frame the front logged at `at` and acknowledged; returns the pages to send.
        Raises when a broken batch cannot be rebuilt yet (the storage still fails): the frame
        is not taken, and the caller offers it again later."""
        if self.broken:
            self._recovered += self.recover()
        self._taken = at
        self._accepted = (item, received, None)
        return self.settle()

    def settle(self) -> list[Page]:
        """Apply the frame accepted last; returns the pages to send (its own, and any decided
        by a recovery in accept()). Never raises: after a storage failure the batch is
        restored from the log by the next accept() or flush()."""
        pages, self._recovered = self._recovered, []
        if self._accepted is None:
            return pages
        item, received, parsed = self._accepted
        self._accepted = None
        if not self.uncommitted:
            self.batch_started = time.monotonic()
        try:
            self.store.begin_batch()
            decided = self._apply(item, received, False, parsed)
        except Unisolated as e:
            log.warning("a message failed midway (%r): the batch is applied again from the "
                        "message log, each message in a savepoint of its own", e.__cause__)
            self._restore(storage=False)
            return pages
        except Exception as e:  # noqa: BLE001 - only our storage's failures reach here
            log.error("cannot apply an acknowledged message yet (%s): it stays in the message "
                      "log and is applied again before the next one", e)
            self._restore()
            return pages
        self.uncommitted += 1
        pages += decided
        return pages

    def delivered(self, body: str, attempts: int) -> None:
        """The pager accepted a page, and its outbox row says so in the open batch. The log
        keeps that fact until the batch commits, so that a crash before then does not send the
        page again (a commit after every delivery would cost the reader its batch). Raises
        when the log cannot take it (the page may then be sent once more after a crash)."""
        if not self.commit_each:              # there, the row's update is its own commit
            self.deliveries.append(DELIVERED, f"{body}\0{attempts}".encode())

    def _apply(self, item: Frame, received: float, isolated: bool,
               parsed: Event | HL7Error | None) -> Sequence[Page]:
        if isinstance(item, FrameError):
            self.ingest.set_aside_frame(item)
            return NO_PAGES
        return self.ingest.apply(item, received, isolated, False, parsed)

    @property
    def due(self) -> bool:
        return self.uncommitted >= BATCH_MAX

    @property
    def overdue(self) -> bool:
        """The batch has waited BATCH_SECONDS for its commit (or must be rebuilt)."""
        return self.broken or (self.uncommitted > 0 and
                               time.monotonic() - self.batch_started >= BATCH_SECONDS)

    def flush(self) -> list[Page]:
        """Commit the batch and empty the log. Never raises: on failure the batch is restored
        from the log and retried with the next message or flush. Returns pages to send (of a
        frame not yet settled, or decided by a recovery)."""
        pages = self.settle()                 # never empty the log under an unapplied frame
        if not self.uncommitted and not self.broken:
            return pages
        try:
            if self.broken:
                return pages + self.recover()
            self.store.commit_batch()
            self.ingest.committed()
            self._drop_committed()
        except Exception as e:  # noqa: BLE001 - any failure here is our storage's
            log.error("cannot commit the state (%s): the message log keeps the batch", e)
            if not self.broken:
                self._restore()
            return pages
        metrics.BATCH_SIZE.observe(self.uncommitted)
        self.uncommitted = 0
        return pages

    def recover(self, everything: bool = False) -> list[Page]:
        """Apply what the log holds (at start, or after a failure) and commit it: every frame
        up to the last one taken (those after it are still on their way), or all of them at
        start (none taken yet) or with `everything`, which only a caller that knows no front
        is writing may ask for (the service, before it starts one, and after one died).
        Returns the pages it decided; raises when the storage still fails."""
        self.store.rollback_batch()
        self.ingest.rolled_back()
        upto = None if everything else self._taken
        own, torn = self.deliveries.records()
        frames, torn_frames, last_segment = segment_records(self.log_dir, upto)
        if torn or torn_frames:
            log.warning("message log: %d torn trailing byte(s) dropped (never acknowledged)",
                        torn + torn_frames)
        # A log left by the version before segments holds frames too, older than any segment's.
        records = ([r for r in own if r[0] != DELIVERED] + [r for _, r in frames]
                   + [r for r in own if r[0] == DELIVERED])
        pages, delivered = [], set()
        self.store.begin_batch()
        try:
            for kind, payload in records:
                if kind == MESSAGE:
                    pages += self.ingest.apply(payload, time.perf_counter(), again=True)
                elif kind == DELIVERED:
                    body, _, attempts = payload.decode().partition("\0")
                    self.store.page_delivered(body, int(attempts))
                    delivered.add(body)
                else:
                    self.ingest.set_aside_frame(frame_of(kind, payload), again=True)
            self.store.commit_batch()
        except Exception:
            self.store.rollback_batch()
            self.ingest.rolled_back()
            self.broken = True
            raise
        self.ingest.committed()
        self.deliveries.clear()
        if last_segment is not None:
            # The last segment read stays while a writer may still append to it.
            drop_segments(self.log_dir, before=last_segment + (upto is None))
        self.broken = False
        self.uncommitted = 0
        if records:
            log.info("message log: %d record(s) applied again and committed", len(records))
        return [p for p in pages if p.body not in delivered]

    def _drop_committed(self) -> None:
        """After a commit: the deliveries, and the segments whose frames are all committed."""
        self.deliveries.clear()
        if self._taken is not None:
            drop_segments(self.log_dir, before=self._taken[0])

    def close(self) -> None:
        self.deliveries.close()
        if self.frames is not None:
            self.frames.close()

    def _restore(self, storage: bool = True) -> None:
        """After a failure (of the storage, or of a message applied without a savepoint):
        drop the batch and the memory built on it."""
        if storage:
            metrics.STORAGE_FAILURES.inc()
        try:
            self.store.rollback_batch()
        except Exception as e:  # noqa: BLE001 - the connection may be gone; recover() retries
            log.error("rollback failed: %s", e)
        self.ingest.rolled_back()
        self.broken = True


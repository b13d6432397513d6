"""Acknowledge fast, lose nothing: a write-ahead message log, then the ACK, then the work.

`accept()` appends a frame to the message log (one `write()`, `fdatasync`ed too with durability
"machine") and returns its ACK; the caller sends the ACK, then calls `settle()`, which applies
the frame to the state inside a long transaction and returns the page to send, if any.
Applying a message (parse, state, detector) overlaps with the hospital reading the ACK and
sending the next message, instead of adding to every round trip. The log is the
durable record of an acknowledged message: the transaction commits, and the log is emptied,
every BATCH_MAX messages or BATCH_SECONDS after the first uncommitted one. A crash loses the
uncommitted batch from the database but not from the log: `recover()` applies the log again
at the next start, and the journal's keys skip what was committed. The log also records each
page the pager accepted (`delivered()`), so a page decided again by a recovery is not resent.

Any storage failure while applying (disk full, read-only) rolls the whole batch back, forgets
the patients held in memory and marks the batch broken; the next `accept()` or `flush()`
re-applies the log first, so the database, the memory and the log agree again. A message is
applied without a savepoint of its own (two statements fewer each); when one fails midway for
another reason (a bug, a poison message), the batch is rebuilt from the log the same way, with
each message in a savepoint, so that it is retried and set aside alone (ingest.py). A frame that
cannot be appended to the log is not acknowledged: the hospital resends it.

With `commit_each` (replicas sharing a PostgreSQL state) there is no log: a standby taking
over must find everything the leader acknowledged, and it cannot read this pod's disk, so each
message is applied and committed before its ACK.
"""

from __future__ import annotations

import logging
import time

from . import metrics
from .ingest import Ingest, Page, Unisolated, acknowledgement
from .mllp import FrameError
from .store.msglog import DELIVERED, FRAME_ERROR, MESSAGE, MessageLog
from .store import Store

log = logging.getLogger(__name__)

# The log makes a message durable, so these bound only the log's size, the work a restart
# re-applies (≤ ~0.2 s) and how stale other readers' view is (the console, a replay). A larger
# batch writes each of the state's pages fewer times per message (docs/performance.md).
BATCH_MAX = 1024
BATCH_SECONDS = 0.1

Frame = bytes | FrameError


class Durable:
    def __init__(self, store: Store, ingest: Ingest, msglog: MessageLog,
                 commit_each: bool = False) -> None:
        """`commit_each`: apply and commit every message before its ACK, without the log."""
        self.store = store
        self.commit_each = commit_each
        self.ingest = ingest
        self.msglog = msglog
        self.uncommitted = 0                  # messages applied since the last commit
        self.batch_started = 0.0              # monotonic time of the first of them
        self.broken = False                   # a failure left the batch to be re-applied
        self._accepted: tuple[Frame, float] | None = None
        self._recovered: list[Page] = []      # pages decided before settle() hands them out

    def accept(self, item: Frame, received: float) -> bytes:
        """Make one frame durable; returns its ACK. Raises when it cannot (the frame must not
        be acknowledged). Call `settle()` after sending the ACK, even if sending failed."""
        if self.broken:
            self._recovered += self.recover()
        if self.commit_each:
            page = self._apply(item, received, isolated=True)
            if page is not None:
                self._recovered.append(page)
        else:
            if isinstance(item, FrameError):
                self.msglog.append(FRAME_ERROR, item.reason.encode() + b"\0" + item.prefix)
            else:
                self.msglog.append(MESSAGE, item)
            self._accepted = (item, received)
        return acknowledgement(item)

    def settle(self) -> list[Page]:
        """Apply the frame accepted last; returns the pages to send (its own, and any decided
        by a recovery in accept()). Never raises: after a storage failure the batch is
        restored from the log by the next accept() or flush()."""
        pages, self._recovered = self._recovered, []
        if self._accepted is None:
            return pages
        item, received = self._accepted
        self._accepted = None
        if not self.uncommitted:
            self.batch_started = time.monotonic()
        try:
            self.store.begin_batch()
            page = self._apply(item, received, isolated=False)
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
        if page is not None:
            pages.append(page)
        return pages

    def delivered(self, body: str, attempts: int) -> None:
        """The pager accepted a page, and its outbox row says so in the open batch. The log
        keeps that fact until the batch commits, so that a crash before then does not send the
        page again (a commit after every delivery would cost the reader its batch). Raises
        when the log cannot take it (the page may then be sent once more after a crash)."""
        if not self.commit_each:              # there, the row's update is its own commit
            self.msglog.append(DELIVERED, f"{body}\0{attempts}".encode())

    def _apply(self, item: Frame, received: float, isolated: bool) -> Page | None:
        if isinstance(item, FrameError):
            self.ingest.set_aside_frame(item)
            return None
        return self.ingest.apply(item, received, isolated)

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
            self.msglog.clear()
        except Exception as e:  # noqa: BLE001 - any failure here is our storage's
            log.error("cannot commit the state (%s): the message log keeps the batch", e)
            if not self.broken:
                self._restore()
            return pages
        metrics.BATCH_SIZE.observe(self.uncommitted)
        self.uncommitted = 0
        return pages

    def recover(self) -> list[Page]:
        """Apply what the log holds (at start, or after a failure) and commit it. Returns the
        pages it decided; raises when the storage still fails."""
        self.store.rollback_batch()
        self.ingest.forget()
        records, torn = self.msglog.records()
        if torn:
            log.warning("message log: %d torn trailing byte(s) dropped (never acknowledged)",
                        torn)
        pages, delivered = [], set()
        self.store.begin_batch()
        try:
            for kind, payload in records:
                if kind == MESSAGE:
                    page = self.ingest.apply(payload, time.perf_counter())
                    if page is not None:
                        pages.append(page)
                elif kind == DELIVERED:
                    body, _, attempts = payload.decode().partition("\0")
                    self.store.page_delivered(body, int(attempts))
                    delivered.add(body)
                else:
                    reason, _, prefix = payload.partition(b"\0")
                    self.ingest.set_aside_frame(FrameError(reason.decode(), prefix))
            self.store.commit_batch()
        except Exception:
            self.store.rollback_batch()
            self.ingest.forget()
            self.broken = True
            raise
        self.msglog.clear()
        self.broken = False
        self.uncommitted = 0
        if records:
            log.info("message log: %d record(s) applied again and committed", len(records))
        return [p for p in pages if p.body not in delivered]

    def _restore(self, storage: bool = True) -> None:
        """After a failure (of the storage, or of a message applied without a savepoint):
        drop the batch and the memory built on it."""
        if storage:
            metrics.STORAGE_FAILURES.inc()
        try:
            self.store.rollback_batch()
        except Exception as e:  # noqa: BLE001 - the connection may be gone; recover() retries
            log.error("rollback failed: %s", e)
        self.ingest.forget()
        self.broken = True

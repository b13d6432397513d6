"""Acknowledge fast, lose nothing: batched commits behind a write-ahead message log.

Each message is applied to the state inside a long transaction (its own SAVEPOINT), appended
to the message log, and only then acknowledged. The transaction is committed, and the log
emptied, every BATCH_MAX messages or BATCH_SECONDS after the first uncommitted one, whichever
comes first. A crash loses the uncommitted batch from the database but not from the log: at the
next start `recover()` applies the log again, and the journal's digests skip what was committed.

Any storage failure (disk full, read-only, the log not writable) rolls the whole batch back,
forgets the patients held in memory and re-applies the log, so the database, the memory and
the log agree again; the message in hand is not acknowledged and the hospital resends it.
"""

from __future__ import annotations

import logging
import time

from . import metrics
from .ingest import Ingest, Page
from .mllp import FrameError
from .store.msglog import FRAME_ERROR, MESSAGE, MessageLog
from .store import Store, is_storage_failure

log = logging.getLogger(__name__)

BATCH_MAX = 256
BATCH_SECONDS = 0.02


class Durable:
    def __init__(self, store: Store, ingest: Ingest, msglog: MessageLog,
                 commit_each: bool = False) -> None:
        """`commit_each`: commit every message before its ACK (replicas sharing a PostgreSQL
        state: a standby taking over must find everything the leader acknowledged, and it
        cannot read this pod's message log)."""
        self.store = store
        self.commit_each = commit_each
        self.ingest = ingest
        self.msglog = msglog
        self.uncommitted = 0                  # messages applied since the last commit
        self.broken = False                   # a failure left the batch to be re-applied

    def handle(self, item: bytes | FrameError, received: float) -> tuple[bytes, Page | None]:
        """Apply one frame; returns the ACK and the page to send. Raises on a storage failure
        (after restoring a consistent state), and the message must not be acknowledged."""
        if self.broken:
            self.recover()
        try:
            self.store.begin_batch()
            if isinstance(item, FrameError):
                reply, page = self.ingest.set_aside_frame(item), None
                self.msglog.append(FRAME_ERROR, item.reason.encode() + b"\0" + item.prefix)
            else:
                reply, page = self.ingest.handle(item, received)
                self.msglog.append(MESSAGE, item)
            if self.commit_each:
                self.store.commit_batch()
                self.msglog.clear()
                return reply, page
        except Exception as e:
            if is_storage_failure(e):
                self._restore()
            raise
        self.uncommitted += 1
        return reply, page

    @property
    def due(self) -> bool:
        return self.uncommitted >= BATCH_MAX

    def flush(self) -> None:
        """Commit the batch and empty the log. Never raises: on failure the batch is restored
        from the log and retried with the next message or flush."""
        if not self.uncommitted and not self.broken:
            return
        try:
            if self.broken:
                self.recover()
                return
            self.store.commit_batch()
            self.msglog.clear()
        except Exception as e:  # noqa: BLE001 - any failure here is our storage's
            log.error("cannot commit the state (%s): the message log keeps the batch", e)
            if not self.broken:
                self._restore()
            return
        metrics.BATCH_SIZE.observe(self.uncommitted)
        self.uncommitted = 0

    def recover(self) -> int:
        """Apply what the log holds (at start, or after a failure) and commit it. Returns the
        number of records applied; raises when the storage still fails."""
        self.store.rollback_batch()
        self.ingest.forget()
        records, torn = self.msglog.records()
        if torn:
            log.warning("message log: %d torn trailing byte(s) dropped (never acknowledged)",
                        torn)
        self.store.begin_batch()
        try:
            for kind, payload in records:
                if kind == MESSAGE:
                    self.ingest.handle(payload, time.perf_counter())
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
        return len(records)

    def _restore(self) -> None:
        """After a storage failure: drop the batch and the memory built on it."""
        metrics.STORAGE_FAILURES.inc()
        try:
            self.store.rollback_batch()
        except Exception as e:  # noqa: BLE001 - the connection may be gone; recover() retries
            log.error("rollback failed: %s", e)
        self.ingest.forget()
        self.broken = True

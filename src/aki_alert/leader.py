"""Leadership among replicas sharing a PostgreSQL state: a lease with an expiry, and fencing.

Any number of replicas may run; the one holding the lease (a row in `leader_lease`) is the
leader: only it reads the MLLP feed, writes the state and pages. It renews the lease every
quarter of LEASE_SECONDS; a replica takes over once the lease has expired by the database's
clock. A session advisory lock would not do: a paused process (SIGSTOP, a long GC, a frozen
VM) keeps its connection and so its lock, and resumes believing it still leads.

Fencing: the leader trusts its lease only until `valid_until`, three quarters of the lease
after the request that granted it was *sent*, on its own monotonic clock. Every ACK and every
page checks `valid()` first, so a leader that was paused past its lease acknowledges and pages
nothing when it resumes, however late it notices; it then stops (exit code 3) and, restarted,
waits as a standby. The state's commits are fenced in the database as well (`confirm`, run
inside each transaction before its COMMIT): a leader paused between its own check and a
commit cannot commit once another replica holds the lease, and the row lock it takes on the
lease keeps a successor from taking over in the middle of that commit, so the successor reads
every message its predecessor committed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
import time
import uuid

log = logging.getLogger(__name__)

SAFETY = 0.75
_SETUP_LOCK = 0x616B6931   # "aki1": serialises the lease table's creation
_NOW = "extract(epoch from clock_timestamp())"


class LeadershipLost(Exception):
    """This replica no longer holds the lease: it must not acknowledge or page."""


class Lease:
    def __init__(self, url: str, ttl: float, holder: str | None = None) -> None:
        self.url = url
        self.ttl = ttl
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.epoch: int | None = None
        self.valid_until = 0.0
        self.lost = threading.Event()
        self.on_lost: Callable[[], None] = lambda: None
        import psycopg  # only replicas on PostgreSQL need it

        self._error = psycopg.Error
        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=3)
        # Replicas starting together: CREATE TABLE IF NOT EXISTS is not safe against itself.
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
            self.conn.execute("CREATE TABLE IF NOT EXISTS leader_lease (id INTEGER PRIMARY KEY, "
                              "holder TEXT NOT NULL, epoch BIGINT NOT NULL, "
                              "expires_at DOUBLE PRECISION NOT NULL)")
            self.conn.execute("INSERT INTO leader_lease VALUES (1, '', 0, 0) "
                              "ON CONFLICT DO NOTHING")

    def _grant(self, query: str, params: tuple) -> bool:
        sent = time.monotonic()
        try:
            row = self.conn.execute(query, params).fetchone()
        except self._error as e:
            log.warning("lease request failed: %s", e)
            return False
        if row is None:
            return False
        self.epoch = row[0]
        self.valid_until = sent + self.ttl * SAFETY
        return True

    def try_acquire(self) -> bool:
        """Take the lease if it has expired (or is ours)."""
        return self._grant(
            f"UPDATE leader_lease SET holder = %s, epoch = epoch + 1, expires_at = {_NOW} + %s "
            f"WHERE id = 1 AND (expires_at < {_NOW} OR holder = %s) RETURNING epoch",
            (self.holder, self.ttl, self.holder))

    def renew(self) -> bool:
        """Extend our lease; False once another replica holds it (or the database is gone),
        or once a commit found it lapsed (`confirm`)."""
        if self.lost.is_set():
            return False
        return self._grant(
            f"UPDATE leader_lease SET expires_at = {_NOW} + %s "
            "WHERE id = 1 AND holder = %s AND epoch = %s RETURNING epoch",
            (self.ttl, self.holder, self.epoch))

    def current(self) -> tuple[str, float]:
        """Who holds the lease now, and for how many more seconds (negative: lapsed)."""
        holder, left = self.conn.execute(
            f"SELECT holder, expires_at - {_NOW} FROM leader_lease WHERE id = 1").fetchone()
        return holder, left

    def confirm(self, conn) -> None:
        """Inside a transaction of the state (on its connection `conn`), just before its
        COMMIT: raise LeadershipLost unless this replica's lease still stands by the
        database's clock, and hold the lease's row (FOR SHARE) until the commit, so that no
        other replica can take the lease in between. A lapsed lease is lost for good."""
        row = conn.execute(
            "SELECT 1 FROM leader_lease WHERE id = 1 AND holder = %s AND epoch = %s "
            f"AND expires_at > {_NOW} FOR SHARE", (self.holder, self.epoch)).fetchone()
        if row is None:
            self.valid_until = 0.0
            if not self.lost.is_set():
                self.lost.set()
                self.on_lost()
            raise LeadershipLost(f"lease of epoch {self.epoch} no longer stands in the "
                                 "database: the transaction is rolled back")

    def valid(self) -> bool:
        return self.epoch is not None and time.monotonic() < self.valid_until

    def check(self) -> None:
        if not self.valid():
            raise LeadershipLost(f"lease of epoch {self.epoch} is no longer valid")

    def wait(self) -> None:
        """Block until this replica leads."""
        announced = False
        while not self.try_acquire():
            if not announced:
                log.info("standby: another replica leads; waiting for its lease to lapse")
                announced = True
            time.sleep(self.ttl / 4)
        log.info("leader: lease epoch %d held by %s", self.epoch, self.holder)

    def keep_renewing(self) -> None:
        """Renew in a thread of its own (its own connection), from the moment this replica
        leads: through a long start-up (a history import) and while its feed is busy or
        blocked. If a renewal fails, `lost` is set and `on_lost()` called, once."""
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.wait(self.ttl / 4):
                if not self.renew():
                    self.lost.set()
                    self.on_lost()
                    return

        self._renewer = threading.Thread(target=run, name="lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Hand over at once on a clean stop."""
        if getattr(self, "_renewer", None) is not None:
            self._stop.set()
            self._renewer.join(self.ttl)
        try:
            self.conn.execute("UPDATE leader_lease SET expires_at = 0 "
                              "WHERE id = 1 AND holder = %s AND epoch = %s",
                              (self.holder, self.epoch))
            self.conn.close()
        except self._error as e:
            log.warning("could not release the lease: %s", e)

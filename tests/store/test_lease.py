"""The leader lease against a real PostgreSQL: one holder at a time, takeover after expiry, and
a holder that slept past its lease knows it without asking the database."""

import time

import pytest

from aki_alert.leader import SAFETY, Lease, LeadershipLost


def test_one_leader_takeover_after_expiry_and_fencing(postgres_url):
    a = Lease(postgres_url, ttl=0.6, holder="a")
    b = Lease(postgres_url, ttl=0.6, holder="b")
    assert a.try_acquire() and a.valid() and a.epoch == 1
    assert not b.try_acquire()                   # a holds it
    assert a.renew()
    time.sleep(0.6 * SAFETY + 0.05)
    assert not a.valid()                         # a's own clock says: no longer trusted
    with pytest.raises(LeadershipLost):
        a.check()
    time.sleep(0.6)                              # the database's expiry has passed too
    assert b.try_acquire() and b.epoch == 2
    assert not a.renew()                         # a cannot come back with its old epoch
    b.release()
    assert a.try_acquire() and a.epoch == 3      # a clean release hands over at once
    a.release()


def _fenced(url, lease):
    from aki_alert.store.postgres import PostgresStore

    store = PostgresStore(url)
    store.fence_commits(lease.confirm)
    return store


def _journal_rows(store):
    return store.query("SELECT count(*) FROM journal").fetchone()[0]


def _journal(store, n):
    store.journal(bytes([n]) * 32, "result", "7", "applied", "", b"MSH|")


def test_a_commit_after_the_lease_passed_to_another_replica_is_rolled_back(postgres_url):
    """The leader's own clock still trusts its lease (a pause between its check and its
    commit), but the database has given the lease to another replica: the commit is refused,
    the transaction rolled back, and the lease marked lost (the service then stops)."""
    a = Lease(postgres_url, ttl=30, holder="a")
    b = Lease(postgres_url, ttl=30, holder="b")
    assert a.try_acquire()
    lost = []
    a.on_lost = lambda: lost.append(True)
    store = _fenced(postgres_url, a)
    try:
        with store.transaction():
            _journal(store, 1)
        assert _journal_rows(store) == 1 and a.valid()
        # The lease lapses in the database (a pause longer than it), and b takes it.
        b.conn.execute("UPDATE leader_lease SET expires_at = 0")
        assert b.try_acquire()
        assert a.valid()                          # a's clock has not noticed yet
        with pytest.raises(LeadershipLost):
            with store.transaction():
                _journal(store, 2)
        assert _journal_rows(store) == 1 and not store.in_transaction
        assert lost == [True] and a.lost.is_set() and not a.valid()
        # A batch is fenced in the same way.
        store.begin_batch()
        _journal(store, 3)
        with pytest.raises(LeadershipLost):
            store.commit_batch()
        assert _journal_rows(store) == 1 and not store.in_transaction
        from aki_alert.store import is_storage_failure
        assert is_storage_failure(LeadershipLost("x"))   # never dead-letters the message
    finally:
        store.close()
        a.conn.close()
        b.release()


def test_no_replica_takes_the_lease_while_a_fenced_commit_is_under_way(postgres_url):
    """Between the fence and the COMMIT the leader holds the lease's row: a takeover waits
    for the commit, so the successor reads everything its predecessor committed."""
    import psycopg

    a = Lease(postgres_url, ttl=30, holder="a")
    assert a.try_acquire()
    other = psycopg.connect(postgres_url, autocommit=True)
    try:
        with a.conn.transaction():
            a.confirm(a.conn)                     # the fence, its transaction still open
            other.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute("UPDATE leader_lease SET holder = 'b', epoch = epoch + 1")
        other.execute("UPDATE leader_lease SET expires_at = 0")   # committed: free again
    finally:
        other.close()
        a.conn.close()


def test_a_lease_a_commit_found_lapsed_is_not_renewed(postgres_url):
    """Lapsed in the database, taken by nobody yet: the commit is refused, and the renewing
    thread does not quietly take the lease back (the replica is stepping down)."""
    import psycopg

    a = Lease(postgres_url, ttl=30, holder="a")
    assert a.try_acquire()
    other = psycopg.connect(postgres_url, autocommit=True)
    try:
        other.execute("UPDATE leader_lease SET expires_at = 0")
        with pytest.raises(LeadershipLost):
            with a.conn.transaction():
                a.confirm(a.conn)
        assert not a.renew() and not a.valid()
        holder, left = a.current()
        assert holder == "a" and left < 0                 # still lapsed: free for a standby
    finally:
        other.close()
        a.conn.close()

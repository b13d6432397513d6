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

from hypothesis import given
from hypothesis import strategies as st

from aki_alert.episodes import EPISODE_DAYS, episode_start_after, opens_episode
from aki_alert.timeutil import DAY

W = EPISODE_DAYS * DAY


def test_first_positive_opens_an_episode():
    assert opens_episode(None, 0)


def test_window_is_symmetric():
    assert not opens_episode(1000 * DAY, 1000 * DAY + W - 1)
    assert not opens_episode(1000 * DAY, 1000 * DAY - W + 1)
    assert opens_episode(1000 * DAY, 1000 * DAY + W)
    assert opens_episode(1000 * DAY, 1000 * DAY - W)


@given(st.one_of(st.none(), st.integers(0, 10**9)), st.integers(0, 10**9))
def test_the_start_never_moves_back(start, t):
    new = episode_start_after(start, t)
    assert new >= t and (start is None or new >= start)

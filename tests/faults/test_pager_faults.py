"""A pager that is down for a while, that hangs, and that answers 500 half the time."""

from __future__ import annotations

import pytest

from aki_alert.hospital.pager_server import PagerFaults
from aki_alert.pager import BACKOFF_CAP, REQUEST_TIMEOUT
from aki_alert.timeutil import DAY

from .harness import finish, outcome, query

pytestmark = pytest.mark.timeout(90)

STREAM_SECONDS = 6.0            # the outage run streams in real time, sped up to last this long
OUTAGE = (1.0, 4.5)             # seconds after the hospital starts: 503 to every page

SCENARIOS = {
    # 3.5 s of a 6 s stream of 40 days: about 23 simulated days, a third of the pages.
    "outage": PagerFaults(outage=OUTAGE, seed=1),
    # A hung request is abandoned after the service's REQUEST_TIMEOUT and retried.
    "hang": PagerFaults(hang_rate=0.2, hang_seconds=60.0, seed=2),
    "fail-half": PagerFaults(fail_rate=0.5, seed=3),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_pager_faults_every_page_delivered_once(tmp_path, stream, harness, name):
    """The feed never waits on the pager and no page is given up: a dispatcher that dropped a
    page after a failure (or a timeout) would leave a false negative and a row not delivered;
    one that retried a page the pager had accepted would show as a repeat (pages > distinct);
    one that blocked the feed on the pager would stall the hospital (its 10 s deadline)."""
    faults = SCENARIOS[name]
    speed = 40 * DAY / STREAM_SECONDS if name == "outage" else None
    state = harness.state(tmp_path / "state")
    h = harness.hospital(stream.messages, stream.rows, pager_faults=faults, speed=speed)
    proc = harness.serve(h, state, stream.history)
    finish(h, proc, state, timeout=60)
    code, _, log = harness.terminate(proc)
    live = h.score()
    responses = dict(h.hospital.pager.responses)
    assert code == 0, log[-3000:]
    assert h.hospital.connections == 1 and h.hospital.nacked == 0, dict(h.hospital.drops)
    assert outcome(live) == outcome(stream.expected), live.summary()
    distinct = live.tp + live.fp
    assert distinct == len(set(stream.expected_pages))
    assert live.pages == distinct, f"{live.pages - distinct} page(s) accepted twice"
    assert query(state, "SELECT count(*) FROM outbox WHERE status != 'delivered'") == 0
    assert live.latency_p50 is not None
    worst = live.latency_p99
    if name == "outage":
        assert responses.get(503, 0) > 10, responses           # pages really met the outage
        assert worst > 1.0                                      # ... and waited for its end
        assert worst < OUTAGE[1] - OUTAGE[0] + BACKOFF_CAP + 1.0
    elif name == "hang":
        assert responses.get(0, 0) > 0, responses
        assert worst >= REQUEST_TIMEOUT
    else:
        assert responses.get(500, 0) > 10, responses
        assert worst < 2 * BACKOFF_CAP
    print(f"\npager {name}: responses {responses}; {live.summary()}")

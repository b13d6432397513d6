"""The dispatcher against a real aiohttp pager on 127.0.0.1: retry, dead letter, restart."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from aiohttp import web

from aki_alert import pager as pager_mod
from aki_alert.pager import Dispatcher, Policy, backoff
from aki_alert.store import open_store


class FakePager:
    """A real HTTP server whose answers are scripted per request."""

    def __init__(self, script, keepalive_timeout=75.0):
        self.script = list(script)   # statuses, then 200 forever; "hang" sleeps past the timeout
        self.received: list[str] = []
        self.keepalive_timeout = keepalive_timeout

    async def handle(self, request):
        self.received.append(await request.text())
        status = self.script.pop(0) if self.script else 200
        if status == "hang":
            await asyncio.sleep(2)
            status = 200
        return web.Response(status=status, text="ok\n" if status == 200 else "bad\n")

    async def __aenter__(self):
        app = web.Application()
        app.router.add_post("/page", self.handle)
        self.runner = web.AppRunner(app, keepalive_timeout=self.keepalive_timeout)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.address = f"127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


@pytest.fixture
def store(tmp_path, backend):
    """The outbox on both backends (ids end in [sqlite] / [postgresql])."""
    s = open_store(str(tmp_path), backend.url, "process")
    yield s
    s.close()


def fast(timeout: float = 0.5, **kw) -> Policy:
    """The default policy, with a millisecond's backoff, the given attempt timeout and no
    hedging (a loaded machine's slow answer would add a request the tests do not count on);
    `kw` overrides any of them."""
    return replace(Policy(), **{"backoff_first": 0.001, "attempt_timeout": timeout,
                                "hedge_min": 30.0, "hedge_max": 30.0, **kw})


def queue(store, body):
    with store.transaction():
        return store.add_page(body.split(",")[0], 0, body, "{}", 1)


def status(store, page_id):
    return tuple(store._x("SELECT status, attempts, last_error FROM outbox WHERE id = ?",
                          (page_id,)).fetchone())


async def settle(d):
    """Let the event loop finish the deliveries handed to it, then stop the dispatcher."""
    for _ in range(500):
        if not d.in_flight:
            break
        await asyncio.sleep(0.01)
    await d.drain(0.1)


async def deliver(store, address, pages, timeout=0.5):
    d = Dispatcher(store, address, policy=fast(timeout))
    await d.start()
    for _, body in pages:
        d.submit(body, None)
    await settle(d)


def test_transient_failures_are_retried_until_delivered(store):
    async def go():
        async with FakePager([500, 503, "hang"]) as p:
            pid = queue(store, "7,20240101000000")
            await deliver(store, p.address, [(pid, "7,20240101000000")], timeout=0.3)
            return p, pid
    p, pid = asyncio.run(go())
    assert p.received[-1] == "7,20240101000000" and len(p.received) == 4
    assert status(store, pid)[:2] == ("delivered", 4)


def test_a_400_is_dead_lettered_with_the_pagers_answer(store):
    async def go():
        async with FakePager([400]) as p:
            pid = queue(store, "7,2024")
            await deliver(store, p.address, [(pid, "7,2024")])
            return p, pid
    p, pid = asyncio.run(go())
    assert len(p.received) == 1
    assert status(store, pid) == ("dead", 1, "400 bad")


def test_refused_connection_is_retried_and_pending_pages_resent_at_start(store):
    pid = queue(store, "8,20240101000000")

    async def refused():
        # One attempt, then a long backoff: the refusal is the last error recorded, however
        # slowly a loaded machine runs (a short attempt timeout could record "timeout").
        d = Dispatcher(store, "127.0.0.1:1",
                       policy=fast(5.0, backoff_first=60.0, backoff_cap=60.0))
        await d.start()                    # resends the pending row, which fails
        for _ in range(500):
            if status(store, pid)[1] >= 1:
                break
            await asyncio.sleep(0.01)
        await d.drain(0.01)
    asyncio.run(refused())
    state, attempts, error = status(store, pid)
    assert state == "pending" and attempts >= 1 and "Connect" in error

    async def restarted():
        async with FakePager([]) as p:
            await deliver(store, p.address, [])   # nothing submitted: start() finds the row
            return p
    p = asyncio.run(restarted())
    assert p.received == ["8,20240101000000"]
    assert status(store, pid)[0] == "delivered"


async def send_now(store, address, bodies, *, between=0.0):
    """What the reader thread does with each page it decides: queue and claim it, then
    send_now from a thread of its own; then the event loop finishes what was handed to it.
    Returns the dispatcher and the pages' ids."""
    d = Dispatcher(store, address, policy=fast(0.5))
    await d.start()
    ids = []
    for body in bodies:
        ids.append(queue(store, body))
        d.claim([body])
        await asyncio.to_thread(d.send_now, body, time.perf_counter())
        await asyncio.sleep(between)
    await settle(d)
    return d, ids



def test_send_now_delivers_from_the_reader_thread_without_the_event_loop(store):
    async def go():
        async with FakePager([]) as p:
            d, ids = await send_now(store, p.address, ["1,20240101000000", "2,20240101000000"])
            return p, ids, d
    p, ids, d = asyncio.run(go())
    assert p.received == ["1,20240101000000", "2,20240101000000"]
    assert [status(store, i) for i in ids] == [("delivered", 1, None)] * 2
    assert d.tasks_started == 0 and not d._created


def test_a_claimed_page_is_not_resent_by_housekeeping_while_the_reader_sends_it(store):
    async def go():
        async with FakePager([]) as p:
            d = Dispatcher(store, p.address, policy=fast(0.5))
            await d.start()
            pid = queue(store, "1,20240101000000")     # decided, pending in the outbox ...
            d.claim(["1,20240101000000"])              # ... and claimed in the same hold
            d.resubmit_pending()                       # housekeeping runs before the send
            await asyncio.to_thread(d.send_now, "1,20240101000000", time.perf_counter())
            await settle(d)
            return p, pid
    p, pid = asyncio.run(go())
    assert p.received == ["1,20240101000000"]
    assert status(store, pid) == ("delivered", 1, None)


def test_a_failed_inline_attempt_is_retried_by_the_event_loop_and_pauses_inline_sending(store):
    async def go():
        async with FakePager([503, 503]) as p:
            d, ids = await send_now(store, p.address, ["1,20240101000000", "2,20240101000000"])
            return p, ids, d
    p, ids, d = asyncio.run(go())
    # Page 1: inline 503, then the event loop's 503 and 200. Page 2 went straight to the
    # event loop (inline sending paused), which delivered it at its first attempt.
    assert p.received.count("1,20240101000000") == 3
    assert p.received.count("2,20240101000000") == 1
    assert status(store, ids[0])[:2] == ("delivered", 3)
    assert status(store, ids[1])[:2] == ("delivered", 1)
    assert d.tasks_started == 2


def test_a_hung_pager_stalls_the_reader_only_for_the_inline_timeout(store, monkeypatch):
    monkeypatch.setattr(pager_mod, "INLINE_TIMEOUT", 0.2)

    async def go():
        async with FakePager(["hang"]) as p:
            d = Dispatcher(store, p.address, policy=fast(0.5))
            await d.start()
            pid = queue(store, "1,20240101000000")
            d.claim(["1,20240101000000"])
            started = time.monotonic()
            await asyncio.to_thread(d.send_now, "1,20240101000000", time.perf_counter())
            stalled = time.monotonic() - started
            await settle(d)
            return pid, stalled
    pid, stalled = asyncio.run(go())
    assert 0.2 <= stalled < 1.0
    assert status(store, pid)[:2] == ("delivered", 2)


def test_a_kept_alive_connection_the_pager_closed_is_reopened_without_a_failure(store):
    async def go():
        # The pager closes idle connections after 50 ms; pages come 300 ms apart.
        async with FakePager([], keepalive_timeout=0.05) as p:
            d, ids = await send_now(store, p.address,
                                    [f"{i},20240101000000" for i in (1, 2, 3)], between=0.3)
            return p, ids, d
    p, ids, d = asyncio.run(go())
    assert [status(store, i) for i in ids] == [("delivered", 1, None)] * 3
    assert d.tasks_started == 0


def test_backoff_is_capped_and_jittered():
    delays = [backoff(n, first=0.1, cap=2.0) for n in range(1, 30)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert max(delays[10:]) <= 2.0 and min(delays[10:]) >= 1.0


def test_a_hung_attempt_is_hedged_long_before_its_timeout(store):
    async def go():
        async with FakePager(["hang"]) as p:      # the first request hangs 2 s
            d = Dispatcher(store, p.address, policy=fast(5.0, hedge_min=0.05, hedge_max=0.1))
            await d.start()
            pid = queue(store, "9,20240101000000")
            started = time.monotonic()
            d.submit("9,20240101000000", None)
            while d.in_flight:
                await asyncio.sleep(0.005)
            took = time.monotonic() - started
            await d.drain(0.1)
            return p, pid, took
    p, pid, took = asyncio.run(go())
    assert took < 1.0                             # not the 2 s hang, nor the 5 s timeout
    assert p.received == ["9,20240101000000"] * 2
    assert status(store, pid) == ("delivered", 2, None)


def test_an_open_circuit_holds_new_pages_from_the_reader_thread(store):
    async def go():
        d = Dispatcher(store, "127.0.0.1:1", policy=fast(0.2, open_after=0.05,
                                                         probe_first=10.0))
        await d.start()
        ids = []
        for i in range(3):
            ids.append(queue(store, f"{i},20240101000000"))
            d.submit(f"{i},20240101000000", None)
        for _ in range(200):
            if not d.circuit.closed:
                break
            await asyncio.sleep(0.01)
        assert not d.circuit.closed
        # A page decided now is not sent inline (it would only fail): it waits with the rest.
        ids.append(queue(store, "9,20240101000000"))
        d.claim(["9,20240101000000"])
        await asyncio.to_thread(d.send_now, "9,20240101000000", time.perf_counter())
        for _ in range(200):                 # the hand-over reaches the loop soon, load or not
            if len(d._waiters) == 4:
                break
            await asyncio.sleep(0.01)
        waiting = len(d._waiters)
        await d.drain(0.01)
        return ids, waiting
    ids, waiting = asyncio.run(go())
    assert waiting == 4
    assert status(store, ids[-1]) == ("pending", 0, None)
    assert all(status(store, i)[0] == "pending" for i in ids)

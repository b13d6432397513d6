"""The dispatcher against a real aiohttp pager on 127.0.0.1: retry, dead letter, restart."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from aki_alert import pager as pager_mod
from aki_alert.pager import Dispatcher, backoff
from aki_alert.store import open_store


class FakePager:
    """A real HTTP server whose answers are scripted per request."""

    def __init__(self, script):
        self.script = list(script)   # statuses, then 200 forever; "hang" sleeps past the timeout
        self.received: list[str] = []

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
        self.runner = web.AppRunner(app)
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


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(pager_mod, "BACKOFF_FIRST", 0.001)


def queue(store, body):
    with store.transaction():
        return store.add_page(body.split(",")[0], 0, body, "{}", 1)


def status(store, page_id):
    return tuple(store._x("SELECT status, attempts, last_error FROM outbox WHERE id = ?",
                          (page_id,)).fetchone())


async def deliver(store, address, pages, timeout=0.5):
    d = Dispatcher(store, address, timeout=timeout)
    await d.start()
    for _, body in pages:
        d.submit(body, None)
    for _ in range(500):
        if not d.in_flight:
            break
        await asyncio.sleep(0.01)
    await d.drain(0.1)


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
        d = Dispatcher(store, "127.0.0.1:1", timeout=0.2)
        await d.start()                    # resends the pending row, which fails
        await asyncio.sleep(0.05)
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


def test_backoff_is_capped_and_jittered():
    delays = [backoff(n, first=0.1, cap=2.0) for n in range(1, 30)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert max(delays[10:]) <= 2.0 and min(delays[10:]) >= 1.0

"""The outbox dispatcher: the only code that talks to the pager.

A page is in the outbox before it is sent. The reader thread that decided it sends it at once
(`send_now`: one blocking POST, at most INLINE_TIMEOUT): the page then leaves ~0.1 ms after its
result instead of waiting for the event loop's turn (docs/performance.md). Any failure hands
the page to the event loop, which retries transient failures (timeouts, refused connections,
5xx, any other status) with capped exponential backoff and jitter until the pager accepts it,
across restarts (pending rows are resent at start); until one of those retries succeeds, and
for INLINE_PAUSE at least, new pages also go that way, so a pager that hangs cannot stall the
feed more than once. A 400 means the pager will never accept this body: it is dead-lettered
with the pager's answer. Delivery is at-least-once: a crash between the pager's 200 and our
record of it resends that one page once, which the hospital counts once (same `MRN,time`).

Clients: aiohttp on the event loop (asyncio-native, keep-alive to the one pager host), and the
standard library's http.client in the reader thread (blocking, one keep-alive connection: the
reader needs no event loop for a request that takes ~0.1 ms).
"""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import logging
import random
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import aiohttp

from . import logs, metrics
from .store import Store

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.05
BACKOFF_CAP = 10.0
REQUEST_TIMEOUT = 5.0
# The reader thread's own attempt: a healthy pager answers in a millisecond; one that does not
# answer within this costs the feed this much once, then INLINE_PAUSE of event-loop delivery.
INLINE_TIMEOUT = 0.25
INLINE_PAUSE = 30.0


def backoff(attempt: int, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> float:
    """Delay before retry number `attempt` (1-based): capped exponential, jittered to 50–100%."""
    return min(cap, first * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class Dispatcher:
    def __init__(self, store: Store, pager_address: str,
                 timeout: float = REQUEST_TIMEOUT,
                 may_send: Callable[[], bool] = lambda: True,
                 lock: AbstractContextManager | None = None,
                 delivered: Callable[[str, int], None] = lambda body, attempts: None) -> None:
        """`may_send`: checked before every attempt (fencing: only the leader pages).
        `lock`: held around every use of the store (shared with the MLLP reader thread).
        `delivered(body, attempts)`: called, under `lock`, once a delivery is recorded in the
        store (the service logs it durably, so that a crash before its batch commits does not
        send the page again)."""
        self.store = store
        self.lock = lock or nullcontext()
        self.delivered = delivered
        self.may_send = may_send
        self.url = f"http://{pager_address}/page"
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        host, _, port = pager_address.rpartition(":")
        self._inline = http.client.HTTPConnection(host, int(port), timeout=INLINE_TIMEOUT)
        self._inline_paused_until = 0.0       # monotonic time before which pages go async
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self.tasks_started = 0                # deliveries handed to the event loop
        # Page body -> wall time it became pending, for every page being sent (either way).
        self._created: dict[str, float] = {}
        metrics.OUTBOX_DEPTH.set_function(lambda: len(self._created))
        metrics.OUTBOX_OLDEST.set_function(self._oldest_age)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32, force_close=False),
            timeout=self.timeout,
            headers={"Content-Type": "text/plain"},
        )
        self.resubmit_pending()

    def resubmit_pending(self) -> None:
        """Deliver every pending page of the outbox not already in flight: those left by a
        previous run, or queued by another process (a replay)."""
        with self.lock:
            pending = [p for p in self.store.pending_pages() if p.body not in self._created]
        if pending:
            log.info("sending %d undelivered page(s) from the outbox", len(pending))
        for p in pending:
            self.submit(p.body, None, p.attempts)

    def claim(self, bodies: Iterable[str]) -> None:
        """Mark pages just decided as being sent, under `lock` in the same hold that decided
        them, so that `resubmit_pending` never starts a second delivery of one."""
        now = time.time()
        for body in bodies:
            self._created.setdefault(body, now)

    def submit(self, body: str, received: float | None, attempts: int = 0) -> None:
        """Start delivering a page of the outbox from the event loop (a page already being
        sent is left alone)."""
        if body in self._created:
            return
        self._created[body] = time.time()
        self._start(body, received, attempts)

    def _start(self, body: str, received: float | None, attempts: int) -> None:
        self.tasks_started += 1
        task = asyncio.get_running_loop().create_task(self._deliver(body, received, attempts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send_now(self, body: str, received: float) -> None:
        """From the reader thread: send a claimed page at once, blocking; on failure (or while
        inline sending is paused) hand it to the event loop."""
        attempts = 0
        if time.monotonic() >= self._inline_paused_until and self.may_send():
            attempts = 1
            error = self._post_now(body)
            if error is None:
                self._record_delivery(body, attempts, received)
                self._created.pop(body, None)
                return
            self._inline_paused_until = time.monotonic() + INLINE_PAUSE
            if self._record_failure(body, attempts, error):
                self._created.pop(body, None)
                return
            log.warning("page %s not delivered at once (%s): retried from the event loop, "
                        "which sends new pages too for the next %.0fs", logs.page(body),
                        logs.scrub(error, body.partition(",")[0]), INLINE_PAUSE)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._start, body, received, attempts,
                                        context=contextvars.copy_context())

    def _post_now(self, body: str) -> str | None:
        """http.client's twin of `_post`: None when the pager accepted the page. A kept-alive
        connection the pager has since closed is reopened once, as aiohttp's pool does."""
        conn = self._inline
        reused = conn.sock is not None
        while True:
            try:
                conn.request("POST", "/page", body.encode(), {"Content-Type": "text/plain"})
                resp = conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if reused and isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError,
                                             ConnectionResetError)):
                    reused = False
                    continue
                return "timeout" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            return None if resp.status == 200 else f"{resp.status} {text.strip()[:200]}"

    async def _deliver(self, body: str, received: float | None, attempts: int) -> None:
        assert self._session is not None
        while True:
            if not self.may_send():
                log.warning("not the leader: page %s left in the outbox", logs.page(body))
                break
            attempts += 1
            error = await self._post(body)
            if error is None:
                self._record_delivery(body, attempts, received)
                break
            if self._record_failure(body, attempts, error):
                break
            delay = backoff(attempts)
            log.warning("page %s not delivered (attempt %d: %s); retrying in %.2fs",
                        logs.page(body), attempts, logs.scrub(error, body.partition(",")[0]),
                        delay)
            await asyncio.sleep(delay)
        self._created.pop(body, None)

    def _record_delivery(self, body: str, attempts: int, received: float | None) -> None:
        metrics.PAGES.labels(outcome="delivered").inc()
        try:
            with self.lock:
                self.store.page_delivered(body, attempts)
                self.delivered(body, attempts)
        except Exception as e:  # noqa: BLE001 - resent once after a restart: harmless
            log.error("page %s delivered but not recorded: %s", logs.page(body), e)
        if received is not None:
            metrics.PAGE_LATENCY.observe(time.perf_counter() - received)

    def _record_failure(self, body: str, attempts: int, error: str) -> bool:
        """Record a failed attempt; True when the page is dead (the pager refused it)."""
        dead = error.startswith("400")
        try:
            with self.lock:
                self.store.page_failed(body, attempts, error, dead)
        except Exception as e:  # noqa: BLE001 - the row stays pending; retry still happens
            log.error("cannot record page attempt for %s: %s", logs.page(body), e)
        if dead:
            metrics.PAGES.labels(outcome="dead").inc()
            log.error("pager refused page %s for good: %s (dead-lettered)", logs.page(body),
                      logs.scrub(error, body.partition(",")[0]))
        else:
            metrics.PAGES.labels(outcome="retry").inc()
        return dead

    async def _post(self, body: str) -> str | None:
        """None when the pager accepted the page, else a short description of the failure."""
        try:
            async with self._session.post(self.url, data=body.encode()) as resp:
                text = await resp.text()
                if resp.status == 200:
                    return None
                return f"{resp.status} {text.strip()[:200]}"
        except asyncio.TimeoutError:
            return "timeout"
        except aiohttp.ClientError as e:
            return f"{type(e).__name__}: {e}"

    def _oldest_age(self) -> float:
        oldest = min(self._created.values(), default=None)
        return 0.0 if oldest is None else time.time() - oldest

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Give in-flight deliveries up to `timeout` seconds, then stop them (they stay pending)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self._inline.close()

"""The outbox dispatcher: the only code that talks to the pager.

A page is in the outbox before it is sent. The reader thread that decided it sends it at once
(`send_now`: one blocking POST, at most INLINE_TIMEOUT): the page then leaves ~0.1 ms after its
result instead of waiting for the event loop's turn (docs/performance.md). Any failure hands
the page to the event loop, which delivers it under the policy of `pager/policy.py` (pure logic,
tested alone): short attempt timeouts, a hedged second attempt when the first has no answer in a
few of the pager's usual answer times, short backoff after a failure while the pager accepts
anything at all, and a circuit that, once the pager has accepted nothing for a second, holds the
pages back and sends one at a time as a probe until one is accepted; then every waiting page
goes at once. Deliveries run concurrently (at most `Policy.concurrency` attempts in flight), and
the event loop keeps at it until the pager accepts the page, across restarts (pending rows are
resent at start). Until the circuit is closed, and for INLINE_PAUSE after an inline failure,
new pages go through the event loop too, so a pager that hangs cannot stall the feed more than
once. A 400 means the pager will never accept this body: it is dead-lettered with the pager's
answer. A page is recorded delivered once, by the one coroutine that delivers it, at its first
accepted attempt; the other attempt of a hedge is abandoned, and if the pager accepted that one
too the hospital counts the repeated identical `MRN,time` once. Delivery is at-least-once: a
crash between the pager's 200 and our record of it resends that one page once.

Clients: aiohttp on the event loop (asyncio-native, keep-alive to the one pager host), and the
standard library's http.client in the reader thread (blocking, one keep-alive connection: the
reader needs no event loop for a request that takes ~0.1 ms).
"""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import aiohttp

from .. import logs, metrics
from ..store import Store
from .policy import (
    AnswerTimes,
    Circuit,
    Policy,
    Schedule,
    attempt_timeout,
    backoff,
)

__all__ = ["Dispatcher", "Policy", "backoff", "INLINE_TIMEOUT", "INLINE_PAUSE"]

log = logging.getLogger(__name__)

# The reader thread's own attempt: a healthy pager answers in a millisecond; one that does not
# answer within this costs the feed this much once, then INLINE_PAUSE of event-loop delivery.
INLINE_TIMEOUT = 0.25
INLINE_PAUSE = 30.0


@dataclass(slots=True)
class _Attempt:
    probe: bool
    started: float | None = None          # loop time it got a connection slot


class Dispatcher:
    def __init__(self, store: Store, pager_address: str,
                 policy: Policy | None = None,
                 may_send: Callable[[], bool] = lambda: True,
                 lock: AbstractContextManager | None = None,
                 delivered: Callable[[str, int], None] = lambda body, attempts: None) -> None:
        """`policy`: timeouts, backoff, hedging, circuit (pager/policy.py).
        `may_send`: checked before every attempt (fencing: only the leader pages).
        `lock`: held around every use of the store (shared with the MLLP reader thread).
        `delivered(body, attempts)`: called, under `lock`, once a delivery is recorded in the
        store (the service logs it durably, so that a crash before its batch commits does not
        send the page again)."""
        self.store = store
        self.lock = lock or nullcontext()
        self.delivered = delivered
        self.may_send = may_send
        self.policy = policy = policy or Policy()
        self.url = f"http://{pager_address}/page"
        host, _, port = pager_address.rpartition(":")
        self._inline = http.client.HTTPConnection(host, int(port), timeout=INLINE_TIMEOUT)
        self._inline_paused_until = 0.0       # monotonic time before which pages go async
        self.circuit = Circuit(policy)
        self.answers = AnswerTimes(policy)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()
        self._waiters: deque[asyncio.Future] = deque()    # pages held by the open circuit
        self._probe_timer: asyncio.TimerHandle | None = None
        self.tasks_started = 0                # deliveries handed to the event loop
        self._inline_attempts = metrics.PAGE_ATTEMPTS.labels("inline")
        # Page body -> wall time it became pending, for every page being sent (either way).
        self._created: dict[str, float] = {}
        metrics.OUTBOX_DEPTH.set_function(lambda: len(self._created))
        metrics.OUTBOX_OLDEST.set_function(self._oldest_age)
        metrics.PAGER_CIRCUIT_OPEN.set_function(lambda: 0.0 if self.circuit.closed else 1.0)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.policy.concurrency)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.policy.concurrency, force_close=False),
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

    def _start(self, body: str, received: float | None, attempts: int,
               failed: int = 0) -> None:
        self.tasks_started += 1
        task = asyncio.get_running_loop().create_task(
            self._deliver(body, received, attempts, failed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send_now(self, body: str, received: float) -> None:
        """From the reader thread: send a claimed page at once, blocking; on failure (or while
        inline sending is paused, or the circuit is open) hand it to the event loop."""
        attempts = 0
        if time.monotonic() >= self._inline_paused_until and self.circuit.closed \
                and self.may_send():
            attempts = 1
            self._inline_attempts.inc()
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
        self._loop.call_soon_threadsafe(self._start, body, received, attempts, attempts,
                                        context=contextvars.copy_context())

    def _post_now(self, body: str) -> str | None:
        """http.client's twin of `_post`: None when the pager accepted the page. A kept-alive
        connection the pager has since closed is reopened once, as aiohttp's pool does. Its
        answer time joins the event loop's in `answers` (a deque: its append is atomic)."""
        conn = self._inline
        reused = conn.sock is not None
        while True:
            try:
                sent = time.perf_counter()
                conn.request("POST", "/page", body.encode(), {"Content-Type": "text/plain"})
                resp = conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
                self.answers.add(time.perf_counter() - sent)   # the hedge delay's evidence
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if reused and isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError,
                                             ConnectionResetError)):
                    reused = False
                    continue
                return "timeout" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            return None if resp.status == 200 else f"{resp.status} {text.strip()[:200]}"

    # --- the event loop's deliveries ----------------------------------------------------------
    async def _deliver(self, body: str, received: float | None, attempts: int,
                       failed: int = 0) -> None:
        """Deliver one page: at most `max_parallel` attempts in flight (the second a hedge),
        backoff between failures, through the circuit; the first accepted attempt records the
        delivery and the others are abandoned. `attempts` made before (inline, or in a
        previous run), `failed` of them in a row just now."""
        loop = asyncio.get_running_loop()
        p = self.policy
        schedule = Schedule(p.max_parallel)
        flight: dict[asyncio.Task, _Attempt] = {}
        timeouts = 0
        try:
            while True:
                if not flight:
                    if (delay := schedule.retry_at - loop.time()) > 0:
                        await asyncio.sleep(delay)
                    if not self.may_send():
                        log.warning("not the leader: page %s left in the outbox", logs.page(body))
                        return
                    probe = await self._admit()
                    if not self.may_send():
                        log.warning("not the leader: page %s left in the outbox", logs.page(body))
                        return
                    kind = "probe" if probe else "retry" if failed else "first"
                    timeout = (self.circuit.probe_timeout() if probe else
                               attempt_timeout(timeouts, p.attempt_timeout,
                                               p.attempt_timeout_cap))
                    attempts += 1
                    self._launch(flight, body, _Attempt(probe), timeout, kind)
                    continue
                started = [a.started for a in flight.values() if a.started is not None]
                hedging = self.circuit.closed
                at = schedule.next_start(started, len(flight) - len(started),
                                         self.answers.hedge_delay(), hedging)
                # Look again at least every hedge_max: an attempt waiting for a connection
                # slot starts its hedge clock when it gets one, and a circuit that closed while
                # a probe hangs allows a hedge beside it.
                wait = p.hedge_max if at is None else min(p.hedge_max,
                                                          max(0.0, at - loop.time()))
                done, _ = await asyncio.wait(set(flight), timeout=wait,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if at is not None and loop.time() >= at and self.circuit.closed \
                            and self.may_send():
                        attempts += 1
                        self._launch(flight, body, _Attempt(False),
                                     attempt_timeout(timeouts, p.attempt_timeout,
                                                     p.attempt_timeout_cap), "hedge")
                    continue
                for task in done:
                    attempt = flight.pop(task)
                    error = task.result()
                    now = loop.time()
                    if error is None:
                        if self.circuit.success(now):
                            self._circuit_closed()
                        self._record_delivery(body, attempts, received)
                        return
                    if self._record_failure(body, attempts, error):
                        return
                    if self.circuit.failure(now, attempt.probe):
                        log.error("pager circuit open: the pager has accepted no page for "
                                  "%.1fs (%d failed attempts); pages wait, and one is sent "
                                  "as a probe every %.1f–%.1fs until it is accepted",
                                  now - (self.circuit.failing_since or now),
                                  self.circuit.failures, p.probe_first, p.probe_cap)
                        metrics.PAGER_CIRCUIT_OPENS.inc()
                    failed += 1
                    if error == "timeout":
                        timeouts += 1
                    delay = backoff(failed, p.backoff_first, p.backoff_cap)
                    schedule.retry_at = now + delay
                    log.warning("page %s not delivered (attempt %d: %s); retrying in %.2fs",
                                logs.page(body), attempts,
                                logs.scrub(error, body.partition(",")[0]), delay)
        finally:
            for task in flight:
                task.cancel()
            self._created.pop(body, None)

    def _launch(self, flight: dict[asyncio.Task, _Attempt], body: str, attempt: _Attempt,
                timeout: float, kind: str) -> None:
        metrics.PAGE_ATTEMPTS.labels(kind).inc()
        task = asyncio.get_running_loop().create_task(self._post(body, attempt, timeout))
        flight[task] = attempt

    async def _admit(self) -> bool:
        """Wait until this page may be sent: at once while the circuit is closed; while it is
        open, until it closes (False) or this page is the next probe (True)."""
        loop = asyncio.get_running_loop()
        if self.circuit.closed:
            return False
        if not self._waiters and self.circuit.take_probe(loop.time()):
            return True
        waiter = loop.create_future()
        self._waiters.append(waiter)
        self._arm_probe()
        try:
            return await waiter
        finally:
            if not waiter.done():         # cancelled (drain): leave the queue
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def _arm_probe(self) -> None:
        if self._probe_timer is None and not self.circuit.closed and self._waiters:
            self._probe_timer = asyncio.get_running_loop().call_at(self.circuit.next_probe,
                                                                   self._probe_due)

    def _probe_due(self) -> None:
        self._probe_timer = None
        if self.circuit.closed:
            self._circuit_closed()
            return
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        if self._waiters and self.circuit.take_probe(asyncio.get_running_loop().time()):
            self._waiters.popleft().set_result(True)
        self._arm_probe()

    def _circuit_closed(self) -> None:
        """The pager accepted a page: every page the circuit held goes now."""
        if self._waiters:
            log.warning("pager circuit closed: the pager accepted a page; sending the %d "
                        "page(s) that waited", len(self._waiters))
        else:
            log.warning("pager circuit closed: the pager accepted a page")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None

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

    async def _post(self, body: str, attempt: _Attempt, timeout: float) -> str | None:
        """One attempt, once a connection slot is free: None when the pager accepted the page,
        else a short description of the failure ("timeout" when it did not answer in time)."""
        assert self._session is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        async with self._slots:
            attempt.started = loop.time()
            try:
                async with self._session.post(
                        self.url, data=body.encode(),
                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    text = await resp.text()
            except TimeoutError:
                return "timeout"
            except aiohttp.ClientError as e:
                return f"{type(e).__name__}: {e}"
            except Exception as e:  # noqa: BLE001 - any other failure is a failed attempt too
                return f"{type(e).__name__}: {e}"
            elapsed = loop.time() - attempt.started
            self.answers.add(elapsed)
            metrics.PAGER_ANSWER.observe(elapsed)
            if resp.status == 200:
                return None
            return f"{resp.status} {text.strip()[:200]}"

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
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        if self._session is not None:
            await self._session.close()
        self._inline.close()

"""The wiring of `aki-alert serve`: receive → log durably → ACK → apply → page.

Start-up (startup.py) opens the state, makes it this environment's, imports the history and
loads the detector; then pages left in the outbox are resent and the service connects to the
hospital, through its front process (front.py), which logs and acknowledges while this process
applies and pages. SIGTERM stops reading at once, finishes the messages in hand, gives
in-flight pages a moment, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from . import health, metrics
from .config import Config
from .connection import DISCONNECTED, MllpClient, MllpListener, bind
from .connection.tls import client_context, server_context
from .drift import DriftMonitor
from .durable import BATCH_SECONDS, Durable
from .front import ACK_EVENT, EVENT, FrontProcess
from .ingest import Ingest, Page
from .leader import Lease, LeadershipLost
from .mllp import FrameError
from .pager import Dispatcher
from .quality import LabelsMonitor
from .population import Choice
from .startup import StartupError, load_detector, load_robust, open_state, reconcile, serving
from .store.msglog import Position, frame_of
from .store import Store

log = logging.getLogger(__name__)

DRAIN_SECONDS = 3.0
SWITCH_INTERVAL = 0.0005
QUALITY_INTERVAL = 60.0
HOUSEKEEPING_INTERVAL = 5.0
# After the front exits unexpectedly, or while the state cannot take a frame: the first wait
# before trying again, doubled up to the cap.
RETRY_FIRST, RETRY_CAP = 0.05, 1.0


class Service:
    """The applier thread applies the frames the front process hands over and sends their
    pages at once (with a PostgreSQL state shared by replicas: the reader thread of
    connection.py receives, applies, commits and acknowledges each message itself); the main
    thread's event loop retries pages the pager did not take, commits idle batches and keeps
    house. `lock` makes their uses of the state (one connection) take turns."""

    def __init__(self, cfg: Config, store: Store, durable: Durable,
                 lease: Lease | None = None, listen: socket.socket | None = None) -> None:
        """`listen`: the bound socket of MLLP_LISTEN (None: no listener)."""
        self.cfg = cfg
        self.store = store
        self.durable = durable
        self.lease = lease
        self.lock = threading.Lock()
        self.lost_leadership = False
        self.dispatcher = Dispatcher(store, cfg.pager_address, lock=self.lock,
                                     may_send=lease.valid if lease else lambda: True,
                                     delivered=durable.delivered)
        self.stopping = threading.Event()
        self.client: MllpClient | None = None
        self.listener: MllpListener | None = None
        self.front: FrontProcess | None = None
        tls = cfg.tls
        if durable.commit_each:
            # No front: the connections run here, each message committed before its ACK.
            if cfg.mllp_host is not None:
                self.client = MllpClient(cfg.mllp_host, cfg.mllp_port, self.on_frame,
                                         self.after_ack, may_connect=self._may_lead,
                                         events=metrics.connection_event,
                                         tls=client_context(tls) if tls else None,
                                         server_name=tls.server_name if tls else None)
            if listen is not None:
                self.listener = MllpListener(listen, self.on_frame, self.after_ack,
                                             max_connections=cfg.max_connections,
                                             idle_timeout=cfg.idle_timeout,
                                             tls=server_context(tls) if tls else None,
                                             may_accept=self._may_lead,
                                             events=metrics.connection_event)
        else:
            hospital = (f"{cfg.mllp_host}:{cfg.mllp_port}" if cfg.mllp_host is not None
                        else None)
            self.front = FrontProcess(hospital, cfg.state_dir, cfg.durability == "machine",
                                      cfg.log_format, cfg.log_level, listen=listen,
                                      max_connections=cfg.max_connections,
                                      idle_timeout=cfg.idle_timeout, tls=tls,
                                      nack_policy=cfg.nack_policy,
                                      feed_profile=cfg.feed_profile_path)

    def _may_lead(self) -> bool:
        if self.lease is None or self.lease.valid():
            return True
        self._step_down()
        return False

    def _fence(self) -> None:
        """Before touching the state and before an ACK: still the leader?"""
        if self.lease is not None:
            try:
                self.lease.check()
            except LeadershipLost:
                self._step_down()
                raise

    def _step_down(self) -> None:
        if not self.lost_leadership:
            log.error("lost leadership (lease epoch %s): stopping; restart to stand by",
                      self.lease.epoch if self.lease else "-")
            self.lost_leadership = True
            self.stop()

    # --- the applier thread (front.py hands the frames over) ----------------------------------
    def follow_front(self) -> None:
        """Apply what the front hands over until stopped; start the front again when it exits
        unexpectedly, after applying whatever it logged."""
        front = self.front
        assert front is not None
        acks = metrics.child(metrics.ACKS, "AA")
        delay = RETRY_FIRST
        if self.durable.broken:
            # The start-up could not apply the message log: no front (whose segments the
            # recovery would take for leftovers) until it has.
            pages = self._retrying(self._recover_everything)
            if pages is None:
                return
            self._send(pages)
        while not self.stopping.is_set():
            front.start()
            code = "AA"                           # of the next frame (ACK_EVENT says otherwise)
            if self.stopping.is_set():            # stop() came before the front existed
                front.stop()
            for kind, at, received, processing, payload in front.records():
                if kind == EVENT:
                    if payload.startswith(ACK_EVENT.encode()):
                        code = payload[len(ACK_EVENT):].decode()
                    else:
                        metrics.connection_event(payload.decode())
                    continue
                if code == "AA":
                    acks.inc()
                else:
                    metrics.child(metrics.ACKS, code).inc()
                    code = "AA"
                metrics.PROCESSING.observe(processing)
                if not self.take(frame_of(kind, payload), received, at):
                    break                         # stopping while the state cannot take it
                front.credit()
                delay = RETRY_FIRST               # this front worked: a crash restarts it at once
            code = front.wait()
            metrics.connection_event(DISCONNECTED)    # a killed front could not say so
            metrics.listener_gone()
            if self.stopping.is_set():
                break
            metrics.FRONT_RESTARTS.inc()
            log.error("the front process exited unexpectedly (status %s): applying what it "
                      "logged, then starting it again", code)
            self._send(self._retrying(self._recover_everything) or [])
            self.stopping.wait(delay)
            delay = min(RETRY_CAP, delay * 2)

    def take(self, item: bytes | FrameError, received: float, at: Position) -> bool:
        """Apply one frame the front handed over and send its page. While the state cannot
        take it, retry (the front, without credit, acknowledges nothing more); False when
        stopped meanwhile (the frame is in the message log, applied at the next start)."""
        pages = self._take(item, received, at)
        if pages is None:
            pages = self._retrying(lambda: self._take(item, received, at))
            if pages is None:
                return False
        self._send(pages)
        return True

    def _take(self, item: bytes | FrameError, received: float, at: Position) -> list[Page] | None:
        return self._locked(lambda: self.durable.take(item, received, at),
                            "cannot apply an acknowledged message yet", counted=True)

    def _recover_everything(self) -> list[Page] | None:
        """The front is gone: apply all it logged. A frame it logged and did not hand over
        was not acknowledged, and the hospital will send it again (the journal skips the
        copy); this applies it without waiting for that."""
        return self._locked(lambda: self.durable.recover(everything=True),
                            "cannot apply the message log yet")

    def _locked(self, step: Callable[[], list[Page]], failure: str,
                counted: bool = False) -> list[Page] | None:
        """`step()` under the state's lock, then what follows every applied frame; None when
        our storage failed (logged with `failure`, and counted as a storage failure if
        `counted`): the caller retries."""
        with self.lock:
            try:
                pages = step()
            except Exception as e:  # noqa: BLE001 - our storage: the frames wait in the log
                if counted:
                    metrics.STORAGE_FAILURES.inc()
                log.error("%s (%s): it stays in the message log; retrying", failure, e)
                return None
            return self._committed_and_claimed(pages)

    def _committed_and_claimed(self, pages: list[Page]) -> list[Page]:
        """Under the lock, after applying: commit a full batch, and claim the pages to send
        (so that housekeeping's resend does not send them too)."""
        if self.durable.due:
            pages += self.durable.flush()
        if pages:
            self.dispatcher.claim(p.body for p in pages)
        return pages

    def _retrying(self, attempt: Callable[[], list[Page] | None]) -> list[Page] | None:
        """`attempt()` until it returns pages rather than None, waiting RETRY_FIRST, doubled
        up to RETRY_CAP, between tries; None when stopped meanwhile."""
        delay = RETRY_FIRST
        while (pages := attempt()) is None:
            if self.stopping.wait(delay):
                return None
            delay = min(RETRY_CAP, delay * 2)
        return pages

    def _send(self, pages: list[Page]) -> None:
        for page in pages:
            self.dispatcher.send_now(page.body, page.received)

    # --- the reader thread(s) (commit_each) -------------------------------------------------
    def connect_here(self) -> None:
        """Without a front: the client in this thread, the listener in one of its own beside
        it (or here, alone); `on_frame` takes the state's lock, so they take turns."""
        if self.client is not None and self.listener is not None:
            thread = threading.Thread(target=self.listener.run, name="listener", daemon=True)
            thread.start()
            try:
                self.client.run()
            finally:
                self.listener.stop()
                thread.join(5)
        elif self.client is not None:
            self.client.run()
        else:
            assert self.listener is not None
            self.listener.run()

    def on_frame(self, item: bytes | FrameError, received: float) -> bytes:
        """Make the frame durable and return its ACK (raises: no ACK)."""
        with self.lock:
            self._fence()
            code, reply = self.durable.accept(item, received)
            self._fence()
        metrics.child(metrics.ACKS, code).inc()
        metrics.PROCESSING.observe(time.perf_counter() - received)
        return reply

    def after_ack(self) -> None:
        """The ACK is on its way: apply the message, commit a full batch, send its page."""
        with self.lock:
            pages = self._committed_and_claimed(self.durable.settle())
        self._send(pages)

    # --- the main thread --------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        await self.dispatcher.start()
        background = [asyncio.create_task(self._commit_idle_batches()),
                      asyncio.create_task(self._housekeeping())]
        if self.lease is not None:
            self.lease.on_lost = lambda: loop.call_soon_threadsafe(self._step_down)
            if self.lease.lost.is_set():          # lost during start-up
                self._step_down()
        if self.cfg.labels_path:
            monitor = LabelsMonitor(self.cfg.labels_path, self.store)
            background.append(asyncio.create_task(self._score_quality(monitor)))
        await asyncio.to_thread(self.follow_front if self.front else self.connect_here)
        for task in background:
            task.cancel()
        self._flush()
        log.info("stopped reading; waiting up to %.0fs for %d page(s) in flight",
                 DRAIN_SECONDS, self.dispatcher.in_flight)
        await self.dispatcher.drain(DRAIN_SECONDS)
        self.durable.close()
        self.store.close()
        log.info("shut down cleanly")

    def _flush(self) -> None:
        """On the event loop: commit the batch; send the pages a recovery decided."""
        with self.lock:
            pages = self.durable.flush()
        for page in pages:
            self.dispatcher.submit(page.body, page.received)

    async def _commit_idle_batches(self) -> None:
        """A batch that stopped growing is committed BATCH_SECONDS after its first message."""
        while True:
            await asyncio.sleep(BATCH_SECONDS / 2)
            if self.durable.overdue:
                self._flush()

    async def _housekeeping(self) -> None:
        """Pick up what other processes changed in the state: pages queued and patients
        updated by `aki-alert replay`."""
        replayed = self.store.meta().get("replayed_at")
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                self._flush()                 # a batch's open snapshot hides others' commits
                with self.lock:
                    now = self.store.meta().get("replayed_at")
                    if now != replayed:
                        replayed = now
                        self.durable.ingest.forget()
                        log.info("state changed by a replay: patients reloaded from the state")
                self.dispatcher.resubmit_pending()
            except Exception as e:  # noqa: BLE001 - next round tries again
                log.error("housekeeping failed: %s", e)

    async def _score_quality(self, monitor: LabelsMonitor) -> None:
        while True:
            with self.lock:
                q = monitor.refresh()
            if q is not None:
                metrics.ROLLING_F3.set(q.f3)
                for outcome in ("tp", "fp", "fn"):
                    metrics.ROLLING_COUNTS.labels(outcome=outcome).set(getattr(q, outcome))
            await asyncio.sleep(QUALITY_INTERVAL)

    def stop(self) -> None:
        log.info("stop requested")
        self.stopping.set()
        if self.client is not None:
            self.client.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.front is not None:
            self.front.stop()


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived during start-up (before the event loop handles them)."""


def _interrupt(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def serve(cfg: Config) -> None:
    """Run the service until SIGTERM. A signal during start-up (a long history import) stops
    it cleanly too: the step in progress is one transaction, rolled back."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    # The reader thread holds the GIL between its socket calls; a page's task, an idle commit
    # or a lease renewal waits at most this long for it (CPython's default: 5 ms), which the
    # hospital sees in page latency and in throughput (docs/performance.md).
    sys.setswitchinterval(SWITCH_INTERVAL)
    readiness = health.Readiness()
    if cfg.metrics_port:
        try:
            health.start(cfg.metrics_port, readiness)
        except OSError as e:
            raise StartupError(f"METRICS_PORT {cfg.metrics_port} cannot be opened: "
                               f"{e.strerror or e}") from e
    lease = _lead(cfg) if cfg.state_url else None
    try:
        _serve(cfg, readiness, lease)
    finally:
        if lease is not None:
            lease.release()        # a clean stop, or a failed start-up: hand over at once


def _lead(cfg: Config) -> Lease:
    """Wait until this replica leads, then keep the lease renewed from its own thread, through
    the start-up (which may import a large history) as well as the service's run."""
    try:
        lease = Lease(cfg.state_url, cfg.lease_seconds)
    except Exception as e:  # noqa: BLE001 - psycopg's errors, reported as one line
        raise StartupError(f"STATE_URL: cannot reach the database: {e}") from e
    lease.wait()
    lease.keep_renewing()
    return lease


def _drift(choice: Choice) -> DriftMonitor | None:
    """The drift window of the model served, when it has a reference (the metrics read it)."""
    reference = choice.drift_reference()
    metrics.DRIFT.monitor = DriftMonitor(reference) if reference is not None else None
    return metrics.DRIFT.monitor


def _serve(cfg: Config, readiness: health.Readiness, lease: Lease | None) -> None:
    store = open_state(cfg)
    if lease is not None:
        # A predecessor paused inside a transaction must not block us past our own lease.
        store.limit_idle_transactions(cfg.lease_seconds / 2)
        store.fence_commits(lease.confirm)
    default, robust = load_detector(cfg), load_robust(cfg)
    readiness.set("detector", True)
    # The model this state's hospital was served by: the messages of the log are applied with it.
    choice = serving(store, default, robust)
    detector = choice.detector
    ingest = Ingest(store, detector, profile=cfg.feed_profile, drift=_drift(choice))
    durable = Durable(store, ingest, cfg.state_dir, sync=cfg.durability == "machine",
                      commit_each=lease is not None,
                      nack=cfg.nack_policy == "hl7")
    # Messages acknowledged but not committed before a crash go in first, into the state they
    # belong to (which reconcile may then archive).
    try:
        durable.recover()
    except Exception as e:  # noqa: BLE001 - retried before the first message is handled
        log.error("cannot apply the message log yet (%s): will retry", e)
    readiness.set("state", True)
    history_ok = reconcile(store, cfg)
    ingest.forget()
    # A history imported now (first start, merge, rebuild) decides anew, drift reference too.
    choice = serving(store, default, robust)
    detector = choice.detector
    ingest.serve_with(detector, _drift(choice))
    (log.warning if choice.shifted else log.info)("model: %s", choice.reason)
    metrics.HISTORY_PSI.set(float("nan") if choice.psi is None else choice.psi)
    metrics.HISTORY_LOADED.set(1 if history_ok else 0)
    readiness.set("history", history_ok, f"{cfg.history_path} not imported")
    metrics.MODEL.info({"detector": detector.name, "version": detector.version})
    metrics.ROLLING_F3.set(float("nan"))
    with store.transaction():
        store.set_meta(detector=detector.name, detector_version=detector.version)
    metrics.PROVENANCE.info({k: v for k, v in store.meta().items()
                             if k in ("environment", "history_sha256")})
    console = None
    if cfg.console_port:
        from .console.process import ConsoleStartError, spawn

        try:
            console, _ = spawn(cfg.console_host, cfg.console_port, cfg.console_token or "",
                            cfg.state_url or store.path, cfg.metrics_port, cfg.console_refresh,
                            (cfg.log_patient_ids, cfg.log_patient_key))
        except ConsoleStartError as e:
            raise StartupError(f"CONSOLE_PORT {cfg.console_port}: {e}") from e
    log.info("serving: hospital %s, pager %s, state %s, detector %s %s, feed profile %s",
             cfg.mllp_address, cfg.pager_address, cfg.state_dir, detector.name,
             detector.version, cfg.feed_profile.name)
    listen = None
    if cfg.mllp_listen is not None:
        # Only now (a replica: only once it leads): until then the port refuses connections,
        # and the engine fails over to the replica that listens.
        try:
            listen = bind(*cfg.mllp_listen)
        except OSError as e:
            raise StartupError("MLLP_LISTEN %s:%d cannot be opened: %s"
                               % (*cfg.mllp_listen, e.strerror or e)) from e
    try:
        service = Service(cfg, store, durable, lease, listen)
        asyncio.run(service.run())
        if service.lost_leadership:
            raise LeadershipLost("another replica leads")
    finally:
        if listen is not None:
            listen.close()
        if console is not None:
            console.terminate()
            console.wait(5)

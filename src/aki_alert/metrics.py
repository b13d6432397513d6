"""Every Prometheus metric of the service, defined in one place (prometheus-client conventions).

No label ever carries an MRN or a name: labels take small fixed sets of values.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from functools import lru_cache
from itertools import accumulate

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import connection
from .drift import DriftCollector


@lru_cache(maxsize=256)
def child(metric, *values: str):
    """`metric.labels(*values)`, memoised: the per-message path calls it several times per
    message, and label values come from small fixed sets."""
    return metric.labels(*values)


class HotMetric:
    """A metric of the per-message path, exported like prometheus-client's own (same series,
    through its custom-collector API) but updated without its locks: prometheus-client takes
    a lock per update (0.5–1.5 µs, several times a message); these are plain additions
    (docs/performance.md). Each series has one writer at a time: the reader thread, or the
    service's lock. A scrape reads a copy, at worst one update behind."""

    _family: type

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._children: dict[tuple[str, ...], object] = {}
        registry.register(self)

    def labels(self, *values: str):
        series = self._children.get(values)
        if series is None:
            series = self._children.setdefault(values, self._series())
        return series

    def _series(self):  # pragma: no cover - each kind has its own
        raise NotImplementedError

    def describe(self) -> list:
        return [self._family(self.name, self.documentation, labels=self.labelnames)]


class HotCounter(HotMetric):
    """A counter (`labels(...).inc()`, or `inc()` without labels)."""

    _family = CounterMetricFamily

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(name, documentation, labelnames, registry)
        if not labelnames:
            self.inc = self.labels().inc

    def _series(self) -> _HotCount:
        return _HotCount()

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in list(self._children.items()):
            family.add_metric(list(values), series.value)
        return [family]


class _HotCount:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HotHistogram(HotMetric):
    """A histogram: `observe` is a bisect and two additions (0.3 µs, against 1.3–1.5 µs)."""

    _family = HistogramMetricFamily

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = (), registry: CollectorRegistry = REGISTRY) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)
        if not labelnames:
            self.observe = self.labels().observe

    def _series(self) -> _HotSeries:
        return _HotSeries(self.bounds)

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in list(self._children.items()):
            counts, total = list(series.counts), series.sum
            family.add_metric(list(values), list(zip(self._le, accumulate(counts), strict=True)),
                              total)
        return [family]


class _HotSeries:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)     # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def observe_many(self, amounts: Iterable[float]) -> None:
        """`observe` each of `amounts` in turn (one call for a batch's results: counted.py)."""
        counts, bounds, total = self.counts, self.bounds, self.sum
        for amount in amounts:
            counts[bisect_left(bounds, amount)] += 1
            total += amount
        self.sum = total


MESSAGES = HotCounter("aki_messages_received_total", "HL7 messages received", ("type",))
ACKS = HotCounter("aki_acks_sent_total", "Acknowledgements sent", ("code",))
DEAD_LETTERS = Counter("aki_dead_letters_total", "Messages set aside as unprocessable", ["reason"])
RESULTS_DEAD_LETTERED = Counter(
    "aki_results_dead_lettered_total", "Result messages (MSH-9 ORU) set aside as dead letters: "
    "acknowledged, never judged (an unknown unit, a value out of range, a processing error)")
DUPLICATES = Counter("aki_duplicate_messages_total", "Re-delivered messages ignored")
DECISIONS = HotCounter(
    "aki_message_decisions_total", "What became of each message: applied, duplicate (a "
    "re-delivery), duplicate-result, ignored (with a reason in the journal) or dead (a dead "
    "letter)", ("decision",))
RESULT_ACTIONS = HotCounter(
    "aki_result_actions_total", "Creatinine results not simply stored and judged (those are "
    "aki_results_judged_total), by what was done: stored (a preliminary kept unjudged), "
    "corrected (and judged again), removed (wrong patient, deleted), not-obtained, "
    "nothing-to-remove, nothing-to-finalise (OBX-11 U without a value, none stored), duplicate",
    ("action",))
UNRECOGNISED_CREATININE = Counter(
    "aki_unrecognised_creatinine_total", "Results that look like creatinine (their code or "
    "text) but that the feed profile does not name, so were not judged; by OBX-3 code",
    ["code"])
# The code label is a lab's OBX-3 identifier (not patient data), cut to MAX_CODE_LENGTH; a
# feed sending many distinct unknown codes must not grow the series without bound: after
# MAX_UNRECOGNISED_CODES distinct ones, further codes are counted as "other" (the log line
# and the journal's reason still name each).
MAX_CODE_LENGTH = 32
MAX_UNRECOGNISED_CODES = 50
OTHER_CODES = "other"
_unrecognised_codes: set[str] = set()


def unrecognised_code(code: str) -> str:
    """The `code` label for an unrecognised creatinine-like result: the code (cut to
    MAX_CODE_LENGTH; "(empty)" when blank), or "other" once MAX_UNRECOGNISED_CODES distinct
    codes have their own series."""
    label = code[:MAX_CODE_LENGTH] or "(empty)"
    if label in _unrecognised_codes:
        return label
    if len(_unrecognised_codes) >= MAX_UNRECOGNISED_CODES:
        return OTHER_CODES
    _unrecognised_codes.add(label)
    return label


MERGES = Counter("aki_patient_merges_total", "Patient numbers merged into others (ADT^A40 "
                 "and kin), by outcome: merged, repeated", ["outcome"])
DUPLICATE_RESULTS = Counter(
    "aki_duplicate_results_total", "Results for an already-known patient and sample time")
FRAME_ERRORS = Counter("aki_mllp_frame_errors_total", "MLLP frames that could not be read")
STORAGE_FAILURES = Counter(
    "aki_storage_failures_total",
    "Messages not acknowledged because the state could not be written")
RESULTS_JUDGED = HotCounter(
    "aki_results_judged_total", "Creatinine results judged", ("history", "admission"))
POSITIVES = Counter("aki_positive_results_total", "Results judged AKI", ["detector"])
REPAGES = Counter(
    "aki_repages_total", "Positives inside an open episode paged again: markedly worse than "
    "the episode's page (repage.py)")
PAGES = Counter("aki_pages_total", "Page attempts by outcome", ["outcome"])
OUTBOX_DEPTH = Gauge("aki_outbox_pending", "Pages decided but not yet accepted by the pager")
OUTBOX_OLDEST = Gauge(
    "aki_outbox_oldest_age_seconds", "Age of the oldest undelivered page (0 when none)")
PAGE_ATTEMPTS = HotCounter(
    "aki_page_attempts_total", "Page attempts started, by kind: inline (from the feed's "
    "thread), first, retry (after a failure), hedge (beside an attempt not yet answered), "
    "probe (one page let through the open circuit)", ("kind",))
PAGER_CIRCUIT_OPEN = Gauge(
    "aki_pager_circuit_open", "1 while the pager circuit is open: the pager accepted nothing "
    "for a while, pages wait and one at a time is sent as a probe")
PAGER_CIRCUIT_OPENS = Counter(
    "aki_pager_circuit_opens_total", "Times the pager circuit opened")
PAGER_ANSWER = Histogram(
    "aki_pager_answer_seconds", "Time the pager took to answer a page attempt (any HTTP "
    "status; attempts it never answered are not included)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONNECTED = Gauge("aki_mllp_connected", "1 while connected to the hospital's MLLP endpoint")
RECONNECTS = Counter("aki_mllp_connects_total", "MLLP connection attempts by outcome", ["outcome"])
LISTENER_CONNECTIONS = Gauge(
    "aki_mllp_listener_open_connections", "Connections the MLLP listener holds open (MLLP_LISTEN)")
LISTENER_EVENTS = Counter(
    "aki_mllp_listener_connections_total", "Connections to the MLLP listener by what became of "
    "them: accepted, closed, evicted (the cap was reached), timed_out (idle, or no message)",
    ["event"])
TLS_HANDSHAKE_FAILURES = Counter(
    "aki_mllp_tls_handshake_failures_total", "TLS handshakes on the MLLP connections that failed "
    "(a bad or missing certificate, plaintext to the TLS port, a timeout)")
FRONT_RESTARTS = Counter(
    "aki_front_restarts_total", "Times the front process (MLLP, message log, ACKs) exited "
    "unexpectedly and was started again")
PAGE_LATENCY = Histogram(
    "aki_page_latency_seconds", "From receiving a result to the pager accepting its page",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3, 10, 60),
)
PROCESSING = HotHistogram(
    "aki_message_processing_seconds", "From receiving a message to its ACK being written",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1),
)
CREATININE = HotHistogram(
    "aki_creatinine_umol_per_litre", "Creatinine results judged (drift against training data)",
    buckets=(40, 60, 80, 100, 120, 150, 200, 300, 500, 1000),
)
SCORES = HotHistogram(
    "aki_detector_score", "Detector scores (model probability, or NHS stage) of judged results",
    ("detector",), buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1, 2, 3),
)
ROLLING_F3 = Gauge(
    "aki_rolling_f3", "F3 of pages against confirmed AKIs (LABELS_PATH) over the last 30 days "
    "of results; NaN without labels")
ROLLING_COUNTS = Gauge(
    "aki_rolling_outcomes", "True/false positives and false negatives behind aki_rolling_f3",
    ["outcome"])
BATCH_SIZE = Histogram(
    "aki_commit_batch_messages", "Messages per state commit (see durable.py)",
    buckets=(1, 4, 16, 64, 256, 1024),
)
HISTORY_ROWS = Counter("aki_history_results_loaded_total", "History results imported")
HISTORY_SKIPPED = Counter("aki_history_skipped_total", "History cells or rows skipped", ["reason"])
HISTORY_LOADED = Gauge("aki_history_loaded", "1 when the configured history file is imported")
# Population stability of the model's score and of creatinine against its training data, and the
# positive rate against its expectation (drift.py), computed at scrape time.
DRIFT = DriftCollector()
REGISTRY.register(DRIFT)
MODEL = Info("aki_detector", "The detector judging results")
HISTORY_PSI = Gauge("aki_history_creatinine_psi",
                    "Population stability index of the history's creatinine against the default "
                    "model's training distribution (population.py); NaN when not recorded")
PROVENANCE = Info("aki_state_provenance", "What the state was built from")
PROVENANCE_MISMATCH = Gauge(
    "aki_state_provenance_mismatch",
    "1 when the state at start was built from another history or environment than configured")
PROVENANCE_MISMATCHES = Counter(
    "aki_state_provenance_mismatches_total", "Provenance mismatches found at start, by action",
    ["action"])


def connection_event(event: str) -> None:
    """Count an event of the hospital connection."""
    if event == connection.CONNECTED:
        RECONNECTS.labels(outcome="connected").inc()
        CONNECTED.set(1)
    elif event == connection.CONNECT_FAILED:
        RECONNECTS.labels(outcome="failed").inc()
    elif event == connection.DISCONNECTED:
        CONNECTED.set(0)
    elif event == connection.NOT_ACKNOWLEDGED:
        STORAGE_FAILURES.inc()
    elif event == connection.LISTENER_ACCEPTED:
        LISTENER_EVENTS.labels(event="accepted").inc()
        LISTENER_CONNECTIONS.inc()
    elif event == connection.LISTENER_CLOSED:
        LISTENER_EVENTS.labels(event="closed").inc()
        LISTENER_CONNECTIONS.dec()
    elif event == connection.LISTENER_EVICTED:
        LISTENER_EVENTS.labels(event="evicted").inc()
    elif event == connection.LISTENER_TIMED_OUT:
        LISTENER_EVENTS.labels(event="timed_out").inc()
    elif event == connection.TLS_HANDSHAKE_FAILED:
        TLS_HANDSHAKE_FAILURES.inc()


def listener_gone() -> None:
    """The front that held the listener's connections exited: none is open any more."""
    LISTENER_CONNECTIONS.set(0)

"""The hospital's own Prometheus metrics (served at `/metrics` on the pager port): what it sent,
how connections ended, what the pager answered, and the live strict score."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _HospitalCollector:
    def __init__(self, hospital) -> None:
        self.h = hospital

    def collect(self):
        h = self.h
        s = h.score()

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"hospital_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"hospital_{name}", doc, value=value)

        yield counter("messages_sent", "MLLP frames written, resends included", h.sent)
        yield counter("messages_acked", "AA acknowledgements received", h.acked)
        yield counter("messages_nacked", "AE/AR acknowledgements received (each resends)",
                      h.nacked)
        yield counter("connections", "MLLP connections accepted", h.connections)
        drops = CounterMetricFamily("hospital_connection_drops", "Connections ended, by reason",
                                    labels=["reason"])
        for reason, n in sorted(h.drops.items()):
            drops.add_metric([reason], n)
        yield drops
        pages = CounterMetricFamily("hospital_page_responses", "Pager answers, by HTTP status "
                                    "(0: hung)", labels=["status"])
        for status, n in sorted(h.pager.responses.items()):
            pages.add_metric([str(status)], n)
        yield pages
        yield gauge("stream_position", "First message not yet acknowledged", h.next)
        yield gauge("stream_length", "Messages in the stream", len(h.frames))
        yield gauge("stream_done", "1 once every message is acknowledged", float(h.done))
        yield gauge("true_positives", "Distinct pages at an AKI's exact time", s.tp)
        yield gauge("false_positives", "Distinct pages at any other MRN,time", s.fp)
        yield gauge("false_negatives", "AKI results sent and never paged at their time", s.fn)
        yield gauge("f3", "Strict F3 of the service so far", s.f3)
        yield gauge("nhs_reference_f3", "F3 of the NHS reference on this stream", s.nhs_f3)
        lat = GaugeMetricFamily("hospital_page_latency_seconds",
                                "Result sent to true-positive page arrived", labels=["quantile"])
        for q, v in (("0.5", s.latency_p50), ("0.9", s.latency_p90), ("0.99", s.latency_p99)):
            if v is not None:
                lat.add_metric([q], v)
        yield lat


def metrics_text(hospital) -> bytes:
    """Prometheus text exposition of one hospital (a fresh registry: instances never mix)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HospitalCollector(hospital))
    return generate_latest(registry)

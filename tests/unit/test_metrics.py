"""metrics.HotHistogram and HotCounter export exactly what prometheus-client's own Histogram and
Counter would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from aki_alert import metrics
from aki_alert.metrics import HotCounter, HotHistogram

BUCKETS = (0.01, 0.5, 1, 3, 100)
values = st.lists(st.one_of(st.sampled_from(BUCKETS),
                            st.floats(min_value=-10, max_value=1e6, allow_nan=False)),
                  max_size=50)


def exposition(registry) -> list[str]:
    """The text format's lines, without the `_created` series only prometheus-client has."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]


@given(values, values)
def test_same_series_as_prometheus_clients_histogram(a, b):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("x_seconds", "help text", ("kind",), buckets=BUCKETS, registry=ours)
    ref = Histogram("x_seconds", "help text", ["kind"], buckets=BUCKETS, registry=theirs)
    for kind, xs in (("a", a), ("b", b)):
        for x in xs:
            hot.labels(kind).observe(x)
            ref.labels(kind).observe(x)
    assert exposition(ours) == exposition(theirs)


@given(values)
def test_unlabelled_is_exported_from_the_start(xs):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("y", "h", buckets=BUCKETS, registry=ours)
    ref = Histogram("y", "h", buckets=BUCKETS, registry=theirs)
    assert exposition(ours) == exposition(theirs)
    for x in xs:
        hot.observe(x)
        ref.observe(x)
    assert exposition(ours) == exposition(theirs)


@given(values, values)
def test_observing_many_at_once_is_observing_each(a, b):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("z", "h", buckets=BUCKETS, registry=ours)
    ref = Histogram("z", "h", buckets=BUCKETS, registry=theirs)
    for xs in (a, b):
        hot.labels().observe_many(xs)
        for x in xs:
            ref.observe(x)
    assert exposition(ours) == exposition(theirs)


def test_the_services_hot_histograms_are_in_the_default_registry():
    text = generate_latest().decode()
    metrics.PROCESSING.observe(0.0002)
    after = generate_latest().decode()
    assert "aki_message_processing_seconds_bucket{le=\"0.00025\"}" in text
    assert after != text


counts = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                            st.floats(min_value=0, max_value=1e6, allow_nan=False)), max_size=50)


@given(counts)
def test_same_series_as_prometheus_clients_counter(incs):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotCounter("x_total", "help text", ("kind",), registry=ours)
    ref = Counter("x_total", "help text", ["kind"], registry=theirs)
    for kind, amount in incs:
        hot.labels(kind).inc(amount)
        ref.labels(kind).inc(amount)
    assert exposition(ours) == exposition(theirs)


def test_unlabelled_counter_is_exported_from_the_start():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotCounter("y_total", "h", registry=ours)
    ref = Counter("y_total", "h", registry=theirs)
    assert exposition(ours) == exposition(theirs)
    hot.inc()
    ref.inc()
    assert exposition(ours) == exposition(theirs)

"""The unlabelled drift signal (drift.py): PSI against the training reference over a rolling
window of judged results, exported at scrape time, fed by ingest for every judged result."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from aki_alert.detect.nhs import NhsDetector
from aki_alert.drift import (
    CREATININE_BOUNDS,
    SCORE_BOUNDS,
    DriftCollector,
    DriftMonitor,
    histogram,
    psi,
)
from aki_alert.hospital import messages
from aki_alert.ingest import Ingest
from aki_alert.store.sqlite import SqliteStore
from aki_alert.timeutil import DAY, parse_hl7_time


def reference(scores, values, rate=0.02):
    return {
        "score": {"bounds": list(SCORE_BOUNDS), "fractions": histogram(scores, SCORE_BOUNDS)},
        "creatinine": {
            "bounds": list(CREATININE_BOUNDS),
            "fractions": histogram(values, CREATININE_BOUNDS),
        },
        "positive_rate": rate,
    }


def test_histogram_bins_as_prometheus_le_and_sums_to_one():
    h = histogram([40.0, 40.1, 59.0, 2000.0], CREATININE_BOUNDS)
    assert h[0] == 0.25 and h[1] == 0.5 and h[-1] == 0.25
    assert math.isclose(sum(h), 1.0)
    assert histogram([], CREATININE_BOUNDS) == [0.0] * (len(CREATININE_BOUNDS) + 1)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift():
    base = [60.0 + (i % 80) for i in range(4000)]
    ref = histogram(base, CREATININE_BOUNDS)
    assert psi(histogram(base, CREATININE_BOUNDS), ref) == pytest.approx(0.0, abs=1e-12)
    small = psi(histogram([v * 1.05 for v in base], CREATININE_BOUNDS), ref)
    large = psi(histogram([v * 1.35 for v in base], CREATININE_BOUNDS), ref)
    assert 0.0 < small < 0.1 < 0.25 < large
    # an empty reference bin is floored, not infinite
    assert math.isfinite(psi([0, 0, 10], [1, 1, 0]))


def test_the_window_keeps_the_last_results_only():
    values = [60.0 + (i % 80) for i in range(4000)]
    m = DriftMonitor(reference([0.0] * 100, values), slots=4, per_slot=100)
    m.observe(values[:350], [0.0] * 350, [False] * 350)      # slots fill within one call
    assert m.results() == 350
    calm = m.snapshot()
    assert calm["psi_creatinine"] < 0.1 and calm["psi_score"] < 1e-9
    for _ in range(400):  # a new assay reading 35 % higher, and many positives
        m.observe([150.0 * 1.35], [0.95], [True])             # or one at a time
    s = m.snapshot()
    # 3 full slots and the current one: the last 300-400 results
    assert m.results() == 350
    assert s["psi_creatinine"] > 0.25 and s["psi_score"] > 0.25
    assert s["positive_rate"] == 1.0 and s["expected_positive_rate"] == 0.02


def test_collector_exports_the_families_and_values_at_scrape():
    registry = CollectorRegistry()
    c = DriftCollector()
    registry.register(c)
    text = generate_latest(registry).decode()
    assert "# TYPE aki_drift_psi gauge" in text and 'quantity="score"' not in text
    c.monitor = DriftMonitor(reference([0.0] * 10, [80.0] * 10, rate=0.25))
    c.monitor.observe([80.0], [0.0], [True])
    text = generate_latest(registry).decode()
    assert 'aki_drift_psi{quantity="score"} 0.0' in text
    assert 'aki_drift_psi{quantity="creatinine"} 0.0' in text
    assert "aki_drift_positive_rate 1.0" in text
    assert "aki_drift_expected_positive_rate 0.25" in text
    assert "aki_drift_window_results 1.0" in text


def test_ingest_counts_every_judged_result(tmp_path):
    store = SqliteStore(str(tmp_path / "state.db"))
    m = DriftMonitor(reference([0.0] * 10, [80.0] * 10))
    ing = Ingest(store, NhsDetector(), drift=m)
    t0 = parse_hl7_time("20240301080000")
    for k, v in enumerate((80.0, 82.0, 250.0)):
        ing.apply(messages.result(t0 + k * DAY, "7", v), 0.0)
    store.close()
    assert m.results() == 3
    assert m.snapshot()["positive_rate"] == pytest.approx(1 / 3)

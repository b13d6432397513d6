"""Every series the alert rules and the Grafana dashboard read is one the service exports
(read from aki_alert.metrics' registry), a recording rule of rules.yml, Prometheus' own `up`,
or one of the two metrics announced for metrics.py (aki_rolling_f3,
aki_state_provenance_mismatch); and every label they select on is one the metric has.
"""

from __future__ import annotations

import json

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (pip install pyyaml)")

from promql_names import (  # noqa: E402
    DASHBOARD,
    FUTURE_METRICS,
    RULES,
    STANDARD_METRICS,
    TARGET_LABELS,
    exported,
    grouping_labels,
    metric_names,
    selectors,
)


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def recorded() -> set[str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


ALL = [("rules", *x) for x in rule_exprs()] + [("dashboard", *x) for x in dashboard_exprs()]


@pytest.fixture(scope="module")
def known():
    names, labels = exported()
    return names, labels


def test_the_helpers_find_names_and_labels():
    expr = ('histogram_quantile(0.9, sum by (le) (rate(aki_page_latency_seconds_bucket'
            '{job="aki-alert"}[5m]))) > 3 and on (instance) aki:x:rate1h offset 1d')
    assert metric_names(expr) == {"aki_page_latency_seconds_bucket", "aki:x:rate1h"}
    assert selectors(expr) == [("aki_page_latency_seconds_bucket", {"job"})]
    assert grouping_labels(expr) == {"le", "instance"}


def test_the_registry_is_read(known):
    names, labels = known
    assert "aki_messages_received_total" in names
    assert labels["aki_results_judged_total"] == {"history", "admission"}
    assert "nonexistent_metric_total" not in names


@pytest.mark.parametrize("where,name,expr", ALL, ids=[f"{w}:{n}" for w, n, _ in ALL])
def test_every_metric_read_exists(where, name, expr, known):
    names, _ = known
    allowed = names | recorded() | FUTURE_METRICS | STANDARD_METRICS
    used = metric_names(expr)
    assert used, f"{name}: reads no metric: {expr}"
    missing = {m for m in used if m not in allowed}
    assert not missing, f"{where} {name!r} reads metrics the service does not export: {missing}"


@pytest.mark.parametrize("where,name,expr", ALL, ids=[f"{w}:{n}" for w, n, _ in ALL])
def test_every_label_selected_exists(where, name, expr, known):
    _, labels = known
    used = metric_names(expr)
    for metric, names in selectors(expr):
        if metric in labels:
            extra = names - labels[metric] - TARGET_LABELS
            assert not extra, f"{where} {name!r}: {metric} has no label {extra}"
    # by (…) / on (…) labels must belong to some metric the expression reads
    available = set(TARGET_LABELS)
    for metric in used:
        available |= labels.get(metric, set())
        if metric not in labels:          # recording rules, info metrics, up, future ones
            return
    assert grouping_labels(expr) <= available, f"{where} {name!r}: {grouping_labels(expr)}"

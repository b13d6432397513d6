"""Helpers for tests/deploy: the metric names the service exports and those a PromQL
expression uses. (A plain module with a unique name, imported by the deploy tests.)"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "aki-alert.json"

# Announced for metrics.py but not there yet: the rules and dashboard may use them already.
FUTURE_METRICS = {"aki_rolling_f3", "aki_state_provenance_mismatch"}
# Set by Prometheus itself for every target.
STANDARD_METRICS = {"up"}
# Labels every scraped series gets from the scrape, not from the service.
TARGET_LABELS = {"job", "instance", "namespace", "pod"}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
    "untyped": ("",),
}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "offset", "bool", "atan2", "inf", "nan", "start", "end"}


def exported() -> tuple[set[str], dict[str, set[str]]]:
    """Every series name the service's registry exports (aki_alert.metrics registers into the
    default registry, which also carries the process collector), and each aki_ series' labels."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    import aki_alert.metrics as metrics

    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    labels: dict[str, set[str]] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, metrics.DriftCollector):  # gauges made at scrape time (drift.py)
            labels.update({name: set(names) for name, names in obj.LABELS.items()})
            continue
        if isinstance(obj, MetricWrapperBase):
            labelnames = obj._labelnames
        elif isinstance(obj, metrics.HotMetric):
            labelnames = obj.labelnames
        else:
            continue
        (family,) = obj.describe()
        if family.type == "info":
            continue  # an Info's labels are its values: any label is possible
        for suffix in _SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            labels[family.name + suffix] = set(labelnames) | extra
    return names, labels


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)       # string literals (label values)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                  # range and subquery durations
    return expr


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every `name{…}` selector."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    out = []
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        names = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)))
        out.append((m.group(1), names))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Label names in by (…), without (…), on (…) and ignoring (…)."""
    found: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)",
                         _strip(expr)):
        found.update(x.strip() for x in m.group(1).split(",") if x.strip())
    return found


def metric_names(expr: str) -> set[str]:
    """The series names an expression reads (functions, keywords and labels left out)."""
    expr = _strip(expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)                       # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        token, call = m.group(1), m.group(2)
        if call or token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names

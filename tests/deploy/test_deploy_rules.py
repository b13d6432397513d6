"""deploy/prometheus: promtool checks the rules and the scrape config and runs the rules' unit
tests (rules_test*.yml: synthetic series, each alert firing and not firing); plus what promtool
does not check: severities, runbook links that lead to a section, the alerts the issue asks for.

promtool comes from Debian's `prometheus` package (apt-get install prometheus); these tests skip
with that reason when it is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (pip install pyyaml)")

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
RULES = PROM / "rules.yml"
RULE_TESTS = sorted(PROM.glob("rules_test*.yml"))
RUNBOOK = REPO / "docs" / "runbook.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's prometheus package "
           "(apt-get install -y --no-install-recommends prometheus)")

# What the issue asks to be alerted on: alert name -> a fragment its expression must contain.
REQUIRED = {
    "AkiNoMessages": "aki_messages_received_total",
    "AkiMllpDisconnected": "aki_mllp_connected",
    "AkiOutboxGrowing": "aki_outbox_pending",
    "AkiPageOverdue": "aki_outbox_oldest_age_seconds) > 60",
    "AkiPagesFailing": 'aki_pages_total{outcome="retry"}',
    "AkiPageDeadLettered": 'aki_pages_total{outcome="dead"}',
    "AkiPageLatencyHigh": "histogram_quantile(0.9",
    "AkiNoHistoryShareHigh": "aki:results_no_history:ratio1h",
    "AkiHistoryNotLoaded": "max(aki_history_loaded) == 0",
    "AkiDeadLetters": "aki_dead_letters_total",
    "AkiAlertDown": 'up{job="aki-alert"}',
    "AkiAlertNotReady": "aki_detector_info",
    "AkiAlertRateHigh": "aki:positives_per_hour:baseline7d",
    "AkiAlertRateLow": "aki:positives_per_hour:baseline7d",
    "AkiRollingF3Low": "aki_rolling_f3) < 0.8",
    "AkiStateProvenanceMismatch": "aki_state_provenance_mismatch) == 1",
    # issue 16: a result that looks like creatinine but is not judged, or a result set aside
    "AkiUnrecognisedCreatinine": "increase(aki_unrecognised_creatinine_total[15m])",
    "AkiResultsDeadLettered": "increase(aki_results_dead_lettered_total[15m])",
    # issue 18: drift without labels, against the training distribution stored in the model
    "AkiModelDrift": "aki_drift_psi > 0.25",
    "AkiAlertRateDrift": "aki_drift_positive_rate > 2 * aki_drift_expected_positive_rate",
}
# Alerts that page at any hour whatever else they say: a result not judged may be a missed AKI.
CRITICAL = ("AkiUnrecognisedCreatinine", "AkiResultsDeadLettered", "AkiPageDeadLettered")


def load_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> list[dict]:
    return [r for r in load_rules() if "alert" in r]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


# --- promtool -------------------------------------------------------------------------------

@needs_promtool
def test_promtool_checks_the_rules():
    done = run("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_checks_the_scrape_config():
    done = run("check", "config", str(PROM / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass():
    # the files run side by side (the rate tests replay days of series)
    procs = [subprocess.Popen([PROMTOOL, "test", "rules", str(f)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for f in RULE_TESTS]
    failures = []
    for f, p in zip(RULE_TESTS, procs, strict=True):
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            failures.append(f"{f.name}:\n{out}")
    assert not failures, "\n".join(failures)


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path):
    """The unit tests are not vacuous: with a threshold moved, promtool reports the alert."""
    text = RULES.read_text()
    assert "aki_outbox_oldest_age_seconds) > 60" in text
    (tmp_path / "rules.yml").write_text(
        text.replace("aki_outbox_oldest_age_seconds) > 60", "aki_outbox_oldest_age_seconds) > 600"))
    doc = yaml.safe_load((PROM / "rules_test.yml").read_text())
    doc["tests"] = [t for t in doc["tests"] if any(
        c["alertname"] == "AkiPageOverdue" for c in t.get("alert_rule_test", []))]
    assert doc["tests"]
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(doc))
    done = run("test", "rules", str(tmp_path / "rules_test.yml"))
    assert done.returncode != 0
    assert "alertname: AkiPageOverdue" in done.stdout + done.stderr


# --- what promtool does not check -----------------------------------------------------------

def test_the_alerts_the_issue_asks_for_exist():
    by_name = {a["alert"]: " ".join(a["expr"].split()) for a in alerts()}
    for name, fragment in REQUIRED.items():
        assert name in by_name, f"missing alert {name}"
        assert fragment in by_name[name], f"{name}: expected {fragment!r} in {by_name[name]!r}"
    ratio = {r["record"]: r["expr"] for r in load_rules() if "record" in r}
    assert 'aki_results_judged_total{history="no"}' in ratio["aki:results_no_history:ratio1h"]


def test_results_not_judged_page_at_any_hour():
    by_name = {a["alert"]: a for a in alerts()}
    for name in CRITICAL:
        assert by_name[name]["labels"]["severity"] == "critical", name
        assert "for" not in by_name[name], f"{name}: fires at once"


def test_alert_names_are_unique():
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))


def test_every_alert_has_a_severity_summary_and_description():
    for a in alerts():
        assert a.get("labels", {}).get("severity") in ("critical", "warning"), a["alert"]
        assert a["annotations"].get("summary"), a["alert"]
        assert a["annotations"].get("description"), a["alert"]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {github_anchor(m.group(1))
            for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", RUNBOOK.read_text(), re.M)}


def test_every_alert_links_to_its_runbook_section():
    anchors = runbook_anchors()
    for a in alerts():
        url = a["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", f"{a['alert']}: {url}"
        assert anchor == a["alert"].lower(), f"{a['alert']}: {url}"
        assert anchor in anchors, f"{a['alert']}: no section #{anchor} in docs/runbook.md"


def test_runbook_has_the_incident_and_postmortem_sections():
    anchors = runbook_anchors()
    assert any("stale-state-incident" in a for a in anchors)
    assert any("postmortem" in a for a in anchors)
    text = RUNBOOK.read_text()
    for needed in ("MODEL_PATH", "DETECTOR=nhs", "kubectl logs", "dead_letters", "rollout undo"):
        assert needed in text, needed


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    fires: set[str] = set()
    quiet: set[str] = set()
    for f in RULE_TESTS:
        for test in yaml.safe_load(f.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    for a in alerts():
        assert a["alert"] in fires, f"{a['alert']}: no test where it fires"
        assert a["alert"] in quiet, f"{a['alert']}: no test where it stays quiet"


def test_rule_tests_use_the_rule_file_and_only_known_alerts():
    names = {a["alert"] for a in alerts()}
    for f in RULE_TESTS:
        doc = yaml.safe_load(f.read_text())
        assert doc["rule_files"] == ["rules.yml"]
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                assert case["alertname"] in names, f"{f.name}: unknown {case['alertname']}"

"""`aki-alert demo` end to end, exactly as `make demo` runs it: generate, train, serve, score."""

import subprocess
import sys


def test_demo_prints_the_report_and_beats_the_nhs_reference(tmp_path):
    r = subprocess.run([sys.executable, "-m", "aki_alert", "demo", "--state",
                        str(tmp_path / "state")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = r.stdout
    for line in ("messages", "TP / FP / FN", "F3", "NHS reference", "latency", "throughput"):
        assert line in report, report
    assert "trained a model on the cohort" in r.stdout + r.stderr
    assert (tmp_path / "state" / "state.db").exists()

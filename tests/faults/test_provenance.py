"""The incident through the hospital: environment A's state restarted with environment B."""

from __future__ import annotations

import random
import re
import urllib.request

import pytest

from aki_alert.detect.nhs import NhsDetector
from aki_alert.history import ImportSummary, read_history
from aki_alert.hospital import datafiles
from aki_alert.hospital.generator import GeneratedHospital, generate
from aki_alert.hospital.simulator import _result_key
from aki_alert.offline import offline_pages
from integration.service_process import log_text, wait_for

from .harness import Stream, finish, free_port, load_stream, outcome, query, score_pages

pytestmark = pytest.mark.timeout(90)

PID3 = re.compile(rb"(\rPID\|[^|\r]*\|[^|\r]*\|)(\d+)")


def onto_mrns_of(b: GeneratedHospital, a_mrns: list[str], seed: int) -> GeneratedHospital:
    """Hospital B with its patients renumbered onto A's MRNs (two hospitals' number ranges can
    overlap): judged against A's history, B's patients would get other people's baselines."""
    b_mrns = sorted(b.history)
    targets = list(a_mrns)
    random.Random(seed).shuffle(targets)
    taken = set(a_mrns) | set(b_mrns)
    fresh = (str(10_000_000 + i) for i in range(10**6))
    spare = (m for m in fresh if m not in taken)
    mapping = {m: targets[i] if i < len(targets) else next(spare) for i, m in enumerate(b_mrns)}

    def mrn(m: str) -> str:
        if m not in mapping:
            mapping[m] = next(spare)
        return mapping[m]

    messages = [PID3.sub(lambda g: g.group(1) + mrn(g.group(2).decode()).encode(), m)
                for m in b.messages]
    return GeneratedHospital(
        messages=messages,
        history={mrn(m): v for m, v in b.history.items()},
        aki_rows=[(mrn(m), t, aki, nhs) for m, t, aki, nhs in b.aki_rows],
        cohort=b.cohort, stream_start=b.stream_start)


@pytest.fixture(scope="module")
def stream_b(stream, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream-b")
    a_mrns = sorted({m for m, _, _ in _history_rows(stream)})
    b = onto_mrns_of(generate(days=40, patients=5000, seed=12, cohort_size=0), a_mrns, seed=3)
    datafiles.write_hospital(out, b)
    return load_stream(out)


def _history_rows(s: Stream):
    return read_history(str(s.history), ImportSummary())


def metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def test_restart_over_another_environments_state_is_detected_and_scores_as_b(
        tmp_path, stream, stream_b, harness):
    """A service that silently kept A's state would judge B's patients (same MRNs) against A's
    history and A's live results: B's pages would differ (the offline 'mixed' reference below
    shows they do) and no mismatch would be reported."""
    a, b = stream, stream_b
    shared = {r.mrn for r in b.rows} & {m for m, _, _ in _history_rows(a)}
    assert len(shared) > 10, "B's AKI patients must carry A's MRNs for the test to bite"
    # The same environment name: only the history file tells the two apart, as in the incident.
    env = {"AKI_ENVIRONMENT": "riverside-ward-7"}
    state = harness.state(tmp_path / "state")
    ha = harness.hospital(a.messages, a.rows)
    proc = harness.serve(ha, state, a.history, **env)
    half = len(a.messages) // 2
    assert wait_for(lambda: ha.hospital.next >= half, 30), log_text(proc)[-3000:]
    code, _, log = harness.terminate(proc)
    assert code == 0, log[-3000:]
    a_feed = query(state, "SELECT count(*) FROM results WHERE source = 'feed'")
    assert a_feed > 0
    ha.stop()

    port = free_port()
    hb = harness.hospital(b.messages, b.rows)
    proc = harness.serve(hb, state, b.history, METRICS_PORT=str(port), **env)
    finish(hb, proc, state, timeout=60)
    text = metrics(port)
    code, _, log = harness.terminate(proc)
    live = hb.score()
    assert code == 0, log[-3000:]
    assert "state provenance mismatch" in log, log[-3000:]
    assert len(state.archives()) == 1            # A's state set aside, not deleted
    assert re.search(r"^aki_state_provenance_mismatch 1(\.0)?$", text, re.M), text[-2000:]
    assert outcome(live) == outcome(b.expected), live.summary()
    assert live.pages == len(set(b.expected_pages))
    # Nothing of A's feed remains in the state B runs on.
    b_results = len({k for m in b.messages if (k := _key(m))})
    assert query(state, "SELECT count(*) FROM results WHERE source = 'feed'") == b_results
    mixed = _mixed_reference(tmp_path, a, b, half)
    assert outcome(mixed) != outcome(b.expected)
    print(f"\nA ran {half} messages ({a_feed} results); B over A's state: {live.summary()}; "
          f"had the states mixed: TP {mixed.tp} FP {mixed.fp} FN {mixed.fn}")


def _key(message: bytes):
    return _result_key(message)


def _mixed_reference(tmp_path, a: Stream, b: Stream, half: int):
    """B's score had A's history and A's first half been kept and B's history merged in."""
    merged = tmp_path / "merged-history.csv"
    b_lines = b.history.read_text().splitlines(keepends=True)[1:]
    merged.write_text(a.history.read_text() + "".join(b_lines))
    # A's live results (its first half) precede B's stream; only B's pages are scored.
    a_pages = set(offline_pages(str(merged), a.messages[:half], NhsDetector()))
    pages = [p for p in offline_pages(str(merged), a.messages[:half] + b.messages, NhsDetector())
             if p not in a_pages]
    return score_pages(b.rows, pages)

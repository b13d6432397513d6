"""Merged patient numbers (ADT^A40 and kin), on SQLite and PostgreSQL: the service (ingest.py)
and the offline reference (offline.py) file later messages under the surviving number, move the
retired number's results, episode and pages to it, and so page the same."""

from __future__ import annotations

import pytest

from aki_alert.detect.model import load_model
from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital import messages
from aki_alert.ingest import Ingest
from aki_alert.offline import offline_pages
from aki_alert.repage import Policy
from aki_alert.timeutil import DAY, format_hl7_time, parse_hl7_date, parse_hl7_time

T0 = parse_hl7_time("20240301080000")
POLICY = Policy(min_hours=24.0, stage_gain=2)


def merge(old, new, t):
    return (f"MSH|^~\\&|PAS|RVJ|||{format_hl7_time(t)}||ADT^A40|||2.5\rPID|1||{new}\r"
            f"MRG|{old}\r").encode()


def result(t, mrn, value):
    return messages.result(t, mrn, value)


def body(t, mrn):
    return f"{mrn},{format_hl7_time(t)}"


def stream() -> list[bytes]:
    return [
        messages.admission(T0 - 40 * DAY, "8", "ANN SMITH", parse_hl7_date("19500101"), "F"),
        result(T0 - 30 * DAY, "8", 100.0),
        result(T0 - 20 * DAY, "9", 90.0),
        result(T0 - 10 * DAY, "8", 105.0),      # both numbers have a result at this time:
        result(T0 - 10 * DAY, "9", 95.0),       # the surviving number's is kept
        result(T0, "8", 155.0),                 # 8 is paged (stage 1 over 100)
        merge("8", "9", T0 + DAY),              # 8 is 9 from now on: its episode and page too
        merge("8", "9", T0 + DAY + 60),         # again (other bytes): the same patient already
        result(T0 + 2 * DAY, "8", 160.0),       # filed under 9, inside the episode: not paged
        result(T0 + 3 * DAY, "8", 400.0),       # markedly worse than 8's page: paged again
        merge("9", "10", T0 + 5 * DAY),         # 9 (and so 8) is 10 from now on
        result(T0 + 6 * DAY, "9", 410.0),       # under 10, inside the re-paged episode
        result(T0 + 120 * DAY, "8", 95.0),
        result(T0 + 121 * DAY, "8", 250.0),     # a new episode, of 10
        result(T0 + 121 * DAY, "10", 250.0),    # the same result, sent under 10: a repeat
    ]


def live_pages(backend, detector) -> list[str]:
    store = backend.open()
    ing = Ingest(store, detector, repage=POLICY)
    return [p.body for m in stream() for p in ing.apply(m, 0.0)]


def test_the_service_and_offline_page_the_same_across_merges(backend):
    expected = [body(T0, "8"), body(T0 + 3 * DAY, "9"), body(T0 + 121 * DAY, "10")]
    assert offline_pages(None, stream(), NhsDetector(), POLICY) == expected
    assert live_pages(backend, NhsDetector()) == expected


@pytest.mark.parametrize("policy", [POLICY, Policy()], ids=["re-page", "never"])
def test_the_model_reads_the_merged_demographics_alike(backend, policy):
    """The model reads age and sex: 8's, kept by the merge where 9 has none."""
    store = backend.open()
    ing = Ingest(store, load_model(), repage=policy)
    live = [p.body for m in stream() for p in ing.apply(m, 0.0)]
    assert live == offline_pages(None, stream(), load_model(), policy)
    assert store.load_patient("10")[0].birth == parse_hl7_date("19500101")

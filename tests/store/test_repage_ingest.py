"""Re-paging within an episode on the live path (ingest.py `_judge`), on SQLite and PostgreSQL:
a wrong moderate page does not silence the real injury, and nothing is paged twice, neither on
re-delivery nor after the state is reopened."""

from __future__ import annotations

import json
import logging

from aki_alert.console import queries
from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital import messages
from aki_alert.ingest import Ingest
from aki_alert.offline import offline_pages
from aki_alert.repage import NEVER, Policy
from aki_alert.timeutil import DAY, format_hl7_time, parse_hl7_time

T0 = parse_hl7_time("20240301080000")
POLICY = Policy(min_hours=24.0, stage_gain=2)


def result(t, value, mrn="7"):
    return messages.result(t, mrn, value)


def withdrawal(t, mrn="7"):
    """OBX-11 W (posted to the wrong patient), sent a minute after the sample."""
    ts = format_hl7_time(t)
    return (f"MSH|^~\\&|LAB|RVJ|||{format_hl7_time(t + 60)}||ORU^R01|||2.5\rPID|1||{mrn}\r"
            f"OBR|1||||||{ts}\rOBX|1|SN|CREATININE||||||||W\r").encode()


def corrected(t, value, mrn="7"):
    """OBX-11 C: the result sampled at `t` corrected to `value`, sent a day later."""
    ts = format_hl7_time(t)
    return (f"MSH|^~\\&|LAB|RVJ|||{format_hl7_time(t + DAY)}||ORU^R01|||2.5\rPID|1||{mrn}\r"
            f"OBR|1||||||{ts}\rOBX|1|SN|CREATININE||{value!r}|umol/L|||||C\r").encode()


def merge(old, new, t):
    return (f"MSH|^~\\&|PAS|RVJ|||{format_hl7_time(t)}||ADT^A40|||2.5\rPID|1||{new}\r"
            f"MRG|{old}\r").encode()


def body(t, mrn="7"):
    return f"{mrn},{format_hl7_time(t)}"


def outbox(backend, store):
    return [(b, json.loads(e)) for b, e in
            backend.rows(store, "SELECT body, explanation FROM outbox ORDER BY id")]


def sent(ing, raw):
    pages = ing.apply(raw, 0.0)
    assert len(pages) <= 1
    return pages[0].body if pages else None


def test_a_wrong_moderate_page_does_not_silence_the_real_injury(backend):
    store = backend.open()
    ing = Ingest(store, NhsDetector(), repage=POLICY)
    assert sent(ing, result(T0 - 30 * DAY, 100.0)) is None
    assert sent(ing, result(T0, 155.0)) == body(T0)                # stage 1: a moderate rise
    assert sent(ing, result(T0 + 12 * 3600, 320.0)) is None         # worse, but within 24 h
    injury = result(T0 + 10 * DAY, 400.0)
    assert sent(ing, injury) == body(T0 + 10 * DAY)                 # stage 3: paged again
    assert sent(ing, injury) is None                                # re-delivered: nothing
    assert sent(ing, result(T0 + 12 * DAY, 410.0)) is None          # no worse than the re-page
    rows = outbox(backend, store)
    assert [b for b, _ in rows] == [body(T0), body(T0 + 10 * DAY)]
    assert rows[1][1]["repage_of"] == format_hl7_time(T0) and rows[1][1]["stage"] == 3
    assert "repage_of" not in rows[0][1]
    assert backend.rows(store, "SELECT episode_start FROM patients WHERE mrn = '7'") == \
        [(T0 + 10 * DAY,)]

    # Reopened (a restart): the episode and its page are read back from the state.
    store.close()
    store = backend.open()
    ing = Ingest(store, NhsDetector(), repage=POLICY)
    assert sent(ing, injury) is None
    assert sent(ing, result(T0 + 13 * DAY, 420.0)) is None
    assert [b for b, _ in outbox(backend, store)] == [body(T0), body(T0 + 10 * DAY)]


def test_without_a_policy_the_episode_stays_silent(backend):
    store = backend.open()
    ing = Ingest(store, NhsDetector(), repage=NEVER)
    sent(ing, result(T0 - 30 * DAY, 100.0))
    assert sent(ing, result(T0, 155.0)) == body(T0)
    assert sent(ing, result(T0 + 10 * DAY, 330.0)) is None


def test_a_withdrawn_repage_falls_back_to_the_first_page(backend):
    store = backend.open()
    ing = Ingest(store, NhsDetector(), repage=POLICY)
    sent(ing, result(T0 - 30 * DAY, 100.0))
    assert sent(ing, result(T0, 155.0)) == body(T0)
    assert sent(ing, result(T0 + 10 * DAY, 400.0)) == body(T0 + 10 * DAY)
    ing.apply(withdrawal(T0 + 10 * DAY), 0.0)
    assert backend.rows(store, "SELECT episode_start FROM patients WHERE mrn = '7'") == [(T0,)]
    # Still the first page's episode: a result no worse than it is not paged.
    assert sent(ing, result(T0 + 11 * DAY, 150.0)) is None
    # And one that is markedly worse than the first page is, once.
    assert sent(ing, result(T0 + 12 * DAY, 400.0)) == body(T0 + 12 * DAY)


def test_a_repage_corrected_to_no_injury_falls_back_to_the_first_page(backend, caplog):
    store = backend.open()
    ing = Ingest(store, NhsDetector(), repage=POLICY)
    sent(ing, result(T0 - 30 * DAY, 100.0))
    assert sent(ing, result(T0, 155.0)) == body(T0)
    assert sent(ing, result(T0 + 10 * DAY, 400.0)) == body(T0 + 10 * DAY)
    with caplog.at_level(logging.WARNING, logger="aki_alert.ingest"):
        assert sent(ing, corrected(T0 + 10 * DAY, 105.0)) is None      # no injury: no page
    first = format_hl7_time(T0)
    assert f"its episode falls back to the page of {first}" in caplog.text
    assert backend.rows(store, "SELECT episode_start FROM patients WHERE mrn = '7'") == [(T0,)]
    (status, reason), = backend.rows(
        store, "SELECT status, reason FROM journal ORDER BY id DESC LIMIT 1")
    assert status == "applied"
    assert f"{format_hl7_time(T0 + 10 * DAY)} corrected to 105 µmol/L, no longer an injury: " \
        f"its episode falls back to the page of {first}" in reason
    # The console reads the episode's start, both pages as sent, and the corrected value.
    db = queries.connect(backend.path if backend.name == "sqlite" else backend.url)
    try:
        view = queries.patient(db, "7")
    finally:
        db.close()
    assert view.episode_start == T0
    assert [a.result_time for a in view.pages] == [T0, T0 + 10 * DAY]
    assert [(r.time, r.value, r.action) for r in view.revisions] == \
        [(T0 + 10 * DAY, 400.0, "corrected")]
    # Still the first page's episode: a positive no worse than it is not paged...
    assert sent(ing, result(T0 + 11 * DAY, 160.0)) is None
    # ...and one markedly worse than it is, as a re-page of it.
    assert sent(ing, result(T0 + 12 * DAY, 400.0)) == body(T0 + 12 * DAY)
    assert outbox(backend, store)[-1][1]["repage_of"] == first


def test_an_episode_does_not_fall_back_to_a_page_no_longer_an_injury(backend, caplog):
    """A page, then a re-page; the first page's result is corrected to no injury (the episode
    runs from the re-page, so nothing changes yet), then the re-page is withdrawn. Nothing left
    reads as an injury: the episode ends, and a later rise is paged. The service and its
    offline reference agree."""
    store = backend.open()
    ing = Ingest(store, NhsDetector(), repage=POLICY)
    stream = [result(T0 - 30 * DAY, 100.0), result(T0, 155.0), result(T0 + 10 * DAY, 400.0),
              corrected(T0, 105.0), withdrawal(T0 + 10 * DAY), result(T0 + 11 * DAY, 160.0)]
    got = []
    with caplog.at_level(logging.WARNING, logger="aki_alert.ingest"):
        for raw in stream[:-1]:
            got += [p.body for p in ing.apply(raw, 0.0)]
    assert got == [body(T0), body(T0 + 10 * DAY)]
    assert "its episode is closed" in caplog.text
    assert backend.rows(store, "SELECT episode_start FROM patients WHERE mrn = '7'") == [(None,)]
    # 160 against a baseline of 100 and 105 is stage 1: a new episode, paged.
    assert sent(ing, stream[-1]) == body(T0 + 11 * DAY)
    assert offline_pages(None, stream, NhsDetector(), POLICY) == \
        [body(T0), body(T0 + 10 * DAY), body(T0 + 11 * DAY)]


def test_a_page_from_a_merged_away_number_is_found(backend):
    """After a merge the episode's page lives under the new number (its body keeps the old)."""
    store = backend.open()
    ing = Ingest(store, NhsDetector(), repage=POLICY)
    sent(ing, result(T0 - 30 * DAY, 100.0, mrn="8"))
    assert sent(ing, result(T0, 155.0, mrn="8")) == body(T0, "8")
    ing.apply(merge("8", "9", T0 + DAY), 0.0)
    assert sent(ing, result(T0 + 10 * DAY, 400.0, mrn="9")) == body(T0 + 10 * DAY, "9")


def test_one_message_that_pages_and_re_pages_dispatches_both(backend):
    """A result message of two samples: the first opens an episode, the second is markedly
    worse and pages again. Both pages go out with the message (none left for a later sweep of
    the outbox), and a re-delivery sends neither again."""
    store = backend.open()
    ing = Ingest(store, NhsDetector(), repage=Policy(stage_gain=1))
    assert not ing.apply(result(T0 - 3 * DAY, 80.0), 0.0)
    t1, t2 = T0, T0 + 2 * 3600
    both = (f"MSH|^~\\&|LAB|RVJ|||{format_hl7_time(t2 + 60)}||ORU^R01|||2.5\rPID|1||7\r"
            f"OBR|1||||||{format_hl7_time(t1)}\rOBX|1|SN|CREATININE||155|umol/L|||||F\r"
            f"OBR|2||||||{format_hl7_time(t2)}\rOBX|1|SN|CREATININE||400|umol/L|||||F\r"
            ).encode()
    assert [p.body for p in ing.apply(both, 0.0)] == [body(t1), body(t2)]
    assert [b for b, _ in outbox(backend, store)] == [body(t1), body(t2)]
    assert outbox(backend, store)[1][1]["repage_of"] == format_hl7_time(t1)
    assert not ing.apply(both, 0.0)

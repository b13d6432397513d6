"""Against the hospital's dev stream (../shared/data/dev-stream; skipped when absent): the
simulator's NHS reference F3 equals an offline evaluation of the aki.csv `nhs` column, and a
client that pages exactly what the simplified NHS algorithm flags scores that F3 live."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
from sim_testkit import Client

from aki_alert import hl7
from aki_alert.detect.nhs import nhs_stage
from aki_alert.history import ImportSummary, read_history
from aki_alert.hospital.datafiles import read_aki, read_messages, read_pages
from aki_alert.hospital.scoring import Scorer, f3
from aki_alert.hospital.simulator import HospitalThread
from aki_alert.mllp import frame

DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "dev-stream"
ACK = frame(b"MSH|^~\\&|||||20240129093837||ACK|||2.5\rMSA|AA\r")

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not (DEV / "messages.mllp").exists(), reason="no dev stream")]


def test_nhs_reference_f3_equals_the_offline_column_and_a_live_nhs_client(tmp_path):
    rows = read_aki(DEV / "aki.csv")
    offline = f3(sum(r.aki and r.nhs for r in rows), sum(not r.aki and r.nhs for r in rows),
                 sum(r.aki and not r.nhs for r in rows))
    seen: dict[str, tuple[list[int], list[float]]] = {}
    for mrn, t, v in sorted(read_history(str(DEV / "history.csv"), ImportSummary()),
                            key=lambda r: r[1]):
        ts, vs = seen.setdefault(mrn, ([], []))
        ts.append(t)
        vs.append(v)
    pages_out = tmp_path / "pages.txt"
    messages = read_messages(DEV / "messages.mllp")
    with HospitalThread(messages, rows, pages_out=pages_out, deadline=5.0) as h:
        assert h.score().nhs_f3 == pytest.approx(offline)
        c = Client(h.hospital.mllp_port)
        pager = http.client.HTTPConnection("127.0.0.1", h.hospital.pager_port, timeout=5)
        paged: set[str] = set()
        for _ in messages:
            ev = hl7.parse(c.recv())
            if isinstance(ev, hl7.Result):
                ts, vs = seen.setdefault(ev.mrn, ([], []))
                obs, = ev.observations
                if nhs_stage(ts, vs, obs.time, obs.value).stage >= 2 and ev.mrn not in paged:
                    paged.add(ev.mrn)
                    pager.request("POST", "/page", body=f"{ev.mrn},{obs.time_text}")
                    assert pager.getresponse().read() == b"ok\n"
                ts.append(obs.time)
                vs.append(obs.value)
            c.send(ACK)
        assert h.wait_done(5.0)
        live = h.score()
        pager.close()
        c.close()
    assert live.f3 == pytest.approx(offline)
    assert live.latency_p90 is not None and live.latency_p90 < 1.0
    scorer = Scorer(rows)
    for mrn, t in read_pages(pages_out):
        scorer.page(mrn, t, None)
    s = scorer.score()
    assert (s.tp, s.fp, s.fn) == (live.tp, live.fp, live.fn)

"""The console over HTTP: authentication, security headers, routing, escaping, read-only; on a
SQLite state and on a PostgreSQL one (the `state` fixture)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from console_testkit import EVIL_NAME, TOKEN, basic, build_revisions_state, request

from aki_alert.console import queries, server, start
from aki_alert.patientid import MAX_MRN_LENGTH, is_valid_mrn

PAGES = ("/", "/service", "/patients/7", "/?before=3")


def assert_security_headers(r) -> None:
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "style-src 'unsafe-inline'" in csp
    assert "img-src 'self' data:" in csp and "script-src" not in csp
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize("path", PAGES + ("/nope", "/patients/999"))
def test_no_token_is_refused_with_a_basic_challenge(console, path):
    r = request(console, path, auth=None)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith('Basic realm="aki-alert"')
    assert_security_headers(r)
    assert "ANN" not in r.text and "script>" not in r.text and "7," not in r.text


@pytest.mark.parametrize("auth", [
    "Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Token {TOKEN}",
    basic("admin", "wrong"), basic(TOKEN, ""), "Basic not-base64!!",
    "Basic " + "dG9rZW4=",                # "token": no colon
    TOKEN, "",
])
def test_a_wrong_token_is_refused(console, auth):
    r = request(console, "/", auth=auth)
    assert r.status == 401
    assert_security_headers(r)


@pytest.mark.parametrize("auth", [f"Bearer {TOKEN}", f"bearer  {TOKEN}", basic("anyone", TOKEN),
                                  basic("", TOKEN)])
def test_the_token_is_accepted_as_bearer_or_basic_password(console, auth):
    r = request(console, "/", auth=auth)
    assert r.status == 200 and "<h1>Alerts</h1>" in r.text


def test_tokens_are_compared_in_constant_time(console, monkeypatch):
    calls = []
    real = server.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(server.hmac, "compare_digest", spy)
    assert request(console, "/", auth="Bearer x").status == 401
    assert request(console, "/", auth=basic("u", TOKEN)).status == 200
    # Digests are compared, so a short guess costs the same as a long one.
    assert calls == [(32, 32), (32, 32)]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_is_served_with_security_headers(console, path):
    r = request(console, path)
    assert r.status == 200, r.text
    assert_security_headers(r)
    assert "<script" not in r.text.lower()
    assert r.headers["Server"].startswith("aki-alert-console")


@pytest.mark.parametrize("path", ["/patients/999999", "/patients/abc", "/patients/7/x",
                                  "/patients/", "/patients/%37%00", "/nope", "/favicon.ico",
                                  "/patients/" + "1" * 40])
def test_unknown_pages_and_patients_are_404(console, path):
    r = request(console, path)
    assert r.status == 404
    assert_security_headers(r)
    assert "Not found" in r.text


def test_only_get_and_head(console):
    r = request(console, "/", method="POST")
    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
    assert_security_headers(r)
    r = request(console, "/", method="HEAD")
    assert r.status == 200 and r.text == "" and int(r.headers["Content-Length"]) > 0


def test_bad_pagination_is_400(console):
    assert request(console, "/?before=x'").status == 400


def test_patient_name_is_escaped_everywhere(console, state):
    for path in ("/", "/patients/7"):
        r = request(console, path)
        assert r.status == 200
        assert "<script>" not in r.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; O&#x27;BRIEN &quot;X&quot;" in r.text
    assert EVIL_NAME not in request(console, "/patients/7").text


def test_alerts_page_lists_the_pages_with_their_delivery(console, state):
    text = request(console, "/").text
    for mrn in state["pages"]:
        assert f'href="/patients/{mrn}"' in text
    for label in ("delivered", "dead-lettered", "retrying", "suppressed (replay)"):
        assert label in text
    assert "400 Bad Request: unknown MRN" in text and "connection refused" in text


def test_service_page_shows_feed_outbox_dead_letters_and_provenance(console):
    text = request(console, "/service").text
    assert "test-hospital" in text and "ab" * 32 in text and "nhs-england-2014" in text
    assert "message does not start with an MSH segment" in text
    assert "this is not HL7 at all" in text
    assert "400 Bad Request: unknown MRN" in text


def test_a_state_not_created_yet_is_503_not_a_crash(new_state):
    s = start("127.0.0.1", 0, TOKEN, new_state)
    try:
        for path in ("/", "/service", "/patients/7"):
            r = request(s, path)
            assert r.status == 503 and "State unavailable" in r.text
            assert_security_headers(r)
    finally:
        s.shutdown()
    if not new_state.startswith("postgresql://"):
        assert not Path(new_state).exists()           # mode=ro never creates the file


def test_an_unreachable_database_is_503_and_its_password_shown_nowhere(caplog):
    pytest.importorskip("psycopg")
    s = start("127.0.0.1", 0, TOKEN, "postgresql://aki:s3cret-pw@127.0.0.1:1/aki")
    try:
        with caplog.at_level(logging.DEBUG, logger="aki_alert.console"):
            r = request(s, "/")
    finally:
        s.shutdown()
    assert r.status == 503 and "State unavailable" in r.text and "s3cret" not in r.text
    assert "console cannot read the state: state user=aki" in caplog.text
    assert "s3cret" not in caplog.text


def test_the_console_connection_is_read_only(state):
    db = queries.connect(state["state"])
    try:
        with pytest.raises(db.errors, match="read-?only"):
            db.execute("DELETE FROM outbox")
    finally:
        db.close()


def test_a_token_is_required_and_shutdown_frees_the_port(state):
    with pytest.raises(ValueError):
        start("127.0.0.1", 0, "", state["state"])
    s = start("127.0.0.1", 0, TOKEN, state["state"])
    port = s.port
    assert request(s, "/").status == 200
    s.shutdown()
    s.shutdown()   # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_binds_to_the_given_host_only(state):
    s = start("127.0.0.1", 0, TOKEN, state["state"])
    try:
        assert s.server_address[0] == "127.0.0.1"
    finally:
        s.shutdown()


# --- MRNs as the feed has them; a trust's statuses, corrections, withdrawals, merges ----------

@pytest.fixture
def rev_console(new_state):
    build_revisions_state(new_state)
    s = start("127.0.0.1", 0, TOKEN, new_state)
    yield s
    s.shutdown()


@pytest.mark.parametrize("mrn", [
    "RVJ1001", "rvj1001", "K0012345", "A-1", "9" * MAX_MRN_LENGTH, "Z" * MAX_MRN_LENGTH,
    "A" * (MAX_MRN_LENGTH + 1), "-1", "a b", "A_1", "1.2", "\u0661\u0662", "é1", "A,1", "",
    "1\x00", "../7", "7/x"])
def test_the_patient_route_takes_exactly_the_mrns_the_feed_may_send(console, mrn):
    from urllib.parse import quote

    r = request(console, "/patients/" + quote(mrn, safe=""))
    assert r.status == 404
    # An MRN the service can hold is looked up (none of these is in the state); any other
    # never reaches the state.
    expect = "No patient with this MRN" if is_valid_mrn(mrn) else "No such patient"
    assert expect in r.text, (mrn, r.text)


def test_an_alphanumeric_mrns_page(rev_console):
    r = request(rev_console, "/patients/RVJ1001")
    assert r.status == 200
    assert '<span id="mrn">RVJ1001</span>' in r.text
    assert request(rev_console, "/patients/RVJ%31001").status == 200     # %31 is "1"


def test_statuses_corrections_and_withdrawals_are_shown(rev_console):
    text = request(rev_console, "/patients/RVJ1001").text
    assert '<td class="n">&lt;10.0</td>' in text                       # censored, with "<"
    assert '<span class="badge prelim">preliminary</span>' in text
    assert '<span class="badge corr">corrected</span></td><td>feed' in text   # current, C
    corrected = text.split('data-action="corrected"')[1].split("</tr>")[0]
    assert "<del>100.0</del>" in corrected and ">corrected</span>" in corrected
    wrong = text.split('data-action="removed"')[2].split("</tr>")[0]
    assert "<del>300.0</del>" in wrong and "withdrawn (wrong patient)" in wrong
    deleted = text.split('data-action="removed"')[1].split("</tr>")[0]
    assert "<del>150.0</del>" in deleted and "withdrawn (deleted)" in deleted
    # The page for a result withdrawn since says so.
    assert "creatinine 300 µmol/L, since <span class=\"badge gone\">withdrawn (wrong " \
           "patient)</span> by the lab" in text


def test_a_merged_away_number_shows_the_pointer_not_a_404(rev_console):
    r = request(rev_console, "/patients/2001")
    assert r.status == 200
    assert ("This patient's number <strong>2001</strong> was merged into "
            '<a href="/patients/2002">2002</a> on ') in r.text
    assert "moved to" in r.text and "<del>250.0</del>" in r.text


def test_the_survivor_shows_the_merge_and_what_came_with_it(rev_console):
    text = request(rev_console, "/patients/2002").text
    assert 'Number <a href="/patients/2001">2001</a> was merged into this patient (2002)' \
        in text
    assert "from 2001 (merged)" in text                     # 2001's 250, now 2002's, paged
    assert "merged, not kept</span> from 2001" in text and "<del>80.0</del>" in text
    assert "BOB JONES" in text and "Paged for the result of 2024-03-02 08:00" in text


# --- clinically honest: the rule, the delivery, the results since, names, queries ------------

def test_a_32_character_mrn_that_was_paged_is_linked_and_shown(clinical_console):
    from console_testkit import MRN32

    assert len(MRN32) == MAX_MRN_LENGTH and is_valid_mrn(MRN32)
    assert f'<a href="/patients/{MRN32}">{MRN32}</a>' in request(clinical_console, "/").text
    r = request(clinical_console, f"/patients/{MRN32}")
    assert r.status == 200 and f'<span id="mrn">{MRN32}</span>' in r.text
    assert "by the ratio rule (C1/RV1 ≥ 2)" in r.text
    r = request(clinical_console, f"/patients/{MRN32}X")
    assert r.status == 404 and "No such patient" in r.text


def test_each_rule_is_named_on_the_patient_page(clinical_console):
    text = request(clinical_console, "/patients/ABS1").text
    assert "creatinine 380 µmol/L is above 354 µmol/L, with a ratio of 2.26× the baseline 168" \
        in text and "by the absolute rule" in text and "by the ratio rule" not in text
    assert '<line class="absolute" data-value="354"' in text
    assert "Since the page: 2 results; the latest, 250 µmol/L on 2024-03-04 08:00, 130 µmol/L " \
           "lower than the paged result (0.66×)." in text
    text = request(clinical_console, "/patients/RISE1").text
    assert "creatinine 89 µmol/L: a rise of 29 µmol/L over the result of 2024-03-01 08:00 " \
           "(60 µmol/L), more than 26 µmol/L within 48 hours" in text
    assert "by the 48-hour rise rule" in text and '<g class="rise"' in text


def test_pages_never_delivered_are_red_everywhere_with_the_pagers_answer(clinical_console):
    from console_testkit import MRN32

    alerts = request(clinical_console, "/").text
    assert 'role="alert">2 pages in the outbox <strong>not delivered</strong>' in alerts
    red = {row.split('data-mrn="')[1].split('"')[0]
           for row in alerts.split('<tr class="alert undelivered"')[1:]}
    assert red == {"RISE1", MRN32}
    assert "pager: <bdi>400 Bad Request: unknown MRN</bdi>" in alerts
    assert "pager: <bdi>timeout</bdi>" in alerts
    patient = request(clinical_console, "/patients/RISE1").text
    assert "Not delivered: the page for the result of 2024-03-02 08:00 never reached the " \
           "pager</strong> (it refused the page; dead-lettered after 1 attempt(s))" in patient
    assert "The pager answered: <bdi>400 Bad Request: unknown MRN</bdi>" in patient
    assert "Paged for the result" not in patient
    assert "Paged for the result" in request(clinical_console, "/patients/ABS1").text
    service = request(clinical_console, "/service").text
    assert 'Pages not delivered</div><div class="v"><span class="badge bad">2</span>' in service
    table = service.split('id="not-delivered-pages"')[1].split("</table>")[0]
    assert f'data-mrn="{MRN32}"' in table and 'data-mrn="RISE1"' in table
    assert "FRESH" not in table and "ABS1" not in table


def test_a_long_right_to_left_name_is_isolated_and_cut(clinical_console):
    from console_testkit import MRN32, RTL_NAME

    for path in ("/", f"/patients/{MRN32}"):
        text = request(clinical_console, path).text
        assert f'<bdi class="name" title="{RTL_NAME}">{RTL_NAME[:39].rstrip()}…</bdi>' in text


@pytest.mark.parametrize("path, says", [
    ("/?page=abc", "Unknown query parameter &#x27;page&#x27;"),
    ("/?limit=-1", "limit= takes a number of pages from 1 to 1000"),
    ("/?status=dead", "Unknown query parameter"),
    ("/?before=99999999999999999999", "before= takes a page id"),
    ("/?before=1&before=2", "given more than once"),
    ("/?before=%ff", "The query string cannot be read"),
    ("/service?x=1", "this page takes refresh= only"),
    ("/patients/ABS1?before=3", "this page takes refresh= only"),
    ("/?refresh=1", "refresh= takes 0"),
])
def test_bad_query_values_are_400_with_a_clear_message(clinical_console, path, says):
    r = request(clinical_console, path)
    assert r.status == 400, r.text
    assert says in r.text and "400 · Bad request" in r.text
    assert_security_headers(r)


def test_limit_pages_the_alerts(clinical_console):
    r = request(clinical_console, "/?limit=2")
    assert r.status == 200 and r.text.count('<tr class="alert') == 2
    older = r.text.split('href="/?before=')[1].split('"')[0]
    assert older.endswith("&amp;limit=2")
    r = request(clinical_console, "/?before=" + older.replace("&amp;", "&"))
    assert r.status == 200 and r.text.count('<tr class="alert') == 2


def test_pages_refresh_themselves_unless_paused(clinical_console, clinical):
    for path in ("/", "/service", "/patients/ABS1"):
        text = request(clinical_console, path).text
        assert f'<meta http-equiv="refresh" content="{server.REFRESH}">' in text
        assert f'<a href="{path}?refresh=0">pause</a>' in text
        paused = request(clinical_console, path + "?refresh=0").text
        assert "http-equiv" not in paused and f'<a href="{path}">resume</a>' in paused
    assert 'content="60"' in request(clinical_console, "/?before=9&refresh=60").text
    assert '<a href="/?before=9&amp;refresh=0">pause</a>' in request(
        clinical_console, "/?before=9&refresh=60").text
    s = start("127.0.0.1", 0, TOKEN, clinical["state"], refresh=0)
    try:
        text = request(s, "/").text
        assert "http-equiv" not in text and 'id="refresh"' not in text
    finally:
        s.shutdown()


def test_an_aborted_connection_is_one_debug_line_not_a_traceback(clinical_console, monkeypatch,
                                                                 caplog, capfd):
    import struct
    import time

    from aki_alert.console import render

    # A page big enough that the client is gone before it is written.
    monkeypatch.setattr(render, "alerts_page", lambda *a, **k: "x" * 8_000_000)
    with caplog.at_level(logging.DEBUG, logger="aki_alert.console"):
        s = socket.create_connection(("127.0.0.1", clinical_console.port), timeout=5)
        s.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                  .encode())
        assert s.recv(1024).startswith(b"HTTP/1.1 200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()                                       # a reset, mid-response
        deadline = time.monotonic() + 5
        while "went away" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG
    assert lines[0].exc_info is None
    assert "Error" in lines[0].getMessage()             # BrokenPipeError or ConnectionResetError
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Exception occurred" not in err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("mode,shown", [("plain", "/patients/7"), ("none", "/patients/mrn#-")])
def test_the_access_log_shows_a_patients_number_as_log_patient_ids_says(console, caplog, mode,
                                                                        shown):
    from aki_alert import logs

    logs.set_patient_ids(mode, "")
    try:
        with caplog.at_level(logging.DEBUG, logger="aki_alert.console"):
            assert request(console, "/patients/7").status == 200
    finally:
        logs.set_patient_ids()
    access = [r.getMessage() for r in caplog.records if "GET " in r.getMessage()]
    assert access and all(shown in line for line in access)
    if mode == "none":
        assert "/patients/7" not in caplog.text


def test_logged_path_hides_the_mrn_when_hashed():
    from aki_alert import logs

    logs.set_patient_ids("hashed", "k" * 16)
    try:
        assert server.logged_path("/patients/A%2012?x=1") == "/patients/" + logs.patient("A 12")
        assert server.logged_path("/service?x=1") == "/service"
    finally:
        logs.set_patient_ids()

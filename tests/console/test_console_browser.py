"""The console in headless Chromium against the real `aki-alert serve` process (DETECTOR=nhs),
fed by the built-in hospital with a small generated stream; and against console_testkit's
pages of each NHS rule and delivery fate, on both backends. Every page at desktop width
(1280 px) and phone width (390 px), where nothing may overflow the page horizontally.

Needs Debian's chromium and chromedriver and the selenium package; skips with the reason when
any is missing. Screenshots of each page go to the test's temporary directory and to
out/console-screenshots/ (gitignored).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from aki_alert.hospital.process import terminate
from aki_alert.hospital.datafiles import read_aki, read_messages, read_pages, write_hospital
from aki_alert.hospital.generator import generate
from aki_alert.hospital.simulator import HospitalThread
from integration.service_process import wait_for
from aki_alert.timeutil import format_hl7_time

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "out" / "console-screenshots"
TOKEN = "browser-test-token"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium not installed (pip install selenium==4.51.0)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, auth: str | None = None) -> int | None:
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def pending(state: Path) -> int | None:
    try:
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
        try:
            return db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return None


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """The hospital and the service with its console, the whole stream delivered."""
    d = tmp_path_factory.mktemp("console-e2e")
    paths = write_hospital(d / "hospital", generate(days=20, patients=2000, seed=11,
                                                    cohort_size=10))
    msgs, rows = read_messages(paths["messages"]), read_aki(paths["aki"])
    pages_out = d / "pages.txt"
    port = free_port()
    with HospitalThread(msgs, rows, pages_out=pages_out) as h:
        env = dict(os.environ, MLLP_ADDRESS=f"127.0.0.1:{h.hospital.mllp_port}",
                   PAGER_ADDRESS=f"127.0.0.1:{h.hospital.pager_port}", STATE_DIR=str(d / "state"),
                   HISTORY_PATH=str(paths["history"]), METRICS_PORT=str(free_port()),
                   DETECTOR="nhs",
                   AKI_ENVIRONMENT="console-e2e-hospital", CONSOLE_PORT=str(port),
                   CONSOLE_TOKEN=TOKEN, LOG_LEVEL="WARNING")
        log = open(d / "serve.log", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            assert h.wait_done(60), "the service did not take the stream"
            state = d / "state" / "state.db"
            assert wait_for(lambda: pending(state) == 0 and pages_out.exists()
                            and len(read_pages(pages_out)) >= 1, 20)
            assert http_status(url + "/", f"Bearer {TOKEN}") == 200
            yield {"url": url, "pages": read_pages(pages_out), "state": state, "proc": proc}
        finally:
            code = terminate(proc)
            log.seek(0)
            text = log.read()
            log.close()
            assert code == 0, text[-3000:]


def new_driver():
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--hide-scrollbars", "--window-size=1400,1000",
              f"--user-data-dir={tempfile.mkdtemp(prefix='aki-chromium-')}"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
    driver.set_page_load_timeout(15)
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = new_driver()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = tmp_path_factory.mktemp("console-screenshots")
    SHOTS.mkdir(parents=True, exist_ok=True)
    return d


DESKTOP, PHONE = 1280, 390


def set_width(driver, width: int | None) -> None:
    """Lay the page out `width` CSS pixels wide (PHONE: a phone, mobile viewport rules and
    touch); None: back to the window's size."""
    if width is None:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        return
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": 844 if width <= 480 else 900, "deviceScaleFactor": 1,
        "mobile": width <= 480})


def assert_no_horizontal_overflow(driver, width: int) -> None:
    scroll, inner = driver.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner and scroll <= width, (
        f"{driver.current_url} is {scroll} px wide at {width} px (innerWidth {inner})")


def screenshot(driver, shots: Path, name: str, width: int = 1400) -> Path:
    """The whole page (up to 3000 px high) as PNG, in `shots` and in out/console-screenshots."""
    m = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    height = min(3000, int(m["cssContentSize"]["height"]))
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})["data"]
    path = shots / f"{name}.png"
    path.write_bytes(base64.b64decode(png))
    shutil.copy(path, SHOTS / path.name)
    return path


def document_statuses(driver) -> list[tuple[str, int]]:
    out = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.responseReceived" and msg["params"]["type"] == "Document":
            out.append((msg["params"]["response"]["url"], msg["params"]["response"]["status"]))
    return out


def login(driver, url: str) -> None:
    """The browser's basic-auth login, as a user answering the prompt would: the password is
    the token; the browser then sends it with every page of this origin."""
    driver.get(url.replace("http://", f"http://console:{TOKEN}@") + "/")


def test_no_token_and_a_wrong_token_are_refused(running):
    driver = new_driver()
    try:
        driver.get(running["url"] + "/")
        assert document_statuses(driver)[-1] == (running["url"] + "/", 401)
        assert "Alerts" not in driver.title
        driver.get(running["url"].replace("http://", "http://console:wrong@") + "/service")
        assert document_statuses(driver)[-1][1] == 401
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                               {"headers": {"Authorization": "Bearer wrong"}})
        driver.get(running["url"] + "/patients/" + running["pages"][0][0])
        assert document_statuses(driver)[-1][1] == 401
        assert "Patient" not in driver.title
    finally:
        driver.quit()


def test_alerts_page_shows_the_pages_the_hospital_received(running, browser, shots):
    login(browser, running["url"])
    assert browser.title.startswith("Alerts")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.alert")
    shown = {(r.get_attribute("data-mrn"), int(r.get_attribute("data-time"))) for r in rows}
    received = set(running["pages"])
    assert len(received) >= 3 and shown == received
    assert {r.get_attribute("data-status") for r in rows} == {"delivered"}
    assert screenshot(browser, shots, "alerts").stat().st_size > 10_000


def test_patient_page_marks_the_triggering_result(running, browser, shots):
    login(browser, running["url"])
    # The paged patient with the most results, reached by clicking its MRN on the alerts page.
    db = sqlite3.connect(f"file:{running['state']}?mode=ro", uri=True)
    mrn, t, baseline = db.execute(
        "SELECT o.mrn, o.result_time, json_extract(o.explanation, '$.baseline') FROM outbox o "
        "WHERE json_extract(o.explanation, '$.baseline') IS NOT NULL ORDER BY "
        "(SELECT count(*) FROM results r WHERE r.mrn = o.mrn) DESC, o.id LIMIT 1").fetchone()
    db.close()
    row = browser.find_element(By.CSS_SELECTOR,
                               f"tr.alert[data-mrn='{mrn}'][data-time='{t}']")
    assert row.find_element(By.CSS_SELECTOR, "td.time").text == (
        f"{format_hl7_time(t)[:4]}-{format_hl7_time(t)[4:6]}-{format_hl7_time(t)[6:8]} "
        f"{format_hl7_time(t)[8:10]}:{format_hl7_time(t)[10:12]}")
    row.find_element(By.CSS_SELECTOR, "td.mrn a").click()
    assert browser.current_url.endswith(f"/patients/{mrn}")
    assert browser.find_element(By.ID, "mrn").text == mrn
    chart = browser.find_element(By.CSS_SELECTOR, "svg.creatinine-chart")
    points = chart.find_elements(By.CSS_SELECTOR, "circle.result")
    assert len(points) == len(browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")) > 1
    trigger = chart.find_element(By.CSS_SELECTOR, f"g.trigger[data-time='{t}']")
    point = chart.find_element(By.CSS_SELECTOR, f"circle.result[data-time='{t}']")
    ring = trigger.find_element(By.TAG_NAME, "circle")
    assert (ring.get_attribute("cx"), ring.get_attribute("cy")) == (
        point.get_attribute("cx"), point.get_attribute("cy"))
    assert trigger.get_attribute("data-value") == point.get_attribute("data-value")
    line = chart.find_element(By.CSS_SELECTOR, f"g.baseline[data-time='{t}']")
    assert float(line.get_attribute("data-value")) == pytest.approx(baseline, rel=1e-5)
    assert chart.find_elements(By.CSS_SELECTOR, "rect.window.rv1")
    assert browser.find_elements(By.CSS_SELECTOR, "#results tr.hl")
    assert screenshot(browser, shots, "patient").stat().st_size > 10_000
    browser.get(running["url"] + "/patients/1")
    assert "404" in browser.find_element(By.TAG_NAME, "h1").text
    screenshot(browser, shots, "patient-404")


def test_service_page_shows_the_feed_and_provenance(running, browser, shots):
    login(browser, running["url"])
    browser.find_element(By.LINK_TEXT, "Service").click()
    assert browser.title.startswith("Service")
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "connected" in text and "disconnected" not in text
    assert "console-e2e-hospital" in text and "nhs-england-2014" in text
    assert browser.find_element(By.ID, "provenance")
    assert screenshot(browser, shots, "service").stat().st_size > 10_000


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
def test_every_page_fits_the_screen(running, browser, shots, width):
    """The real service's pages at desktop and phone width: no horizontal page overflow."""
    db = sqlite3.connect(f"file:{running['state']}?mode=ro", uri=True)
    (mrn,) = db.execute("SELECT o.mrn FROM outbox o ORDER BY (SELECT count(*) FROM results r "
                        "WHERE r.mrn = o.mrn) DESC, o.id LIMIT 1").fetchone()
    db.close()
    login(browser, running["url"])
    set_width(browser, width)
    try:
        for name, path in (("alerts", "/"), ("patient", f"/patients/{mrn}"),
                           ("service", "/service")):
            browser.get(running["url"] + path)
            assert browser.find_element(By.TAG_NAME, "h1").text
            assert_no_horizontal_overflow(browser, width)
            assert browser.find_element(By.ID, "refresh").text.startswith("Updates every")
            screenshot(browser, shots, f"{name}-{width}", width)
    finally:
        set_width(browser, None)


# --- each rule, each delivery fate, on both backends ------------------------------------------

def login_to(driver, server) -> str:
    from console_testkit import TOKEN as KIT_TOKEN

    driver.get(f"http://console:{KIT_TOKEN}@127.0.0.1:{server.port}/")
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
def test_rules_delivery_and_names_as_a_clinician_sees_them(clinical_console, clinical, browser,
                                                          shots, width):
    from console_testkit import MRN32, RTL_NAME

    url = login_to(browser, clinical_console)
    tag = f"{clinical['backend']}-{width}"
    set_width(browser, width)
    try:
        browser.get(url + "/")
        assert_no_horizontal_overflow(browser, width)
        alarm = browser.find_element(By.ID, "undelivered")
        assert alarm.is_displayed() and "2 pages in the outbox not delivered" in alarm.text
        red = browser.find_elements(By.CSS_SELECTOR, "tr.alert.undelivered")
        assert {r.get_attribute("data-mrn") for r in red} == {"RISE1", MRN32}
        badge = red[0].find_element(By.CSS_SELECTOR, ".badge.d-undelivered")
        assert badge.is_displayed() and badge.value_of_css_property("background-color") == \
            "rgba(179, 38, 30, 1)"
        # The long right-to-left name: cut, isolated, and the full name on hover.
        name = browser.find_element(By.CSS_SELECTOR, f"tr.alert[data-mrn='{MRN32}'] bdi.name")
        assert name.get_attribute("title") == RTL_NAME and name.text.endswith("…")
        assert name.size["width"] <= width
        screenshot(browser, shots, f"clinical-alerts-{tag}", width)

        # The 32-character MRN, by its link.
        browser.find_element(By.CSS_SELECTOR, f"tr.alert[data-mrn='{MRN32}'] td.mrn a").click()
        assert browser.find_element(By.ID, "mrn").text == MRN32
        assert_no_horizontal_overflow(browser, width)
        head = browser.find_element(By.CSS_SELECTOR, ".explain.undelivered .headline")
        assert head.text.startswith("Not delivered")
        screenshot(browser, shots, f"clinical-patient-mrn32-{tag}", width)

        # The absolute rule: named, and the point drawn above the 354 line.
        browser.get(url + "/patients/ABS1")
        assert_no_horizontal_overflow(browser, width)
        rule = browser.find_element(By.CSS_SELECTOR, ".explain .rule[data-rule='absolute']")
        assert "by the absolute rule" in rule.text and "The ratio alone would be stage 2" in \
            rule.text
        chart = browser.find_element(By.CSS_SELECTOR, "svg.creatinine-chart")
        line = chart.find_element(By.CSS_SELECTOR, "line.absolute")
        point = chart.find_element(By.CSS_SELECTOR, "g.trigger circle")
        assert point.rect["y"] + point.rect["height"] / 2 < line.rect["y"]
        since = browser.find_element(By.CSS_SELECTOR, ".explain .since-page")
        assert since.get_attribute("data-trend") == "falling" and "250 µmol/L" in since.text
        screenshot(browser, shots, f"clinical-patient-absolute-{tag}", width)

        # The rise, refused by the pager.
        browser.get(url + "/patients/RISE1")
        assert_no_horizontal_overflow(browser, width)
        text = browser.find_element(By.CSS_SELECTOR, ".explain").text
        assert "by the 48-hour rise rule" in text and "400 Bad Request: unknown MRN" in text
        assert browser.find_element(By.CSS_SELECTOR, "g.rise")
        screenshot(browser, shots, f"clinical-patient-rise-{tag}", width)

        browser.get(url + "/service")
        assert_no_horizontal_overflow(browser, width)
        card = browser.find_element(By.XPATH, "//div[@class='k'][.='Pages not delivered']/..")
        assert card.find_element(By.CSS_SELECTOR, ".badge.bad").text == "2"
        rows = browser.find_elements(By.CSS_SELECTOR, "#not-delivered-pages tr.undelivered")
        assert {r.get_attribute("data-mrn") for r in rows} == {"RISE1", MRN32}
        screenshot(browser, shots, f"clinical-service-{tag}", width)
    finally:
        set_width(browser, None)


def test_the_page_refreshes_and_keeps_its_scroll_position(clinical, browser):
    """A meta refresh reloads the same URL; the browser restores where the reader was."""
    from aki_alert.console import start
    from console_testkit import TOKEN as KIT_TOKEN

    s = start("127.0.0.1", 0, KIT_TOKEN, clinical["state"], refresh=2)
    try:
        url = login_to(browser, s)
        set_width(browser, PHONE)
        browser.get(url + "/")
        browser.execute_script("window.scrollTo(0, 400); window.__before_reload = 1")
        y = browser.execute_script("return window.scrollY")
        assert y > 0
        wait_for(lambda: browser.execute_script("return window.__before_reload") is None, 10)
        assert browser.execute_script(
            "return performance.getEntriesByType('navigation')[0].type") == "reload"
        assert browser.execute_script("return window.scrollY") == y
        # Paused: no reload.
        browser.find_element(By.CSS_SELECTOR, "#refresh a").click()
        assert "paused" in browser.find_element(By.ID, "refresh").text
        browser.execute_script("window.__paused = 1")
        import time
        time.sleep(3)
        assert browser.execute_script("return window.__paused") == 1
    finally:
        set_width(browser, None)
        s.shutdown()

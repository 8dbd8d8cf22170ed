"""The report in a real headless browser: Chromium from Debian's packages, driven by chromedriver.

Renders the report of a known ledger (tests/known_ledger.py), takes a full-page screenshot
(``report.png`` in the test's tmp dir), and checks that the page logged no console error, fetched
nothing but itself, drew its charts, and shows the ledger's numbers in its DOM.

Needs ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``;
``.ci/run`` installs them when missing) and selenium (the ``test`` extra). Without them the test
skips with the reason; CI fails on a skip.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import tempfile
import typing as t

import pytest

from tests import known_ledger
from tests.known_ledger import (
    EXPECTED_IN_DOUBT,
    EXPECTED_REJECTED,
    EXPECTED_RUNS,
    EXPECTED_TOTALS,
    XSS_EVENT,
)
from tests.test_report import render_known

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


@pytest.fixture
def browser() -> t.Iterator[t.Any]:
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip(
            "Chromium is not installed: apt-get install -y chromium chromium-driver "
            "(Debian's packages; .ci/run installs them)"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
    )
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="target-everflow-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # never Selenium Manager: no browser or driver download
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def full_page_png(driver: t.Any) -> bytes:
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    return base64.b64decode(shot["data"])


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_in_headless_chromium(tmp_path, browser):
    ledger = known_ledger.build_sqlite(tmp_path / "ledger.db")
    _, _ = render_known(tmp_path, ledger)
    page = tmp_path / "out" / "report.html"
    browser.get(page.as_uri())
    assert browser.title.startswith("Everflow conversions")

    png = full_page_png(browser)
    (tmp_path / "report.png").write_bytes(png)
    width, height = png_size(png)
    assert width >= 1000 and height > 900  # the whole page, not only the window

    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    by_page, web = set(), set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if message["params"].get("documentURL") == page.as_uri():
                by_page.add(url)
            if url.startswith(("http:", "https:", "ws:", "wss:")):
                web.add(url)
    assert by_page == {page.as_uri()}, by_page  # the page loads itself and nothing else
    assert web == set(), web  # and nothing at all went to the network

    from selenium.webdriver.common.by import By

    for element_id, value in EXPECTED_TOTALS.items():
        element = browser.find_element(By.ID, element_id)
        assert float(element.get_attribute("data-value")) == pytest.approx(value), element_id
        assert element.is_displayed()
    assert browser.find_element(By.ID, "total-delivered").text == "7"
    assert browser.find_element(By.ID, "total-amount-usd").text == "36.75"
    assert browser.find_element(By.ID, "total-amount-none").text == "7.00"

    expected = known_ledger.expected_cells(ledger.now)
    rows = browser.find_elements(By.CSS_SELECTOR, "#detail-table tbody tr")
    seen = {}
    for row in rows:
        cells = {
            c.get_attribute("data-metric"): c.text
            for c in row.find_elements(By.CSS_SELECTOR, "td[data-metric]")
        }
        seen[(row.get_attribute("data-day"), row.get_attribute("data-event"))] = cells
    assert set(seen) == set(expected)
    for key, numbers in expected.items():
        for metric in (
            "delivered",
            "dead_lettered",
            "too_old",
            "in_doubt",
            "confirmed",
            "rejected",
            "not_found",
        ):
            assert seen[key][metric] == str(numbers.get(metric, 0)), (key, metric)
        shown = [f"{v} {c}" for c, v in numbers["amounts"].items()]
        assert sorted(seen[key]["amount"].split("\n")) == sorted(shown or [""]), key
    cell_texts = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#detail-table td")]
    assert XSS_EVENT in cell_texts  # shown as text
    assert browser.execute_script("return document.scripts.length") == 0

    runs = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    assert [r.get_attribute("data-run") for r in runs] == EXPECTED_RUNS

    # The charts are drawn: visible, wide, with bars whose heights follow the numbers.
    for chart in (
        "chart-days",
        "chart-amounts-usd",
        "chart-amounts-eur",
        "chart-amounts-none",
        "chart-reconciliation",
        "chart-age",
        "chart-events",
    ):
        box = browser.find_element(By.ID, chart).rect
        assert box["width"] > 600 and box["height"] > 60, (chart, box)
    bars = browser.execute_script(
        "return Array.from(document.querySelectorAll('#chart-days rect[data-series=delivered]'))"
        ".map(r => [r.dataset.label, +r.dataset.value, r.getBoundingClientRect().height]);"
    )
    values = {label: (value, h) for label, value, h in bars}
    a = known_ledger.day_name(2, ledger.now)
    b = known_ledger.day_name(1, ledger.now)
    assert values[a][0] == 4 and values[b][0] == 2
    assert values[a][1] == pytest.approx(values[b][1] * 2, rel=0.05)

    # At 1280 px nothing scrolls sideways: not the page, not a table in its box.
    assert browser.execute_script("return window.innerWidth") == 1280
    overflow = browser.execute_script(
        "const d = document.documentElement;"
        "const wide = Array.from(document.querySelectorAll('.wide, table, section'))"
        "  .filter(e => e.scrollWidth > e.clientWidth + 1)"
        "  .map(e => (e.id || e.className || e.tagName) + ':' + e.scrollWidth + '>' + e.clientWidth);"
        "return [d.scrollWidth, d.clientWidth, wide];"
    )
    assert overflow[0] <= overflow[1] and overflow[2] == [], overflow
    runs_box = browser.find_element(By.ID, "runs-table").rect
    assert runs_box["x"] + runs_box["width"] <= 1280, runs_box

    # What needs action is on the page, visible, without the command line.
    section = browser.find_element(By.ID, "needs-action")
    assert section.is_displayed()
    keys = browser.find_elements(By.CSS_SELECTOR, "#in-doubt-keys li")
    assert [k.get_attribute("data-key") for k in keys] == EXPECTED_IN_DOUBT
    assert all(k.is_displayed() for k in keys)
    rejected = browser.find_elements(By.CSS_SELECTOR, "#rejected-transactions li")
    assert [
        (r.get_attribute("data-transaction"), r.get_attribute("data-code")) for r in rejected
    ] == EXPECTED_REJECTED
    assert "click not found" in rejected[0].text

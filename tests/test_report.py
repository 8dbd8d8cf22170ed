"""``target-everflow report``: the HTML report of a known ledger, on SQLite and PostgreSQL.

The ledger is written with plain SQL (tests/known_ledger.py), so every number on the page is
known. The page is read back with the standard library's HTML parser: the numbers in its DOM
(ids and data-* attributes) must be the ledger's. tests/test_report_browser.py renders the same
page in a real browser.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import typing as t
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests import known_ledger
from tests.conftest import completed, postgres_url, run_cli
from tests.known_ledger import EXPECTED_RUNS, EXPECTED_TOTALS, XSS_EVENT, XSS_HOST

VOID = {"meta", "br", "hr", "img", "input", "link"}


class Element(t.NamedTuple):
    tag: str
    attrs: dict[str, str]
    text: str


class Dom(HTMLParser):
    """Every element of a page with its attributes and its whole text."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[tuple[str, dict[str, str], list[str]]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in VOID:
            self.elements.append(Element(tag, {k: v or "" for k, v in attrs}, ""))
            return
        self._open.append((tag, {k: v or "" for k, v in attrs}, []))

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}, ""))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, attrs, parts = self._open.pop()
            text = "".join(parts)
            self.elements.append(Element(open_tag, attrs, text))
            if self._open:
                self._open[-1][2].append(text)
            if open_tag == tag:
                return

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)

    def by_id(self, element_id: str) -> Element:
        (found,) = [e for e in self.elements if e.attrs.get("id") == element_id]
        return found

    def where(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag)
            and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


def report_config(tmp_path: Path, ledger_url: str | None) -> Path:
    config = {
        "postback_url": "https://www.example.com/",
        "network_id": 1,
        "dead_letter_path": str(tmp_path / "state" / "dead_letter.jsonl"),
    }
    if ledger_url is not None:
        config["ledger_url"] = ledger_url
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def run_report(tmp_path: Path, ledger_url: str | None, *args: str) -> subprocess.CompletedProcess:
    config = report_config(tmp_path, ledger_url)
    return completed(run_cli(["report", "--config", str(config), *args], cwd=tmp_path))


def render_known(tmp_path: Path, ledger: known_ledger.KnownLedger) -> tuple[str, Dom]:
    out = tmp_path / "out" / "report.html"
    result = run_report(tmp_path, ledger.url, "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert f"Report written to {out}" in result.stdout
    page = out.read_text(encoding="utf-8")
    return page, Dom(page)


def check_known_page(page: str, dom: Dom, ledger: known_ledger.KnownLedger) -> None:
    """Every number of the known ledger, where the page shows it."""
    for element_id, value in EXPECTED_TOTALS.items():
        assert float(dom.by_id(element_id).attrs["data-value"]) == pytest.approx(value), element_id
    assert dom.by_id("total-amount").text == "73.75"

    rows = [e for e in dom.elements if e.tag == "tr" and "data-day" in e.attrs]
    shown = {(r.attrs["data-day"], r.attrs["data-event"]) for r in rows}
    expected = known_ledger.expected_cells(ledger.now)
    assert shown == set(expected)
    metrics = (
        "delivered",
        "dead_lettered",
        "in_doubt",
        "confirmed",
        "pending",
        "rejected",
        "not_found",
        "unchecked",
    )
    for (day, event), numbers in expected.items():
        cells = {e.attrs["data-metric"]: e.text for e in row_cells(dom, day, event)}
        for metric in metrics:
            assert cells[metric] == str(numbers.get(metric, 0)), (day, event, metric)
        assert cells["amount"] == numbers["amount"], (day, event)
        reasons = {
            e.attrs["data-reason"]: int(e.attrs["data-value"]) for e in row_reasons(dom, day, event)
        }
        assert reasons == numbers.get("reasons", {}), (day, event)

    # The charts draw the same numbers.
    per_day = [
        e
        for e in dom.elements
        if e.tag == "rect"
        and e.attrs.get("data-series") == "delivered"
        and e.attrs.get("data-label", "").startswith("20")
    ]
    assert sum(float(e.attrs["data-value"]) for e in per_day) == 7
    dead_bars = {
        e.attrs["data-label"]: float(e.attrs["data-value"])
        for e in dom.elements
        if e.tag == "rect" and e.attrs.get("data-series") == "dead_lettered"
    }
    a, b = known_ledger.day_name(2, ledger.now), known_ledger.day_name(1, ledger.now)
    assert dead_bars[a] == 4 and dead_bars[b] == 1
    assert dead_bars["Order Completed"] == 4 and dead_bars["Subscription Started"] == 1

    runs = [e for e in dom.elements if e.tag == "tr" and "data-run" in e.attrs]
    assert [r.attrs["data-run"] for r in runs] == EXPECTED_RUNS
    exits = [e.text for e in dom.elements if e.attrs.get("data-metric") == "exit_code"]
    assert exits == ["running", "3", "0", "0"]

    # Record-derived strings are text, never markup; nothing is fetched.
    assert XSS_EVENT not in page and XSS_HOST not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co&#x27;s" in page
    assert any(e.text == XSS_EVENT for e in dom.elements if e.tag == "td")
    assert any(e.text == XSS_HOST for e in dom.elements if e.tag == "td")
    assert not [e for e in dom.elements if e.tag in ("script", "iframe", "img", "link", "object")]
    assert not [e for e in dom.elements if "src" in e.attrs or "href" in e.attrs]
    (csp,) = dom.where("meta", http_equiv="Content-Security-Policy")
    assert csp.attrs["content"].startswith("default-src 'none'")


def row_cells(dom: Dom, day: str, event: str) -> list[Element]:
    return _inside_row(dom, day, event, lambda e: e.tag == "td" and "data-metric" in e.attrs)


def row_reasons(dom: Dom, day: str, event: str) -> list[Element]:
    return _inside_row(dom, day, event, lambda e: e.tag == "span" and "data-reason" in e.attrs)


def _inside_row(dom: Dom, day: str, event: str, keep: t.Callable[[Element], bool]) -> list[Element]:
    """Elements are recorded as they close: a row's cells come right before the row itself."""
    found: list[Element] = []
    for element in dom.elements:
        if element.tag == "tr":
            if element.attrs.get("data-day") == day and element.attrs.get("data-event") == event:
                return found
            found = []
        elif keep(element):
            found.append(element)
    raise AssertionError(f"no row for {day} / {event}")


def test_report_of_a_known_sqlite_ledger(tmp_path):
    ledger = known_ledger.build_sqlite(tmp_path / "ledger.db", table="known")
    page, dom = render_known(tmp_path, ledger)
    check_known_page(page, dom, ledger)
    assert "sqlite:///" in dom.by_id("ledger").text


@pytest.mark.postgres
def test_report_of_a_known_postgres_ledger(tmp_path):
    base = postgres_url()
    ledger = known_ledger.build_postgres(base)
    try:
        page, dom = render_known(tmp_path, ledger)
        check_known_page(page, dom, ledger)
    finally:
        known_ledger.drop_postgres(base, ledger.table)
    shown = dom.by_id("ledger").text
    assert shown.startswith("postgresql://") and f"table={ledger.table}" in shown
    password = base.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
    if password:
        assert ":***@" in shown and f":{password}@" not in page


def test_report_only_reads_the_ledger(tmp_path):
    ledger = known_ledger.build_sqlite(tmp_path / "ledger.db")
    con = sqlite3.connect(tmp_path / "ledger.db")
    before = con.execute("SELECT * FROM everflow_ledger ORDER BY delivery_key").fetchall()
    con.close()
    render_known(tmp_path, ledger)
    con = sqlite3.connect(tmp_path / "ledger.db")
    after = con.execute("SELECT * FROM everflow_ledger ORDER BY delivery_key").fetchall()
    con.close()
    assert after == before  # the 100-day-old row too: the report never prunes


def test_report_of_an_older_ledger_without_history_or_reconciliation(tmp_path):
    """A ledger from before the per-conversion columns, no run history table: the page still
    shows what there is and says what is missing."""
    now = time.time()
    con = sqlite3.connect(tmp_path / "old.db")
    con.execute(
        "CREATE TABLE everflow_ledger (delivery_key TEXT PRIMARY KEY, status TEXT NOT NULL,"
        " owner TEXT NOT NULL, owner_scope TEXT NOT NULL DEFAULT '', lease_until REAL,"
        " http_status INTEGER, created_at REAL NOT NULL, updated_at REAL NOT NULL)"
    )
    con.executemany(
        "INSERT INTO everflow_ledger VALUES (?, ?, 'o:1:x', '', NULL, 200, ?, ?)",
        [
            ("k1", "delivered", now - 60, now - 60),
            ("k2", "delivered", now - 30, now - 30),
            ("k3", "in_doubt", now - 20, now - 20),
        ],
    )
    con.commit()
    con.close()
    out = tmp_path / "old.html"
    result = run_report(tmp_path, f"sqlite:///{tmp_path / 'old.db'}", "--output", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    dom = Dom(page)
    assert dom.by_id("total-delivered").attrs["data-value"] == "2"
    assert dom.by_id("total-in-doubt").attrs["data-value"] == "1"
    assert dom.by_id("total-dead-lettered").attrs["data-value"] == "0"
    assert dom.by_id("no-history").text == "No run history yet."
    assert "No reconciliation data" in page and "total-confirmed" not in page
    assert "does not record each conversion" in page
    assert [
        e.attrs["data-event"] for e in dom.elements if e.tag == "tr" and "data-event" in e.attrs
    ] == ["(event not recorded)"]


def test_report_of_an_empty_ledger(tmp_path):
    out = tmp_path / "empty.html"
    result = run_report(tmp_path, None, "--output", str(out), "--days", "7")
    assert result.returncode == 0, result.stderr
    dom = Dom(out.read_text())
    assert dom.by_id("total-delivered").attrs["data-value"] == "0"
    # two day charts (conversions, amounts: today's ledger has the amount column), 7 days each
    assert (
        len([e for e in dom.elements if e.tag == "text" and e.attrs.get("text-anchor") == "middle"])
        == 2 * 7
    )


def test_report_without_a_ledger_fails_with_one_line(tmp_path):
    result = run_report(tmp_path, "none")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "ledger_url is none" in result.stderr
    unreachable = "postgresql://user:s3cret-pw@127.0.0.1:1/db"
    result = run_report(tmp_path, unreachable)
    assert result.returncode == 4, result.stderr
    assert "s3cret-pw" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "everflow_report.html").exists()

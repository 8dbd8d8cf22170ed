"""``target-everflow report``: the HTML report of a known ledger, on SQLite and PostgreSQL.

The ledger is written with plain SQL (tests/known_ledger.py), so every number on the page is
known. The page is read back with the standard library's HTML parser: the numbers in its DOM
(ids and data-* attributes) must be the ledger's. tests/test_report_browser.py renders the same
page in a real browser.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
import typing as t
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests import known_ledger
from tests.conftest import completed, postgres_url, run_cli
from tests.known_ledger import (
    EXPECTED_IN_DOUBT,
    EXPECTED_REJECTED,
    EXPECTED_RUNS,
    EXPECTED_TOTALS,
    XSS_EVENT,
    XSS_HOST,
    XSS_MESSAGE,
    XSS_VERSION,
)

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
    assert dom.by_id("total-amount-usd").text == "36.75"
    assert dom.by_id("total-amount-none").attrs["data-currency"] == "(no currency)"

    rows = [e for e in dom.elements if e.tag == "tr" and "data-day" in e.attrs]
    shown = {(r.attrs["data-day"], r.attrs["data-event"]) for r in rows}
    expected = known_ledger.expected_cells(ledger.now)
    assert shown == set(expected)
    metrics = (
        "delivered",
        "dead_lettered",
        "too_old",
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
        amounts = {
            e.attrs["data-currency"]: e.attrs["data-value"] for e in row_amounts(dom, day, event)
        }
        assert amounts == numbers["amounts"], (day, event)
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
    assert dead_bars[a] == 4 and dead_bars[b] == 2
    assert dead_bars["Order Completed"] == 5 and dead_bars["Subscription Started"] == 1
    # every record once: the held key is a dead letter (its run's summary), not also in doubt
    doubt_bars = {
        e.attrs["data-label"]: float(e.attrs["data-value"])
        for e in dom.elements
        if e.tag == "rect" and e.attrs.get("data-series") == "in_doubt"
    }
    assert doubt_bars == {b: 1, "Order Completed": 1}

    # What needs a person: the in-doubt keys and the rejected transactions, by Everflow's words.
    assert [e.attrs["data-key"] for e in dom.where("li") if "data-key" in e.attrs] == (
        EXPECTED_IN_DOUBT
    )
    assert dom.by_id("in-doubt-count").attrs["data-value"] == str(len(EXPECTED_IN_DOUBT))
    rejected = [
        (e.attrs["data-transaction"], e.attrs["data-code"])
        for e in dom.where("li")
        if "data-transaction" in e.attrs
    ]
    assert rejected == EXPECTED_REJECTED
    (item,) = [e for e in dom.where("li") if "data-transaction" in e.attrs]
    assert "click not found (purged after about 3 months) (too late)" in item.text
    assert XSS_MESSAGE in item.text and XSS_MESSAGE not in page  # text, not markup
    (age,) = dom.where("tr", id="rejected-age-group")
    assert age.attrs["data-value"] == "1" and "codes 5, 13, 20" in age.text
    assert [e.attrs["data-code"] for e in dom.where("tr") if "data-code" in e.attrs] == ["13"]
    # Lost to age per day: skipped as too old (by run day), rejected as too late (code 13).
    assert bars(dom, "too_old") == {a: 2} and bars(dom, "rejected_age") == {a: 1}

    runs = [e for e in dom.elements if e.tag == "tr" and "data-run" in e.attrs]
    assert [r.attrs["data-run"] for r in runs] == EXPECTED_RUNS
    exits = [e.text for e in dom.elements if e.attrs.get("data-metric") == "exit_code"]
    assert exits == ["running", "3", "0", "0"]

    # Record-derived strings are text, never markup; nothing is fetched.
    assert XSS_EVENT not in page and XSS_HOST not in page and XSS_VERSION not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co&#39;s" in page
    assert any(e.text == XSS_EVENT for e in dom.elements if e.tag == "td")
    assert any(e.text == XSS_VERSION for e in dom.elements if e.tag == "td")
    assert not [e for e in dom.elements if e.tag in ("script", "iframe", "img", "link", "object")]
    assert not [e for e in dom.elements if "src" in e.attrs or "href" in e.attrs]
    (csp,) = dom.where("meta", http_equiv="Content-Security-Policy")
    assert csp.attrs["content"].startswith("default-src 'none'")


def row_cells(dom: Dom, day: str, event: str) -> list[Element]:
    return _inside_row(dom, day, event, lambda e: e.tag == "td" and "data-metric" in e.attrs)


def bars(dom: Dom, series: str) -> dict[str, float]:
    """label -> value of a chart series' bars."""
    return {
        e.attrs["data-label"]: float(e.attrs["data-value"])
        for e in dom.elements
        if e.tag == "rect" and e.attrs.get("data-series") == series
    }


def row_amounts(dom: Dom, day: str, event: str) -> list[Element]:
    return _inside_row(dom, day, event, lambda e: e.tag == "span" and "data-currency" in e.attrs)


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
    assert dom.by_id("total-in-doubt").attrs["data-value"] == "1"  # held: no summary counts it
    assert [e.attrs["data-key"] for e in dom.where("li") if "data-key" in e.attrs] == ["k3"]
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


def test_the_page_templates_ship_in_the_wheel():
    """Every file of report/templates/ is package data (so the wheel holds it, and the sdist the
    wheel is built from: MANIFEST.in), and jinja2 is a runtime dependency."""
    import fnmatch

    import tomllib

    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    globs = project["tool"]["setuptools"]["package-data"]["target_everflow.report"]
    package = repo / "target_everflow" / "report"
    templates = [p.relative_to(package).as_posix() for p in (package / "templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(n, g) for g in globs) for n in templates)
    manifest = (repo / "MANIFEST.in").read_text(encoding="utf-8")
    assert "recursive-include target_everflow/report/templates" in manifest
    assert any(d.startswith("jinja2") for d in project["project"]["dependencies"])


# --- the operator's views: event day or send day, every record once, hostile values ----------

from tests.ledgers import backend  # noqa: E402, F401 - the fixture (SQLite, PostgreSQL)


def _row(ledger, key: str, status: str, **values: t.Any) -> None:
    row = {
        "delivery_key": key,
        "status": status,
        "owner": "gone:1:x",
        "owner_scope": "",
        "created_at": time.time() - 60,
        "updated_at": time.time() - 60,
        "stream": "tracks",
        "event": "Order Completed",
        "transaction_id": f"tx-{key}",
        **values,
    }
    mark = "?" if ledger.kind == "sqlite" else "%s"
    ledger.sql(
        f"INSERT INTO {{t}} ({', '.join(row)}) VALUES ({', '.join(mark for _ in row)})",
        tuple(row.values()),
    )


def _run(ledger, run_id: str, started_at: float, summary: str | None, **values: t.Any) -> None:
    real = "REAL" if ledger.kind == "sqlite" else "DOUBLE PRECISION"
    ledger.sql(
        f"CREATE TABLE IF NOT EXISTS {{t}}_runs ({known_ledger.RUNS_COLUMNS.format(real=real)})"
    )
    row = {"run_id": run_id, "started_at": started_at, "summary": summary, **values}
    mark = "?" if ledger.kind == "sqlite" else "%s"
    ledger.sql(
        f"INSERT INTO {{t}}_runs ({', '.join(row)}) VALUES ({', '.join(mark for _ in row)})",
        tuple(row.values()),
    )


def _summary(event: str, dead: dict, skipped: dict | None = None) -> str:
    return json.dumps(
        {
            "streams": {
                "tracks": {event: {"delivered": 0, "skipped": skipped or {}, "dead_letter": dead}}
            }
        }
    )


def _page(tmp_path: Path, url: str, *args: str) -> tuple[str, Dom]:
    out = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.html"
    result = run_report(tmp_path, url, "--output", str(out), *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    page = out.read_text(encoding="utf-8")
    return page, Dom(page)


def test_a_backfill_is_shown_by_event_day_and_by_send_day_on_request(backend, tmp_path):
    """16 days of events sent today: 16 bars by event day (the default), one by send day."""
    ledger = backend.open()
    now = time.time()
    today = int(now // 86400)
    for i in range(16):
        _row(
            backend,
            f"k{i}",
            "delivered",
            event_time=(today - 20 + i) * 86400.0 + 3600,
            sent_at=now - 30,
            amount=1.0,
            currency="USD",
        )
    ledger.close()
    _, dom = _page(tmp_path, backend.url)
    assert dom.by_id("dated-by").text == "event day"
    by_event = bars(dom, "delivered")
    days = {k: v for k, v in by_event.items() if k.startswith("20")}
    assert len(days) == 16 and set(days.values()) == {1.0}
    _, dom = _page(tmp_path, backend.url, "--by", "send-day")
    assert dom.by_id("dated-by").text == "send day"
    days = {k: v for k, v in bars(dom, "delivered").items() if k.startswith("20")}
    assert days == {known_ledger.day_name(0, now): 16.0}
    help_text = subprocess.run(
        [sys.executable, "-m", "target_everflow", "report", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "--by [event-day|send-day]" in help_text and "send-day" in help_text


def test_every_record_is_counted_once(backend, tmp_path):
    """in_doubt: dead_letter: the key is held in the ledger AND its run's summary counts it
    dead-lettered (reason in_doubt). The page counts it once, as the summary does."""
    ledger = backend.open()
    now = time.time()
    for i in range(55):
        _row(backend, f"d{i}", "delivered", sent_at=now - 100, event_time=now - 200)
    _row(backend, "held", "in_doubt", event_time=now - 200)
    _row(backend, "held2", "in_doubt", event_time=now - 200)
    ledger.close()
    _run(backend, "r:1:x", now - 300, _summary("Order Completed", {"in_doubt": 2}))
    _, dom = _page(tmp_path, backend.url)
    assert bars(dom, "delivered")["Order Completed"] == 55
    assert bars(dom, "dead_lettered")["Order Completed"] == 2
    assert "Order Completed" not in bars(dom, "in_doubt")  # was 2 more: 59 for 57 records
    assert dom.by_id("total-in-doubt").attrs["data-value"] == "0"
    assert dom.by_id("in-doubt-count").attrs["data-value"] == "2"  # still listed for action


def test_hostile_values_never_break_the_page(backend, tmp_path):
    """Markup in event names, messages, currency codes and versions is text; NaN and Infinity
    (amounts, times, counts) are left out, never drawn or shown as numbers."""
    ledger = backend.open()
    now = time.time()
    evil = '"><script>alert(1)</script>'
    bad = [math.inf, -math.inf] + ([math.nan] if backend.kind == "postgres" else [])
    for i, amount in enumerate(bad):
        _row(backend, f"bad{i}", "delivered", sent_at=now - 10, amount=amount, currency="USD")
    _row(backend, "ok", "delivered", sent_at=now - 10, amount=2.5, currency=evil, event=evil)
    _row(
        backend,
        "rej",
        "delivered",
        sent_at=now - 10,
        event_time=now - 20,
        recon_status="rejected",
        recon_error_code=99,
        recon_error_message=evil,
    )
    if backend.kind == "postgres":  # times that are not numbers: out of every period
        _row(backend, "nan-time", "delivered", sent_at=math.nan, event_time=math.nan)
    ledger.close()
    _run(
        backend,
        evil,
        now - 50,
        '{"streams": {"tracks": {"E": {"dead_letter": {"rejected": NaN, "x": Infinity,'
        ' "y": 1e999, "z": true, "ok": 3}, "skipped": {"too_old": -5}}, "F": 7}}}',
        ended_at=math.inf,
        records_read=math.inf if backend.kind == "sqlite" else 2**31 - 1,  # (PostgreSQL: INTEGER)
        version=evil,
        exit_code=0,
    )
    page, dom = _page(tmp_path, backend.url)
    assert "<script>" not in page
    assert not [e for e in dom.elements if e.tag == "script"]
    for element in dom.elements:
        for name, value in element.attrs.items():
            assert value.lower() not in ("nan", "inf", "-inf", "infinity"), (element, name)
        if element.tag == "rect":
            assert math.isfinite(float(element.attrs["height"]))
    assert "nan" not in [e.text.strip().lower() for e in dom.elements if e.tag in ("td", "div")]
    assert dom.by_id("total-dead-lettered").attrs["data-value"] == "3"  # "ok" only
    assert dom.by_id("total-too-old").attrs["data-value"] == "0"
    assert not dom.where(id="total-amount-usd")  # no finite USD amount: no USD figure
    (card,) = [e for e in dom.elements if e.attrs.get("data-currency") == evil and "id" in e.attrs]
    assert card.attrs["id"] == "total-amount-c0" and card.attrs["data-value"] == "2.5"
    assert "amount(s) in the ledger are not finite numbers" in page
    (item,) = [e for e in dom.where("li") if e.attrs.get("data-code") == "99"]
    assert evil in item.text and "unknown code" in item.text
    assert any(e.text == evil for e in dom.elements if e.tag == "td")  # the version, as text
    assert any(evil in e.text for e in dom.elements if e.tag == "code")  # the run id, as text

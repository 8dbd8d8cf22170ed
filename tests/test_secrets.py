"""Secrets never leave the process: the target runs in every mode with recognisable secret
values, and everything it wrote is scanned for them.

Modes: dry run; a live run that succeeds (with the API check against a fake Everflow API on
127.0.0.1); live runs that fail every way (answers that *echo the request*, token included, in
their body or in a redirect's Location; 401; an outage; connection refused); config errors; a
ledger that cannot be opened (its password in the URL); ``--check`` against a fake API that
answers 401 / 403 / 500 with the key echoed back; ``reconcile`` against a fake reporting API that
echoes the key in error bodies and report rows. What is scanned: stdout, stderr, and every
file the run wrote (dead letters, dry-run output, summary, the SQLite ledger's bytes and its
WAL), and every cassette in the repository. A secret is looked for as it is and percent-encoded,
and the marker ``SECRET`` (in every test secret, in no other test data) catches a partial one.

Transport security: a remote ``postback_url`` must be https; TLS verification cannot be turned
off, neither by a setting nor by the environment (``REQUESTS_CA_BUNDLE=""``, ``CURL_CA_BUNDLE=""``,
``PYTHONHTTPSVERIFY=0``, ``SSL_CERT_FILE``): against a server whose certificate is not trusted
the postback fails with a TLS error (a systemic failure, exit 3) and nothing is sent.
"""

from __future__ import annotations

import contextlib
import html
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
import typing as t
import urllib.request
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from target_everflow.settings import CONFIG_SCHEMA
from tests import conftest
from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    SECRET_API_KEY,
    SECRET_TOKEN,
    completed,
    singer_lines,
    track,
)
from tests.receiver import Answer, Receiver

REPO = Path(__file__).resolve().parents[1]
# A token with characters that percent-encoding changes: an echo of the URL-encoded request
# must be caught too.
SPECIAL_TOKEN = "vt/SECRET+tok=en&7f3a"
# Every character HTML, JSON and form encoding change: & < > + / and a space.
ESCAPED_TOKEN = "vt/SECRET+to k&<en>=7f"
PG_PASSWORD = "pg-SECRET-pw-5e1d"
SECRETS = (SECRET_TOKEN, SECRET_API_KEY, SPECIAL_TOKEN, ESCAPED_TOKEN, PG_PASSWORD)
MARKER = "SECRET"


def lower_hex(text: str) -> str:
    """Percent-encoding with lower-case hex digits (``%2f``), as some servers write it."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def go_json(text: str) -> str:
    """A JSON string as Go's encoding/json writes it: ``& < >`` as ``\\u0026 \\u003c \\u003e``."""
    return (
        json.dumps(text)[1:-1]
        .replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
    )


def html_escaped(text: str) -> str:
    """HTML-escaped, ``+`` as ``&#43;`` too."""
    return html.escape(text).replace("+", "&#43;")


def forms(secret: str) -> set[str]:
    """The secret as a server may echo it: as is, percent-encoded (upper- and lower-case hex,
    ``+`` for a space), JSON-escaped (Go's way too), HTML-escaped, and combinations."""
    percent = {quote(secret, safe=""), quote(secret), quote_plus(secret)}
    out = {
        secret,
        json.dumps(secret)[1:-1],
        go_json(secret),
        html.escape(secret),
        html_escaped(secret),
    }
    out |= percent | {lower_hex(p) for p in percent}
    out |= {
        go_json(html.escape(secret)),
        quote(html.escape(secret), safe=""),
        html.escape(quote_plus(secret)),
    }
    return out


def assert_clean(name: str, data: bytes | str) -> None:
    """No secret in ``data``, in any form of ``forms`` and in any case (upper, lower, mixed)."""
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
    folded, raw_folded = text.lower(), raw.lower()
    for secret in SECRETS:
        for form in forms(secret):
            assert form.lower() not in folded, f"{name} contains a secret ({form!r}, any case)"
            assert form.lower().encode("utf-16-le") not in raw_folded, f"{name}: a secret (UTF-16)"
    at = folded.find(MARKER.lower())
    assert at < 0, f"{name} contains part of a secret: ...{text[max(0, at - 60) : at + 60]!r}..."


def scan_run(tmp: Path, proc: t.Any) -> list[str]:
    """Scan stdout, stderr and every file the run wrote (configs, which hold the secrets as the
    user gave them, aside). Returns the names of the files scanned."""
    assert_clean("stdout", proc.stdout)
    assert_clean("stderr", proc.stderr)
    scanned = []
    for path in sorted(tmp.rglob("*")):
        if path.is_file() and not path.name.startswith("config"):
            assert_clean(str(path.relative_to(tmp)), path.read_bytes())
            scanned.append(path.name)
    return scanned


def run_cli(tmp: Path, config: dict, lines: list[str], *, args: t.Sequence[str] = (),
            env: dict | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    path = tmp / f"config-{len(list(tmp.glob('config*')))}.json"
    path.write_text(json.dumps(config))
    result = conftest.run_cli(
        ["--config", str(path), *args], stdin="\n".join(lines) + "\n", cwd=tmp, env=env
    )
    return completed(result, text=False)


def files(tmp: Path, **changes: t.Any) -> dict:
    return {
        "network_id": 1, "advertiser_id": 7,
        "event_mapping": {"Order Completed": 0, "Subscription Started": 24},
        "dead_letter_path": str(tmp / "state" / "dead_letter.jsonl"),
        "dry_run_output": str(tmp / "dry_run.jsonl"), "summary_path": str(tmp / "summary.json"),
        "progress_interval": 0, "request_timeout": 5,
        "verification_token": SPECIAL_TOKEN, "api_key": SECRET_API_KEY, "preflight": False,
        **DEAD_LETTERS_ON_PURPOSE,  # every mode's run dead-letters some records on purpose
        **changes,
    }  # fmt: skip


def mixed_records() -> list[dict]:
    """A delivered conversion, a skip, a mobile dead letter, a dropped field."""
    mobile = track(3, event="Subscription Started")
    mobile["context"]["os"] = {"name": "iOS"}  # no app namespace: dead-lettered
    return [track(1), track(2, event="Product Viewed"), mobile, track(4, orderId="ORD-4")]


# --- a fake Everflow REST API on 127.0.0.1 ------------------------------------------------------

NETWORKS = {"network_id": 1234, "name": "Acme Network"}
EVENTS = {"global_events": [
    {"network_advertiser_global_event_id": 24, "entry_name": "Purchase", "advertiser_id": 7, "status": "active"},
]}  # fmt: skip


def _echo_key(status: int, path: str, key: str) -> dict:
    """fake_api's answers: anything but 200 comes with the caller's key echoed in the body."""
    if status == 200:
        return NETWORKS if path.endswith("/networks") else EVENTS
    if status == 403:
        return {"error": f"Out of realm for key {key}"}
    return {"error": f"Invalid API key {key} for {path}", "message": key}


@contextlib.contextmanager
def fake_api(
    status: int,
    *,
    tls: ssl.SSLContext | None = None,
    answer: t.Callable[[int, str, str], dict] = _echo_key,
) -> t.Iterator[str]:
    """The Everflow API answering ``status`` with ``answer(status, path, key)`` as its body."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            key = self.headers.get("X-Eflow-API-Key", "")
            body = answer(status, self.path, key)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: t.Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def echo(received: t.Any, n: int) -> Answer | None:
    """Answers that repeat the request (path and query, token included) back to the caller."""
    seen = f"you sent {received.path}?{received.raw_query} with token {received.query.get('verification_token')}"
    return {
        "tx-10": Answer.status(400, seen),
        "tx-11": Answer.error_json(seen),
        "tx-12": Answer.status(404, seen * 5),
        "tx-13": Answer.status(
            422, json.dumps({"error": seen}), {"Content-Type": "application/json"}
        ),
    }.get(received.transaction_id or "")


def echo_encoded(received: t.Any, n: int) -> Answer | None:
    """400 answers that echo the token back in the encodings servers use (issue 11, finding 7)."""
    token = received.query.get("verification_token", "")
    form_encoded = quote_plus(token)
    return {
        "tx-20": Answer.status(
            400,
            f"bad token {lower_hex(quote(token, safe=''))} in /?{lower_hex(received.raw_query)}",
        ),
        "tx-21": Answer.status(
            400, f'{{"message":"bad token {go_json(token)}"}}', {"Content-Type": "application/json"}
        ),
        "tx-22": Answer.status(
            400, f"<p>bad token {html_escaped(token)}</p>", {"Content-Type": "text/html"}
        ),
        "tx-23": Answer.status(400, f"token={lower_hex(form_encoded)}&raw={form_encoded}"),
        "tx-24": Answer.status(
            400,
            f'{{"html":"{go_json(html.escape(token))}","url":"{quote(html.escape(token), safe="")}"}}',
        ),
        "tx-25": Answer.error_json(f"bad token {token}"),  # JSON-escaped by json.dumps
    }.get(received.transaction_id or "")


# --- every mode ---------------------------------------------------------------------------------


def test_dry_run(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path,
        files(tmp_path, dry_run=True),
        singer_lines("orders", mixed_records(), state={"s": 1}),
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert set(scan_run(tmp_path, proc)) >= {"dry_run.jsonl", "dead_letter.jsonl", "summary.json"}
    planned = [json.loads(line) for line in (tmp_path / "dry_run.jsonl").read_text().splitlines()]
    assert len(planned) == 2
    for postback in planned:  # the URL's token percent-encoded as sent, the params' as it is
        assert postback["url"].endswith("&verification_token=%2A%2A%2A"), postback["url"]
        assert postback["params"]["verification_token"] == "***"


def test_live_success_with_the_api_check(tmp_path: Path) -> None:
    with fake_api(200) as api_url, Receiver() as rx:
        config = files(tmp_path, postback_url=rx.url, api_url=api_url, preflight=True)
        proc = run_cli(tmp_path, config, singer_lines("orders", mixed_records(), state={"s": 1}))
        sent = [r.query.get("verification_token") for r in rx.requests]
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert sent == [SPECIAL_TOKEN, SPECIAL_TOKEN]  # the token did travel, to Everflow only
    assert b"Everflow API check passed" in proc.stderr
    scanned = scan_run(tmp_path, proc)
    assert {"ledger.sqlite3", "dead_letter.jsonl", "summary.json"} <= set(scanned)


def test_live_answers_that_echo_the_token(tmp_path: Path) -> None:
    """Everflow (or a proxy before it) repeating the request in an error body: the dead
    letters keep a body excerpt, never the token."""
    records = [track(i) for i in range(10, 14)] + [track(1)]
    with Receiver(script=echo) as rx:
        proc = run_cli(
            tmp_path, files(tmp_path, postback_url=rx.url), singer_lines("orders", records)
        )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    dead = (tmp_path / "state" / "dead_letter.jsonl").read_text()
    assert dead.count('"reason"') == 4 and "you sent /?nid=1" in dead and "***" in dead
    scan_run(tmp_path, proc)


def test_a_token_echoed_in_any_encoding_is_scrubbed(tmp_path: Path) -> None:
    """A token with & < > + / and a space, echoed back lower-case percent-encoded, JSON-escaped
    as Go does, HTML-escaped, form-encoded, and combinations of those: the dead letters keep
    an excerpt of each answer, never the token; nor do the logs, the summary or any other file."""
    records = [track(i) for i in range(20, 26)] + [track(1)]
    with Receiver(script=echo_encoded) as rx:
        config = files(tmp_path, postback_url=rx.url, verification_token=ESCAPED_TOKEN)
        proc = run_cli(tmp_path, config, singer_lines("orders", records, state={"s": 1}))
        sent = {r.query.get("verification_token") for r in rx.requests}
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert sent == {ESCAPED_TOKEN}  # the token did travel, to Everflow only
    dead = (tmp_path / "state" / "dead_letter.jsonl").read_text()
    assert dead.count('"reason"') == 6 and dead.count("bad token ***") == 4, dead
    assert set(scan_run(tmp_path, proc)) >= {"dead_letter.jsonl", "summary.json"}


def test_dry_run_with_a_token_that_every_encoding_changes(tmp_path: Path) -> None:
    config = files(tmp_path, dry_run=True, verification_token=ESCAPED_TOKEN)
    proc = run_cli(tmp_path, config, singer_lines("orders", mixed_records(), state={"s": 1}))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert set(scan_run(tmp_path, proc)) >= {"dry_run.jsonl", "dead_letter.jsonl", "summary.json"}


@pytest.mark.parametrize("failure", ["401", "outage_503", "redirect", "refused", "timeout"])
def test_live_systemic_failures(tmp_path: Path, failure: str) -> None:
    def script(received: t.Any, n: int) -> Answer:
        seen = f"{received.path}?{received.raw_query}"
        return {
            "401": Answer.status(401, f"bad token in {seen}"),
            "outage_503": Answer.status(503, f"down; you sent {seen}"),
            "redirect": Answer.status(
                302,
                headers={
                    "Location": f"https://elsewhere.example/{SPECIAL_TOKEN}/?{received.raw_query}"
                },
            ),
            "timeout": Answer.slow(3.0),
        }[failure]

    with Receiver(script=None if failure == "refused" else script) as rx:
        url = rx.url
        if failure == "refused":
            rx.stop()
        config = files(tmp_path, postback_url=url, max_retries=1, request_timeout=0.5)
        proc = run_cli(tmp_path, config, singer_lines("orders", [track(1), track(2)]))
    assert proc.returncode == 3, proc.stderr.decode()[-2000:]
    assert b"Traceback" not in proc.stderr
    scan_run(tmp_path, proc)


@pytest.mark.parametrize(
    ("case", "changes", "code", "says"),
    [("http_url_with_token", {"postback_url": f"http://track.example.com/?t={SECRET_TOKEN}"}, 1,
      "Setting 'postback_url': must use https"),
     ("token_of_the_wrong_type", {"verification_token": [SECRET_TOKEN]}, 1,
      "Setting 'verification_token': must be a string or null"),
     ("api_key_of_the_wrong_type", {"api_key": {"k": SECRET_API_KEY}}, 1,
      "Setting 'api_key': must be a string or null"),
     ("url_with_credentials", {"postback_url": f"https://u:{SECRET_TOKEN}@track.example.com/"}, 1,
      "Setting 'postback_url': must not contain credentials (user:password@)"),
     ("ledger_down", {"postback_url": "https://track.example.com/",
                      "ledger_url": f"postgresql://everflow:{PG_PASSWORD}@127.0.0.1:1/db"}, 4,
      "postgresql://everflow:***@127.0.0.1:1/db")],
)  # fmt: skip
def test_config_and_ledger_errors(
    tmp_path: Path, case: str, changes: dict, code: int, says: str
) -> None:
    proc = run_cli(tmp_path, files(tmp_path, **changes), singer_lines("orders", [track(1)]))
    assert proc.returncode == code, proc.stderr.decode()[-2000:]
    errors = [line for line in proc.stderr.decode().splitlines() if "| ERROR " in line]
    assert len(errors) == 1 and says in errors[0], errors
    scan_run(tmp_path, proc)


@pytest.mark.parametrize(
    ("status", "says"), [(401, b"rejected the API key"), (403, b"wrong kind"), (404, b"HTTP 404")]
)
def test_api_check_failures_with_the_key_echoed(tmp_path: Path, status: int, says: bytes) -> None:
    with fake_api(status) as api_url:
        config = files(tmp_path, postback_url="https://track.example.com/", api_url=api_url)
        check = run_cli(tmp_path, config, [], args=["--check"])
        preflight = run_cli(
            tmp_path, {**config, "preflight": True}, singer_lines("orders", [track(1)])
        )
    for proc in (check, preflight):
        assert proc.returncode == 1, proc.stderr.decode()[-2000:]
        assert says in proc.stderr and b"Traceback" not in proc.stderr
        echoed_key = b"Out of realm for key" if status == 403 else b"Invalid API key"
        assert echoed_key + b" [redacted]" in proc.stderr  # Everflow's words, the key out
        scan_run(tmp_path, proc)


def test_api_check_success_prints_no_secret(tmp_path: Path) -> None:
    with fake_api(200) as api_url:
        proc = run_cli(
            tmp_path,
            files(tmp_path, api_url=api_url, postback_url="https://t.example.com/"),
            [],
            args=["--check"],
        )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"Everflow API check passed" in proc.stdout
    scan_run(tmp_path, proc)


def test_no_cassette_holds_a_secret() -> None:
    from tests.test_api_check import TEST_KEY

    cassettes = sorted((REPO / "tests" / "cassettes").rglob("*"))
    texts = {p: p.read_text(encoding="utf-8") for p in cassettes if p.is_file()}
    assert len(texts) >= 10
    for path, text in texts.items():
        for secret in (*SECRETS, TEST_KEY):
            for form in forms(secret):
                assert form not in text, f"{path} holds a secret"
        assert MARKER not in text, path
        assert "x-eflow-api-key" not in text.lower(), f"{path} records the API key header"
        for value in _query_values(text, "verification_token"):
            assert value in {"FILTERED", "***", "%2A%2A%2A", "[redacted]"}, (path, value)


def _query_values(text: str, name: str) -> list[str]:
    import re

    return re.findall(rf"[?&]{name}=([^&\s'\"]*)", text)


# --- transport security -------------------------------------------------------------------------


def test_no_setting_turns_tls_verification_off() -> None:
    names = " ".join(CONFIG_SCHEMA["properties"]).lower()
    for word in ("verify", "insecure", "ssl", "tls", "cert", "ca_bundle", "proxy"):
        assert word not in names, f"a setting about {word!r}"


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 that no CA signed (so no client trusts it by default)."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make a test certificate"
    tmp = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return tmp / "cert.pem", context


@contextlib.contextmanager
def https_receiver(context: ssl.SSLContext) -> t.Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: t.Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/", seen
    finally:
        server.shutdown()
        server.server_close()


def _disabling_env(cert: Path) -> dict[str, dict[str, str]]:
    return {
        "none": {},
        "REQUESTS_CA_BUNDLE=''": {"REQUESTS_CA_BUNDLE": ""},
        "CURL_CA_BUNDLE=''": {"CURL_CA_BUNDLE": ""},
        "PYTHONHTTPSVERIFY=0": {"PYTHONHTTPSVERIFY": "0"},
        "all_of_them": {"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": "", "PYTHONHTTPSVERIFY": "0"},
        "SSL_CERT_FILE=the_untrusted_cert": {
            "SSL_CERT_FILE": str(cert),
            "REQUESTS_CA_BUNDLE": "",
            "CURL_CA_BUNDLE": "",
        },
    }


def test_tls_verification_cannot_be_turned_off(
    self_signed: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    cert, context = self_signed
    with https_receiver(context) as (url, seen):
        # The server works: a client that trusts this certificate gets its answer.
        trusting = ssl.create_default_context(cafile=str(cert))
        assert urllib.request.urlopen(url + "probe", context=trusting, timeout=5).status == 200
        seen.clear()
        for name, env in _disabling_env(cert).items():
            run_dir = tmp_path / name.replace("'", "").replace("=", "_")
            run_dir.mkdir()
            config = files(
                run_dir,
                postback_url=url,
                max_retries=0,
                verify_ssl=False,
                tls_verify=False,
                insecure=True,
            )  # not settings: no effect
            proc = run_cli(run_dir, config, singer_lines("orders", [track(1)]), env=env)
            stderr = proc.stderr.decode()
            assert proc.returncode == 3, (name, stderr[-2000:])
            assert "TLS error talking to the postback host" in stderr, (name, stderr[-2000:])
            assert "VERIFY_FAILED. Stopping" in stderr, name  # the reason (its excerpt)
            scan_run(run_dir, proc)
        assert seen == [], "a postback was sent over an unverified connection"


def test_api_check_tls_verification_cannot_be_turned_off(
    self_signed: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """``--check`` uses requests, which also honours a CA bundle named in REQUESTS_CA_BUNDLE
    (a different trust store, never none); emptying it or the others turns nothing off."""
    cert, context = self_signed
    with fake_api(200, tls=context) as api_url:
        for name, env in _disabling_env(cert).items():
            config = files(tmp_path, api_url=api_url, postback_url="https://t.example.com/")
            proc = run_cli(tmp_path, config, [], args=["--check"], env=env)
            assert proc.returncode == 1, (name, proc.stderr.decode()[-2000:])
            assert b"TLS handshake failed" in proc.stderr, (name, proc.stderr.decode()[-2000:])
            scan_run(tmp_path, proc)


def test_a_remote_postback_url_must_be_https(tmp_path: Path) -> None:
    for url in ("http://track.example.com/", "http://203.0.113.7/", "HTTP://track.example.com/"):
        proc = run_cli(
            tmp_path, files(tmp_path, postback_url=url), singer_lines("orders", [track(1)])
        )
        assert proc.returncode == 1
        assert b"Setting 'postback_url': must use https" in proc.stderr, proc.stderr.decode()[
            -1000:
        ]


# --- reconcile: the API key stays in its header ---------------------------------------------------


def run_reconcile(tmp: Path, config: dict) -> subprocess.CompletedProcess:
    path = tmp / f"config-{len(list(tmp.glob('config*')))}.json"
    path.write_text(json.dumps(config))
    return completed(conftest.run_cli(["reconcile", "--config", str(path)], cwd=tmp), text=False)


@pytest.mark.parametrize("case", ["rows_echo_the_key", "401_echo", "500_echo", "after_a_run"])
def test_reconcile_never_shows_the_api_key(tmp_path: Path, case: str) -> None:
    """Everflow (or a proxy) echoing the key in an error body or in a report row's
    error_message: neither the output, the log, the report file nor the ledger holds it."""
    from tests.receiver import FakeReporting, Verdict

    echo_body = json.dumps(
        {"error": f"Invalid API key {SECRET_API_KEY}", "message": SECRET_API_KEY}
    )
    script = {
        "401_echo": [Answer.status(401, echo_body, {"Content-Type": "application/json"})],
        "500_echo": [Answer.status(500, echo_body, {"Content-Type": "application/json"})] * 4,
    }.get(case, [])
    reporting = FakeReporting(
        api_key=SECRET_API_KEY,
        verdicts={"tx-1": Verdict("rejected", 21, f"token refused for key {SECRET_API_KEY}")},
        script=script,
    )
    with Receiver(reporting=reporting) as rx:
        config = files(tmp_path, postback_url=rx.url, api_url=rx.api_url, reconcile_after_minutes=0,
                       reconcile_not_found_after_hours=0)  # fmt: skip
        records = [track(1), track(2)]
        for record in records:
            record["timestamp"] = "2026-11-30T10:00:00Z"
        delivered = run_cli(tmp_path, config, singer_lines("orders", records, state={"s": 1}))
        assert delivered.returncode == 0, delivered.stderr.decode()[-2000:]
        reporting.script = list(script)
        if case == "after_a_run":
            proc = run_cli(
                tmp_path, {**config, "reconcile": True}, singer_lines("orders", [track(3)])
            )
        else:
            proc = run_reconcile(tmp_path, config)
    expected = {"rows_echo_the_key": 6, "401_echo": 1, "500_echo": 3, "after_a_run": 6}[case]
    assert proc.returncode == expected, proc.stderr.decode()[-2000:]
    assert b"Traceback" not in proc.stderr
    if case in ("rows_echo_the_key", "after_a_run"):
        assert b"[redacted]" in (tmp_path / "state" / "reconcile_report.json").read_bytes()
    elif case == "401_echo":
        assert b"[redacted]" in proc.stderr  # Everflow's message, with the key taken out
    assert len(reporting.requests) >= 1  # the key did travel, in its header, to the API only
    assert all(r.headers.get("X-Eflow-API-Key") == SECRET_API_KEY for r in reporting.requests)
    scanned = scan_run(tmp_path, proc)
    assert "ledger.sqlite3" in scanned


# --- one masking rule: every secret, every output, any case (issue 20.5) --------------------------

PG_ROLE = "everflow_masking_test"


def cases(secret: str) -> list[str]:
    """The secret upper-cased, lower-cased and in mixed case (as a server may echo it)."""
    mixed = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(secret))
    return [secret.upper(), secret.lower(), mixed, secret.swapcase()]


def echoed(secret: str) -> str:
    """The secret in every case, each as it is and in the encodings a server writes it in
    (percent-encoded with upper- and lower-case hex, form-encoded, JSON- and HTML-escaped)."""
    out = []
    for case in cases(secret):
        encoded = quote(case, safe="")
        out += [
            case,
            encoded,
            lower_hex(encoded),
            quote_plus(case),
            go_json(case),
            html_escaped(case),
        ]
    return " | ".join(out)


@pytest.fixture
def pg_ledger_url(tmp_path: Path) -> t.Iterator[str]:
    """A PostgreSQL ledger reached as a role whose password is PG_PASSWORD (a schema of its own)."""
    from urllib.parse import urlsplit

    from tests.conftest import pg_execute, postgres_url

    base = urlsplit(postgres_url())
    schema = f"masking_{os.getpid()}_{abs(hash(tmp_path)) % 10**8}"
    pg_execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PG_ROLE}') THEN "
        f"CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{PG_PASSWORD}'; END IF; END $$"
    )
    pg_execute(f"ALTER ROLE {PG_ROLE} PASSWORD '{PG_PASSWORD}'")
    pg_execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION {PG_ROLE}')
    host = f"{base.hostname}:{base.port or 5432}"
    options = quote(f"-csearch_path={schema}", safe="")
    try:
        yield f"postgresql://{PG_ROLE}:{PG_PASSWORD}@{host}{base.path}?options={options}"
    finally:
        pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def ledger_rows(ledger_url: str) -> str:
    """Every row of every table of the ledger's schema (keys, answers, run history), as text."""
    import psycopg2

    conn = psycopg2.connect(ledger_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            )
            tables = [row[0] for row in cur.fetchall()]
            dumped = []
            for table in tables:
                cur.execute(f'SELECT * FROM "{table}"')
                dumped.append(f"{table}: {cur.fetchall()!r}")
    finally:
        conn.close()
    assert len(tables) >= 2, tables  # the ledger and its run history
    return "\n".join(dumped)


def test_every_credential_echoed_in_any_case_is_in_no_output(
    tmp_path: Path, pg_ledger_url: str
) -> None:
    """A server echoing the query string lower- and upper-cased, and the API key, the token and
    the ledger's password in every case and encoding, in every kind of answer (a 400, a 200 with
    an error, a 422 JSON body, a 503 retried): nothing of them in stdout, stderr, the dead
    letters, the summary, the ledger's rows or the run history."""
    planted = " || ".join(echoed(s) for s in (SPECIAL_TOKEN, SECRET_API_KEY, PG_PASSWORD))
    short = " ".join(" ".join(cases(s)) for s in (SPECIAL_TOKEN, SECRET_API_KEY, PG_PASSWORD))

    def script(received: t.Any, n: int) -> Answer | None:
        body = f"you sent {received.raw_query.lower()} and {received.raw_query.upper()}: {planted}"
        return {
            "tx-30": Answer.status(400, body),
            "tx-31": Answer.error_json(f"{received.raw_query.lower()} {short}"),  # (< 2000 bytes)
            "tx-32": Answer.status(
                422, json.dumps({"error": body}), {"Content-Type": "application/json"}
            ),
            "tx-33": Answer.status(503, body) if n == 0 else None,
        }.get(received.transaction_id or "")

    records = [track(i) for i in range(30, 34)] + [track(1)]
    with Receiver(script=script) as rx:
        config = files(tmp_path, postback_url=rx.url, ledger_url=pg_ledger_url, max_retries=1)
        proc = run_cli(tmp_path, config, singer_lines("orders", records, state={"s": 1}))
        sent = {r.query.get("verification_token") for r in rx.requests}
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert sent == {SPECIAL_TOKEN}  # the token did travel, to Everflow only
    dead = (tmp_path / "state" / "dead_letter.jsonl").read_text()
    assert dead.count('"reason"') == 3, dead
    assert dead.count("you sent ") == 2 and dead.count("verification_token=***") == 3, dead
    assert b"retr" in proc.stderr.lower()  # the 503's answer was logged, masked
    assert set(scan_run(tmp_path, proc)) >= {"dead_letter.jsonl", "summary.json"}
    assert_clean("ledger rows", ledger_rows(pg_ledger_url))


@pytest.mark.parametrize("status", [401, 302])
def test_a_systemic_answer_echoing_every_credential_in_any_case(
    tmp_path: Path, status: int
) -> None:
    planted = " || ".join(echoed(s) for s in (SPECIAL_TOKEN, SECRET_API_KEY))

    def script(received: t.Any, n: int) -> Answer:
        if status == 302:
            where = (
                f"https://elsewhere.example/{SPECIAL_TOKEN.lower()}/{SECRET_API_KEY.upper()}/?x=1"
            )
            return Answer.status(302, headers={"Location": where})
        return Answer.status(401, f"bad token in {received.raw_query.lower()}: {planted}")

    with Receiver(script=script) as rx:
        config = files(tmp_path, postback_url=rx.url, max_retries=0)
        proc = run_cli(tmp_path, config, singer_lines("orders", [track(1)]))
    assert proc.returncode == 3, proc.stderr.decode()[-3000:]
    assert f"HTTP {status}".encode() in proc.stderr
    scan_run(tmp_path, proc)


def api_echoing(status: int, name: str) -> t.ContextManager[str]:
    """The Everflow API: 200 with ``name`` as the network's name, else ``status`` with the key
    echoed in every case."""

    def answer(status: int, path: str, key: str) -> dict:
        if status == 200:
            return {"network_id": 1234, "name": name} if path.endswith("/networks") else EVENTS
        return {"error": f"Invalid API key {key.lower()}", "message": echoed(key)}

    return fake_api(status, answer=answer)


def test_a_401_echoing_the_api_key_lower_cased(tmp_path: Path) -> None:
    """Before: the key, lower-cased by the server, reached stderr."""
    with api_echoing(401, "") as api_url:
        config = files(tmp_path, postback_url="https://track.example.com/", api_url=api_url)
        proc = run_cli(tmp_path, config, [], args=["--check"])
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    assert b"rejected the API key" in proc.stderr and b"Traceback" not in proc.stderr
    scan_run(tmp_path, proc)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_check_never_prints_the_key_in_the_networks_name(tmp_path: Path, case: int) -> None:
    """Before: `--check` printed the key when the network's name (Everflow's answer) held it."""
    name = f"Acme {cases(SECRET_API_KEY)[case]} network"
    with api_echoing(200, name) as api_url:
        config = files(tmp_path, postback_url="https://track.example.com/", api_url=api_url)
        proc = run_cli(tmp_path, config, [], args=["--check"])
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"Everflow API check passed: network 'Acme [redacted] network' (id 1234)" in proc.stdout
    scan_run(tmp_path, proc)


def test_a_short_ledger_password_is_masked_where_structured_and_said_so(tmp_path: Path) -> None:
    """CI's ledger password is `postgres`: masked as a URL's password and a parameter's value,
    not as a word (which would mangle every message naming PostgreSQL); a warning says so."""
    from target_everflow.masking import mask

    ledger_url = "postgresql://everflow:postgres@127.0.0.1:1/db?connect_timeout=1"
    echo_body = ("see postgresql://everflow:POSTGRES@db/x and password=Postgres&x=1, "
                 "host=db password='postgres' user=postgres; postgres is fine")  # fmt: skip
    assert mask(echo_body, ["postgres"]) == (
        "see postgresql://everflow:***@db/x and password=***&x=1, "
        "host=db password='***' user=***; postgres is fine"
    )
    proc = run_cli(tmp_path, files(tmp_path, postback_url="https://track.example.com/",
                                   ledger_url=ledger_url), singer_lines("orders", [track(1)]))  # fmt: skip
    assert proc.returncode == 4, proc.stderr.decode()[-2000:]
    stderr = proc.stderr.decode()
    warning = [line for line in stderr.splitlines() if "too short to be masked" in line]
    assert (
        len(warning) == 1
        and "Setting 'ledger_url': its password is shorter than 10 characters" in warning[0]
    )
    assert ":postgres@" not in stderr.lower() and "everflow:***@127.0.0.1" in stderr


def test_masking_matches_any_case_and_fails_closed() -> None:
    from target_everflow.masking import HIDDEN, mask

    for secret in (SPECIAL_TOKEN, ESCAPED_TOKEN, SECRET_API_KEY):
        for case in cases(secret):
            for form in forms(case):
                assert mask(f"a {form} b", [secret]) == "a *** b", form

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    assert mask(Broken(), [SECRET_TOKEN]) == HIDDEN

"""The Everflow REST API pre-flight check (target_everflow/everflow/preflight.py).

Replays hand-built vcrpy cassettes from tests/cassettes/api_check/ (record_mode "none": a request
the cassette does not hold fails the test). See docs/api_check.md.

Re-recording against a real account (never needed for CI)::

    EVERFLOW_RECORD_MODE=once EVERFLOW_CASSETTE_DIR=/tmp/everflow-cassettes \
    EVERFLOW_API_KEY=... EVERFLOW_ADVERTISER_ID=... EVERFLOW_EVENT_ID=... \
    .venv/bin/python -m pytest tests/test_api_check.py -q

In record mode the account-specific parts of a message (names, event lists) are checked by
prefix only, and the cases Everflow cannot be made to produce on demand (429, 5xx, 404) are
skipped: their cassettes stay hand-built.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vcr
import yaml
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import NameResolutionError

from target_everflow.everflow import client as everflow_api
from target_everflow.everflow.preflight import PreflightError, PreflightReport, run_preflight
from target_everflow.retry import retry_after_seconds
from target_everflow.settings import ConfigError, Settings
from target_everflow.transport import ConnectFailed, Reply

# --- mode and scenario ---------------------------------------------------------------------

RECORD_MODES = ("none", "once", "new_episodes", "all")
RECORD_MODE = os.environ.get("EVERFLOW_RECORD_MODE", "none").strip() or "none"
if RECORD_MODE not in RECORD_MODES:
    raise RuntimeError(f"EVERFLOW_RECORD_MODE must be one of {', '.join(RECORD_MODES)}")
LIVE = RECORD_MODE != "none"
HERE = Path(__file__).parent
CASSETTE_DIR = Path(os.environ.get("EVERFLOW_CASSETTE_DIR") or HERE / "cassettes" / "api_check")
COMMITTED_CASSETTES = HERE / "cassettes" / "api_check"

# The key used in replay (and, being invalid, as the "rejected key" when recording).
TEST_KEY = "sk-test-SECRET-123"

if LIVE:
    API_KEY = os.environ.get("EVERFLOW_API_KEY", "")
    WRONG_KIND_KEY = os.environ.get("EVERFLOW_WRONG_KIND_API_KEY", "")  # advertiser/affiliate key
    API_URL = (os.environ.get("EVERFLOW_API_URL") or everflow_api.DEFAULT_API_URL).rstrip("/")
    ADVERTISER_ID = int(os.environ.get("EVERFLOW_ADVERTISER_ID") or 0)
    EVENT_ID = int(os.environ.get("EVERFLOW_EVENT_ID") or 0)  # an active event of the advertiser
    INACTIVE_EVENT_ID = int(os.environ.get("EVERFLOW_INACTIVE_EVENT_ID") or 0)
    UNKNOWN_EVENT_ID = int(os.environ.get("EVERFLOW_UNKNOWN_EVENT_ID") or 999999999)
else:
    API_KEY = TEST_KEY
    WRONG_KIND_KEY = TEST_KEY
    API_URL = "https://api.eflow.team/v1"
    ADVERTISER_ID = 7
    EVENT_ID = 24
    INACTIVE_EVENT_ID = 35
    UNKNOWN_EVENT_ID = 99

ALL_KEYS = [k for k in {TEST_KEY, API_KEY, WRONG_KIND_KEY} if k]
HOST = API_URL.split("/")[2]

needs_account = pytest.mark.skipif(
    LIVE and not (API_KEY and ADVERTISER_ID and EVENT_ID),
    reason="recording needs EVERFLOW_API_KEY, EVERFLOW_ADVERTISER_ID and EVERFLOW_EVENT_ID",
)
replay_only = pytest.mark.skipif(
    LIVE, reason="hand-built cassette: Everflow cannot be made to answer this on demand"
)


def config(**overrides: Any) -> dict[str, Any]:
    """The config of a cassette test (an account's values when recording)."""
    cfg: dict[str, Any] = {
        "api_key": API_KEY,
        "api_url": API_URL,
        "advertiser_id": ADVERTISER_ID,
        "event_mapping": {"Order Completed": 0, "Product Purchased": EVENT_ID},
        "request_timeout": 30,
    }
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not None}


def offline_config(**overrides: Any) -> dict[str, Any]:
    """The config of a test that never talks to Everflow (same in replay and record mode)."""
    cfg: dict[str, Any] = {
        "api_key": TEST_KEY,
        "api_url": "https://api.eflow.team/v1",
        "advertiser_id": 7,
        "event_mapping": {"Order Completed": 0, "Product Purchased": 24},
        "request_timeout": 30,
    }
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not None}


def settings_of(cfg: dict[str, Any]) -> Settings:
    """``cfg`` validated the one way a run validates its config (``Settings.from_config``); a dry
    run, so that no postback setting is needed (the check runs whatever ``preflight`` says)."""
    return Settings.from_config({"dry_run": True, **cfg})


# --- plumbing ------------------------------------------------------------------------------


def _scrub_request(request: Any) -> Any:
    """At record time (and before matching): no cookies, no key value anywhere in the request."""
    for name in list(request.headers):
        if name.lower() in {"cookie", "authorization"}:
            del request.headers[name]
    for key in ALL_KEYS:
        if key in request.uri:
            request.uri = request.uri.replace(key, "[redacted]")
    return request


def _scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    """At record time: no cookies, and no key value even if Everflow were to echo it."""
    headers = response.get("headers") or {}
    for name in list(headers):
        if name.lower() in {"set-cookie", "cookie"}:
            del headers[name]
    body = response.get("body") or {}
    text = body.get("string")
    for key in ALL_KEYS:
        if isinstance(text, bytes):
            text = text.replace(key.encode(), b"[redacted]")
        elif isinstance(text, str):
            text = text.replace(key, "[redacted]")
    if text is not None:
        body["string"] = text
    return response


VCR = vcr.VCR(
    cassette_library_dir=str(CASSETTE_DIR),
    record_mode=RECORD_MODE,
    match_on=["method", "scheme", "host", "port", "path", "query"],
    filter_headers=[everflow_api.API_KEY_HEADER],  # removed before a request is written
    before_record_request=_scrub_request,
    before_record_response=_scrub_response,
    decode_compressed_response=True,
)


class CapturingClient:
    """The API check's own HTTP client, recording every request it sends (method, URL, headers)."""

    def __init__(self) -> None:
        self.http = everflow_api.http_client(API_URL, 30)
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        self.sent.append(
            (method, self.http.origin + target, {**self.http.headers, **(headers or {})})
        )
        return self.http.request(method, target, headers, body)

    def close(self) -> None:
        self.http.close()


class NoRequestClient:
    def request(self, method: str, target: str, headers: Any = None, body: Any = None) -> Reply:
        raise AssertionError(f"unexpected request: {method} {target}")


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@contextlib.contextmanager
def cassette(name: str, recorder: vcr.VCR = VCR) -> Iterator[Any]:
    """Use cassette ``name``; afterwards every interaction was played exactly once."""
    with recorder.use_cassette(f"{name}.yaml", allow_playback_repeats=False) as cass:
        yield cass
    if not LIVE:
        assert cass.play_count == len(cass), "a cassette interaction was played more than once"
        assert cass.all_played, "an expected request was not made"


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for key in ALL_KEYS:
        assert key not in caplog.text


@pytest.fixture
def client() -> Iterator[CapturingClient]:
    capturing = CapturingClient()
    yield capturing
    capturing.close()


def preflight_error(cfg: dict[str, Any], **kwargs: Any) -> PreflightError:
    with pytest.raises(PreflightError) as info:
        run_preflight(settings_of(cfg), **kwargs)
    message = str(info.value)
    for key in ALL_KEYS:
        assert key not in message
        assert key not in repr(info.value)
    # no chained exception (e.g. a transport error holding the request and its headers)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    return info.value


def assert_message(actual: str, expected: str, live_prefix: str | None = None) -> None:
    """Exact in replay; in record mode account-specific messages are checked by prefix."""
    if LIVE and live_prefix is not None:
        assert actual.startswith(live_prefix), actual
    else:
        assert actual == expected


def assert_sent_key(client: CapturingClient, count: int) -> None:
    assert len(client.sent) == count
    for _, url, headers in client.sent:
        assert url.startswith(API_URL)
        assert headers[everflow_api.API_KEY_HEADER] in (API_KEY, WRONG_KIND_KEY, TEST_KEY)
        assert headers["Accept"] == "application/json"


# --- success -------------------------------------------------------------------------------


@needs_account
def test_success_reports_what_was_verified(client: CapturingClient) -> None:
    cfg = config(
        event_mapping={"Order Completed": 0, "Product Purchased": EVENT_ID, "Lead Submitted": 31}
    )
    if LIVE:
        cfg["event_mapping"].pop("Lead Submitted")
    with cassette("success"):
        report = run_preflight(settings_of(cfg), client=client, sleep=FakeSleep())
    assert_sent_key(client, 2)
    assert client.sent[0][1] == f"{API_URL}/networks"
    assert client.sent[1][1] == f"{API_URL}/networks/advertisers/{ADVERTISER_ID}/events"
    assert report.api_url == API_URL
    assert report.advertiser_id == ADVERTISER_ID
    assert [(e, i) for e, i, _ in report.events] == list(cfg["event_mapping"].items())
    if LIVE:
        return
    assert report == PreflightReport(
        api_url="https://api.eflow.team/v1",
        advertiser_id=7,
        events=[
            ("Order Completed", 0, "base conversion"),
            ("Product Purchased", 24, "Purchase"),
            ("Lead Submitted", 31, "Lead"),
        ],
        network_id=1234,
        network_name="Acme Network",
    )
    assert report.lines() == [
        "Everflow API check passed: network 'Acme Network' (id 1234) at https://api.eflow.team/v1",
        "Advertiser 7: every mapped event exists and is active",
        "  'Order Completed' -> 0 (base conversion)",
        "  'Product Purchased' -> event 24 'Purchase'",
        "  'Lead Submitted' -> event 31 'Lead'",
    ]


@needs_account
def test_base_conversions_only_skip_the_events_call(client: CapturingClient) -> None:
    cfg = config(advertiser_id=None, event_mapping={"Order Completed": 0, "Signed Up": 0})
    with cassette("base_only"):
        report = run_preflight(settings_of(cfg), client=client)
    assert_sent_key(client, 1)
    assert report.advertiser_id is None
    assert report.events == [
        ("Order Completed", 0, "base conversion"),
        ("Signed Up", 0, "base conversion"),
    ]
    if not LIVE:
        assert report.lines() == [
            "Everflow API check passed: network 'Acme Network' (id 1234) at https://api.eflow.team/v1",
            "Advertiser: not set (every mapped event is the base conversion)",
            "  'Order Completed' -> 0 (base conversion)",
            "  'Signed Up' -> 0 (base conversion)",
        ]


# --- the key -------------------------------------------------------------------------------


def test_rejected_key_401(client: CapturingClient) -> None:
    with cassette("unauthorized"):
        err = preflight_error(config(api_key=TEST_KEY), client=client, sleep=FakeSleep())
    assert err.reason == "auth"
    assert len(client.sent) == 1
    assert_message(
        str(err),
        "Everflow rejected the API key: GET https://api.eflow.team/v1/networks answered HTTP "
        "401 (No Authentication Method Found). Check api_key: it must be a network API key, "
        "created under Control Center > Security. If the account is on Everflow's EU platform, "
        "set api_url to https://api-eu.eflow.team/v1.",
        live_prefix=f"Everflow rejected the API key: GET {API_URL}/networks answered HTTP 401",
    )


@pytest.mark.skipif(
    LIVE and not WRONG_KIND_KEY, reason="recording needs EVERFLOW_WRONG_KIND_API_KEY"
)
def test_wrong_kind_of_key_403_out_of_realm(client: CapturingClient) -> None:
    with cassette("out_of_realm"):
        err = preflight_error(config(api_key=WRONG_KIND_KEY), client=client, sleep=FakeSleep())
    assert err.reason == "realm"
    assert len(client.sent) == 1
    assert_message(
        str(err),
        "The API key is the wrong kind: GET https://api.eflow.team/v1/networks answered HTTP "
        "403 (Out of realm). The check needs a network API key, created under Control Center > "
        "Security; advertiser and affiliate keys cannot call /networks paths.",
        live_prefix=f"The API key is the wrong kind: GET {API_URL}/networks answered HTTP 403",
    )


# --- the events ----------------------------------------------------------------------------

EVENT_LIST = (
    "Advertiser 7's events in Everflow (id: name): 24: Purchase; 31: Lead; "
    "35: Trial Started (inactive)."
)


@needs_account
def test_unknown_event_id_names_the_event_and_lists_the_advertisers_events(
    client: CapturingClient,
) -> None:
    cfg = config(event_mapping={"Order Completed": 0, "Subscription Renewed": UNKNOWN_EVENT_ID})
    with cassette("unknown_event"):
        err = preflight_error(cfg, client=client)
    assert err.reason == "event"
    assert_sent_key(client, 2)
    assert_message(
        str(err),
        "Segment event 'Subscription Renewed' is mapped to Everflow event id 99, but advertiser 7 "
        "has no event with that id. " + EVENT_LIST,
        live_prefix=(
            f"Segment event 'Subscription Renewed' is mapped to Everflow event id "
            f"{UNKNOWN_EVENT_ID}, but advertiser {ADVERTISER_ID} has no event with that id. "
        ),
    )


@pytest.mark.skipif(
    LIVE and not INACTIVE_EVENT_ID, reason="recording needs EVERFLOW_INACTIVE_EVENT_ID"
)
@needs_account
def test_inactive_event_id(client: CapturingClient) -> None:
    cfg = config(event_mapping={"Product Purchased": EVENT_ID, "Trial Started": INACTIVE_EVENT_ID})
    with cassette("inactive_event"):
        err = preflight_error(cfg, client=client)
    assert err.reason == "event"
    assert_message(
        str(err),
        "Segment event 'Trial Started' is mapped to Everflow event id 35 ('Trial Started'), but "
        "that event is inactive, not active. " + EVENT_LIST,
        live_prefix=f"Segment event 'Trial Started' is mapped to Everflow event id {INACTIVE_EVENT_ID} (",
    )


@replay_only
def test_every_bad_mapping_is_named_on_one_line(client: CapturingClient) -> None:
    cfg = config(event_mapping={"Subscription Renewed": 99, "Trial Started": 35, "Paid": 24})
    with cassette("unknown_event"):  # same two answers; only the mapping differs
        err = preflight_error(cfg, client=client)
    assert str(err) == (
        "Segment event 'Subscription Renewed' is mapped to Everflow event id 99, but advertiser 7 "
        "has no event with that id. "
        "Segment event 'Trial Started' is mapped to Everflow event id 35 ('Trial Started'), but "
        "that event is inactive, not active. " + EVENT_LIST
    )


@replay_only
def test_unknown_advertiser_404(client: CapturingClient) -> None:
    with cassette("advertiser_not_found"):
        err = preflight_error(config(advertiser_id=999), client=client)
    assert err.reason == "not_found"
    assert str(err) == (
        "Everflow has no advertiser 999: GET "
        "https://api.eflow.team/v1/networks/advertisers/999/events answered HTTP 404 "
        "(Advertiser not found). Check advertiser_id (Advertisers (Brands) > Manage shows the ids)."
    )


# --- config problems: no request at all ----------------------------------------------------


def test_missing_advertiser_id_with_a_non_zero_mapping_makes_no_request() -> None:
    cfg = offline_config(
        advertiser_id=None,
        event_mapping={"Order Completed": 0, "Product Purchased": 24, "Lead": 31},
    )
    err = preflight_error(cfg, client=NoRequestClient())
    assert err.reason == "config"
    assert str(err) == (
        "Setting 'advertiser_id': is needed to check the non-zero event ids in event_mapping "
        "('Product Purchased' -> 24, 'Lead' -> 31); set it to the Everflow advertiser (brand) id."
    )


def test_missing_api_key_makes_no_request() -> None:
    err = preflight_error(offline_config(api_key=None), client=NoRequestClient())
    assert str(err) == (
        "Setting 'api_key': the Everflow API check needs an API key (a network API key, created "
        "under Control Center > Security); set api_key, or set preflight: false to skip the check."
    )


def test_api_key_with_a_newline_is_refused_without_echoing_it() -> None:
    err = preflight_error(offline_config(api_key=TEST_KEY + "\nx"), client=NoRequestClient())
    assert str(err) == (
        "Setting 'api_key': contains whitespace or control characters; paste the key exactly as "
        "shown under Control Center > Security."
    )


def test_plain_http_api_url_is_refused_for_a_remote_host() -> None:
    err = preflight_error(
        offline_config(api_url="http://api.eflow.team/v1"), client=NoRequestClient()
    )
    assert str(err) == (
        "Setting 'api_url': must use https (the API key travels in a request header); plain "
        "http is only accepted for loopback hosts."
    )


def test_api_url_with_a_port_out_of_range_is_refused() -> None:
    url = "https://api.eflow.team:99999/v1"
    err = preflight_error(offline_config(api_url=url), client=NoRequestClient())
    assert err.reason == "config"
    assert str(err) == (
        f"Setting 'api_url': '{url}' is not an https:// URL (the default is "
        "https://api.eflow.team/v1; EU accounts use https://api-eu.eflow.team/v1)."
    )


def test_api_url_with_credentials_is_refused() -> None:
    err = preflight_error(
        offline_config(api_url="https://user:pw@api.eflow.team/v1"), client=NoRequestClient()
    )
    assert str(err) == "Setting 'api_url': must not contain credentials."


def test_settings_refuse_what_the_schema_refuses_too() -> None:
    # The SDK validates the config against the schema first; Settings states the same rules
    # for callers that build Settings themselves (the check relies on them).
    with pytest.raises(
        ConfigError,
        match=r"^Setting 'advertiser_id': must be an integer >= 1 and <= 2147483647, not 0$",
    ):
        settings_of(offline_config(advertiser_id=0))
    with pytest.raises(ConfigError, match=r"^Setting 'request_timeout': must be a number"):
        settings_of(offline_config(request_timeout=0))
    with pytest.raises(ConfigError, match=r"^Setting 'event_mapping': the id for event 'x'"):
        settings_of(offline_config(event_mapping={"x": -1}))


# --- retries -------------------------------------------------------------------------------


@replay_only
def test_429_then_200_honours_retry_after(
    client: CapturingClient, caplog: pytest.LogCaptureFixture
) -> None:
    sleep = FakeSleep()
    with cassette("rate_limited_then_ok"):
        report = run_preflight(settings_of(config()), client=client, sleep=sleep)
    assert sleep.calls == [2.0]
    assert_sent_key(client, 3)
    assert report.events == [
        ("Order Completed", 0, "base conversion"),
        ("Product Purchased", 24, "Purchase"),
    ]
    assert (
        "Everflow API: HTTP 429 on GET https://api.eflow.team/v1/networks; retrying in 2.0s "
        "(attempt 2 of 4)"
    ) in caplog.messages


@replay_only
def test_500_then_200_backs_off_with_jitter(client: CapturingClient) -> None:
    sleep = FakeSleep()
    with cassette("server_error_then_ok"):
        report = run_preflight(settings_of(config()), client=client, sleep=sleep)
    assert len(sleep.calls) == 1 and 0.5 <= sleep.calls[0] <= 1.0
    assert report.events[1] == ("Product Purchased", 24, "Purchase")


@replay_only
def test_5xx_gives_up_after_four_attempts(client: CapturingClient) -> None:
    sleep = FakeSleep()
    with cassette("server_error_gives_up"):
        err = preflight_error(config(), client=client, sleep=sleep)
    assert err.reason == "server"
    assert len(client.sent) == 5  # /networks + 4 attempts at the events
    assert 0.5 <= sleep.calls[0] <= 1 and 1 <= sleep.calls[1] <= 2 and 2 <= sleep.calls[2] <= 4
    assert str(err) == (
        "The Everflow API kept answering HTTP 503 to GET "
        "https://api.eflow.team/v1/networks/advertisers/7/events after 4 attempts (an error on "
        "Everflow's side); try again later, or set preflight: false to skip the check."
    )


def test_backoff_is_capped() -> None:
    policy = everflow_api.API_RETRY
    assert (policy.backoff_base, policy.backoff_max) == (1.0, 8.0)
    for retry in range(1, 12):
        delay = policy.delay(retry)
        ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** (retry - 1))
        assert ceiling / 2 <= delay <= ceiling <= policy.backoff_max


class CannedClient:
    """Answers every request with the next canned (status, headers, body)."""

    def __init__(self, answers: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.answers = list(answers)
        self.sent = 0

    def request(self, method: str, target: str, headers: Any = None, body: Any = None) -> Reply:
        self.sent += 1
        status, answer_headers, body = self.answers.pop(0)
        return Reply(status, HTTPHeaderDict(answer_headers), body)


def test_a_retry_after_longer_than_a_minute_is_not_waited_for() -> None:
    canned = CannedClient([(429, {"Retry-After": "120"}, b'{"error": "Too Many Requests"}')])
    sleep = FakeSleep()
    err = preflight_error(offline_config(), client=canned, sleep=sleep)
    assert sleep.calls == [] and canned.sent == 1
    assert err.reason == "rate_limited"
    assert str(err) == (
        "The Everflow API is rate limiting this key: GET https://api.eflow.team/v1/networks "
        "answered HTTP 429 with Retry-After 120s. Another process may be using the same network "
        "key (limit: 30 requests/s); try again later, or set preflight: false to skip the check."
    )


def test_retry_after_as_an_http_date() -> None:
    response = Reply(
        429, HTTPHeaderDict({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), b""
    )  # past
    assert retry_after_seconds(response.headers.get("Retry-After")) == 0.0
    response.headers["Retry-After"] = "3"
    assert retry_after_seconds(response.headers.get("Retry-After")) == 3.0
    response.headers["Retry-After"] = "soon"
    assert retry_after_seconds(response.headers.get("Retry-After")) is None


def test_429_every_time_gives_up() -> None:
    canned = CannedClient([(429, {"Retry-After": "1"}, b"{}")] * 4)
    sleep = FakeSleep()
    err = preflight_error(offline_config(), client=canned, sleep=sleep)
    assert sleep.calls == [1.0, 1.0, 1.0] and canned.sent == 4
    assert str(err) == (
        "The Everflow API kept answering HTTP 429 (rate limited) to GET "
        "https://api.eflow.team/v1/networks after 4 attempts. Another process may be using the "
        "same network key (limit: 30 requests/s); try again later, or set preflight: false to "
        "skip the check."
    )


def test_html_instead_of_json() -> None:
    canned = CannedClient([(200, {"Content-Type": "text/html"}, b"<html>tracking</html>")])
    err = preflight_error(offline_config(), client=canned)
    assert str(err) == (
        "The Everflow API answered GET https://api.eflow.team/v1/networks with HTTP 200 but the "
        "body is not JSON; check api_url (it should look like https://api.eflow.team/v1)."
    )


# --- unreachable ---------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """127.0.0.1:port accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    listener.close()


def test_timeout_says_the_api_could_not_be_reached(
    silent_server: tuple[int, list[socket.socket]],
) -> None:
    port, accepted = silent_server
    sleep = FakeSleep()
    url = f"http://127.0.0.1:{port}/v1"
    err = preflight_error(offline_config(api_url=url, request_timeout=0.3), sleep=sleep)
    assert err.reason == "unreachable"
    assert sleep.calls == []  # a timeout already waited; not retried
    assert len(accepted) == 1
    assert str(err) == (
        f"The Everflow API could not be reached at 127.0.0.1: no answer within 0.3s to GET "
        f"{url}/networks. Check api_url and this machine's network access, or set preflight: "
        "false to skip the check."
    )


def test_connection_refused_is_retried_then_reported() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    sleep = FakeSleep()
    url = f"http://127.0.0.1:{port}/v1"
    err = preflight_error(offline_config(api_url=url), sleep=sleep)
    assert len(sleep.calls) == 3
    assert str(err) == (
        f"The Everflow API could not be reached at 127.0.0.1: connection refused (GET "
        f"{url}/networks, 4 attempts). Check api_url and this machine's network access, or set "
        "preflight: false to skip the check."
    )


class ExplodingClient:
    """Raises a connection error whose text carries the key (it must not surface)."""

    def request(self, method: str, target: str, headers: Any = None, body: Any = None) -> Reply:
        cause = NameResolutionError(
            "api.eflow.team", None, OSError(f"Failed to resolve ({API_KEY})")
        )  # type: ignore[arg-type]
        raise ConnectFailed("connection failed", sent=False) from cause


def test_dns_failure_names_the_host_not_the_key() -> None:
    err = preflight_error(offline_config(), client=ExplodingClient(), sleep=FakeSleep())
    assert str(err) == (
        "The Everflow API could not be reached at api.eflow.team: the host name could not be "
        "resolved (GET https://api.eflow.team/v1/networks, 4 attempts). Check api_url and this "
        "machine's network access, or set preflight: false to skip the check."
    )


# --- redirects do not carry the key elsewhere -----------------------------------------------


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[http.server.HTTPServer, int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def test_a_redirect_is_not_followed() -> None:
    seen: list[dict[str, str]] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    other, other_port = _serve(Elsewhere)

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{other_port}/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server, port = _serve(Redirecting)
    try:
        err = preflight_error(offline_config(api_url=f"http://localhost:{port}/v1"))
    finally:
        server.shutdown()
        other.shutdown()
    assert seen == []
    assert str(err) == (
        f"The Everflow API answered GET http://localhost:{port}/v1/networks with a redirect "
        f"(HTTP 302 to http://127.0.0.1:{other_port}/steal); check api_url (it should look like "
        "https://api.eflow.team/v1)."
    )


# --- the key is nowhere --------------------------------------------------------------------


def _cassette_files() -> list[Path]:
    files = sorted({*COMMITTED_CASSETTES.glob("*.yaml"), *CASSETTE_DIR.glob("*.yaml")})
    assert files
    return files


def test_no_cassette_holds_the_key_or_its_header() -> None:
    for path in _cassette_files():
        text = path.read_text()
        for key in ALL_KEYS:
            assert key not in text, path
        data = yaml.safe_load(text)
        for interaction in data["interactions"]:
            names = {name.lower() for name in interaction["request"]["headers"]}
            assert everflow_api.API_KEY_HEADER.lower() not in names, path


def test_the_committed_cassettes_say_where_they_come_from() -> None:
    # vcrpy writes no comments: a cassette copied in from a recording gets its line by hand.
    # (The reconcile cassettes, tests/test_reconcile_cassettes.py, are built the same way.)
    reconcile = HERE / "cassettes" / "reconcile"
    for path in sorted([*COMMITTED_CASSETTES.glob("*.yaml"), *reconcile.glob("*.yaml")]):
        first = path.read_text().splitlines()[0]
        assert first.startswith(
            ("# Hand-built from Everflow's documented REST API formats", "# Recorded from")
        ), path


def test_report_lines_without_network_info() -> None:
    report = PreflightReport(
        api_url="https://api-eu.eflow.team/v1",
        advertiser_id=7,
        events=[("Order Completed", 0, "base conversion")],
    )
    assert report.lines() == [
        "Everflow API check passed: network key at https://api-eu.eflow.team/v1",
        "Advertiser 7: not queried (every mapped event is the base conversion)",
        "  'Order Completed' -> 0 (base conversion)",
    ]


# --- other answers (canned, offline) -------------------------------------------------------

NETWORK_OK = (
    200,
    {"Content-Type": "application/json"},
    b'{"network_id": 1234, "name": "Acme Network"}',
)


@pytest.mark.parametrize(
    ("answers", "overrides", "expected"),
    [
        (
            [(401, {}, b'{"error": "No Authentication Method Found"}')],
            {"api_url": "https://api-eu.eflow.team/v1"},
            "Everflow rejected the API key: GET https://api-eu.eflow.team/v1/networks answered "
            "HTTP 401 (No Authentication Method Found). Check api_key: it must be a network API "
            "key, created under Control Center > Security. If the account is not on Everflow's "
            "EU platform, set api_url to https://api.eflow.team/v1.",
        ),
        (
            [NETWORK_OK, (403, {}, b'{"error": "Insufficient permissions"}')],
            {},
            "The API key lacks a permission: GET "
            "https://api.eflow.team/v1/networks/advertisers/7/events answered HTTP 403 "
            "(Insufficient permissions). Check the key's permissions under Control Center > "
            "Security.",
        ),
        (
            [(404, {"Content-Type": "text/html"}, b"<html>Not Found</html>")],
            {"api_url": "https://api.eflow.team"},
            "The Everflow API was not found at https://api.eflow.team: GET "
            "https://api.eflow.team/networks answered HTTP 404. Check api_url (it should look "
            "like https://api.eflow.team/v1).",
        ),
        (
            [NETWORK_OK, (400, {}, b'{"Error": "Invalid advertiser id"}')],
            {},
            "The Everflow API refused the check: GET "
            "https://api.eflow.team/v1/networks/advertisers/7/events answered HTTP 400 (Invalid "
            "advertiser id).",
        ),
        (
            [(503, {"Retry-After": "600"}, b"")],
            {},
            "The Everflow API is unavailable: GET https://api.eflow.team/v1/networks answered "
            "HTTP 503 with Retry-After 600s; try again later, or set preflight: false to skip the "
            "check.",
        ),
        (
            [NETWORK_OK, (200, {}, b'{"global_events": []}')],
            {},
            "Segment event 'Product Purchased' is mapped to Everflow event id 24, but advertiser 7 "
            "has no event with that id. Advertiser 7 has no events in Everflow.",
        ),
        (
            [NETWORK_OK, (200, {}, b'{"events": []}')],
            {},
            "The Everflow API answered GET https://api.eflow.team/v1/networks/advertisers/7/events "
            "without a global_events list; check api_url.",
        ),
    ],
    ids=[
        "401-eu",
        "403-permission",
        "404-networks",
        "400",
        "503-long-retry-after",
        "no-events",
        "no-global-events",
    ],
)
def test_other_answers(answers: list[Any], overrides: dict[str, Any], expected: str) -> None:
    canned = CannedClient(answers)
    err = preflight_error(offline_config(**overrides), client=canned, sleep=FakeSleep())
    assert str(err) == expected
    assert canned.answers == []  # every answer used, no request beyond them


def test_an_error_body_that_echoes_the_key_is_redacted() -> None:
    canned = CannedClient([(401, {}, f'{{"error": "bad key {TEST_KEY}"}}'.encode())])
    err = preflight_error(offline_config(), client=canned)
    assert "bad key [redacted]" in str(err)

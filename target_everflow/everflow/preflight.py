"""The Everflow REST API pre-flight check.

Before the target reads a record it can ask Everflow's REST API (``api_url``, header
``X-Eflow-API-Key``) two questions:

1. ``GET {api_url}/networks``: is the key a valid *network* API key (and which network is it)?
2. ``GET {api_url}/networks/advertisers/{advertiser_id}/events``: does every non-zero event id
   in ``event_mapping`` exist for the advertiser, and is it active? Id 0 is the base conversion
   and needs no event; when every mapped id is 0 this call is not made.

``run_preflight`` returns a ``PreflightReport`` (what was verified, as human lines) or raises
``PreflightError`` whose ``str()`` is the message for the user: one line, never the key.

The requests go through the one REST client (``everflow/client.py``: one HTTP layer, the
``retry.API_RETRY`` policy, typed errors, every message masked).
"""

from __future__ import annotations

import logging
import time
import typing as t
from dataclasses import dataclass

from target_everflow.errors import EXIT_CONFIG, TargetEverflowError
from target_everflow.everflow.client import (
    ApiBadAnswer,
    ApiError,
    ApiNotFound,
    RestClient,
)
from target_everflow.settings import DEFAULT_API_URL, ConfigError
from target_everflow.text import excerpt

if t.TYPE_CHECKING:
    from target_everflow.settings import Settings
    from target_everflow.transport import HttpClient

USER_AGENT = "target-everflow (preflight)"
SKIP_HINT = "or set preflight: false to skip the check"

_LOG = logging.getLogger(__name__)


class PreflightError(TargetEverflowError):
    """The pre-flight check failed. ``str()`` is the user-facing message: one line, never the
    key.

    ``reason`` is a short machine-readable kind: ``config``, ``auth``, ``realm``, ``forbidden``,
    ``not_found``, ``bad_request``, ``event``, ``rate_limited``, ``server``, ``unreachable``,
    ``unexpected``.
    """

    exit_code = EXIT_CONFIG

    def __init__(self, message: str, reason: str = "unexpected") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class PreflightReport:
    """What the check verified."""

    api_url: str
    advertiser_id: int | None
    events: list[
        tuple[str, int, str]
    ]  # (Segment event, Everflow id, Everflow name or "base conversion")
    network_id: int | None = None
    network_name: str | None = None

    def lines(self) -> list[str]:
        """Human lines: what was verified."""
        if self.network_name and self.network_id is not None:
            network = f"network '{self.network_name}' (id {self.network_id})"
        elif self.network_name:
            network = f"network '{self.network_name}'"
        elif self.network_id is not None:
            network = f"network id {self.network_id}"
        else:
            network = "network key"
        out = [f"Everflow API check passed: {network} at {self.api_url}"]
        if self.advertiser_id is None:
            out.append("Advertiser: not set (every mapped event is the base conversion)")
        elif any(event_id for _, event_id, _ in self.events):
            out.append(f"Advertiser {self.advertiser_id}: every mapped event exists and is active")
        else:
            out.append(
                f"Advertiser {self.advertiser_id}: not queried (every mapped event is the base "
                "conversion)"
            )
        for segment_event, event_id, name in self.events:
            if event_id == 0:
                out.append(f"  '{segment_event}' -> 0 (base conversion)")
            else:
                out.append(f"  '{segment_event}' -> event {event_id} '{name}'")
        return out


def _describe_event(event_id: int, name: str, status: str) -> str:
    if status.lower() == "active":
        return f"{event_id}: {name}"
    return f"{event_id}: {name} ({status})"


def advertiser_events(api: RestClient, advertiser_id: int) -> dict[int, tuple[str, str]]:
    """The advertiser's global events, ``id -> (name, status)``: the ids ``adv_event_id`` takes.
    Raises :class:`ApiNotFound` (an advertiser Everflow does not have), :class:`ApiBadAnswer`
    or another ``ApiError``; names and statuses are cleaned (``RestClient.clean``)."""
    path = f"/networks/advertisers/{advertiser_id}/events"
    try:
        body = api.get(path)
    except ApiNotFound as exc:
        raise ApiNotFound(
            f"Everflow has no advertiser {advertiser_id}: {exc}. Check advertiser_id "
            "(Advertisers (Brands) > Manage shows the ids).",
            status=exc.status,
        ) from None
    raw = body.get("global_events") if isinstance(body, t.Mapping) else None
    if not isinstance(raw, list):
        raise ApiBadAnswer(
            f"The Everflow API answered GET {api.api_url}{path} without a global_events list; "
            "check api_url.",
            status=200,
        )
    events: dict[int, tuple[str, str]] = {}
    for item in raw:
        if not isinstance(item, t.Mapping):
            continue
        eid = item.get("network_advertiser_global_event_id")
        if isinstance(eid, bool) or not isinstance(eid, int):
            continue
        name = api.clean(item.get("entry_name"), 200)
        status = api.clean(item.get("status"), 40)
        events[eid] = (
            name or f"event {eid}",
            # No status member: nothing says it is off, take it as active.
            status or "active",
        )
    return events


def run_preflight(
    settings: Settings,
    *,
    client: HttpClient | None = None,
    sleep: t.Callable[[float], None] = time.sleep,
    logger: logging.Logger | None = None,
) -> PreflightReport:
    """Check the API key and every mapped event id against Everflow; see the module docstring.

    ``settings`` are validated already; what only the check needs (the key, the URL, an
    advertiser for non-zero event ids: ``Settings.api_check``) is asked of them first. Raises
    ``PreflightError`` (one clear line, never the key) before any request when a setting is
    missing or wrong (reason ``config``), or after the API answered no.
    """
    try:
        access = settings.api_check()
    except ConfigError as exc:
        raise PreflightError(str(exc), "config") from None
    api = RestClient(
        access,
        settings.request_timeout,
        http=client,
        sleep=sleep,
        logger=logger or _LOG,
        secrets=(settings.verification_token,),
        user_agent=USER_AGENT,
        hint=SKIP_HINT,
        purpose="the check",
    )
    try:
        return _check(api, access.url, settings.advertiser_id, settings.event_mapping)
    except ApiError as exc:
        raise PreflightError(str(exc), exc.reason) from None
    finally:
        api.close()


def _check(
    api: RestClient, api_url: str, advertiser_id: int | None, mapping: dict[str, int]
) -> PreflightReport:
    # 1. The key: a network key answers /networks with the network's info.
    try:
        network = api.get("/networks")
    except ApiNotFound as exc:
        raise ApiBadAnswer(
            f"The Everflow API was not found at {api_url}: {exc}. Check api_url (it should "
            f"look like {DEFAULT_API_URL}).",
            status=exc.status,
        ) from None
    network_id = network_name = None
    if isinstance(network, t.Mapping):
        nid = network.get("network_id")
        network_id = nid if isinstance(nid, int) and not isinstance(nid, bool) else None
        network_name = api.clean(network.get("name"), 200) or None

    # 2. The events: only when a non-zero id is mapped.
    verified: list[tuple[str, int, str]] = []
    events: dict[int, tuple[str, str]] = {}  # id -> (name, status)
    if any(mapping.values()):
        assert advertiser_id is not None  # Settings.api_check() made sure
        events = advertiser_events(api, advertiser_id)

        problems: list[str] = []
        for segment_event, event_id in mapping.items():
            if event_id == 0:
                continue
            if event_id not in events:
                problems.append(
                    f"Segment event '{segment_event}' is mapped to Everflow event id {event_id}, "
                    f"but advertiser {advertiser_id} has no event with that id."
                )
            elif events[event_id][1].lower() != "active":
                name, status = events[event_id]
                problems.append(
                    f"Segment event '{segment_event}' is mapped to Everflow event id {event_id} "
                    f"('{name}'), but that event is {status}, not active."
                )
        if problems:
            # One line (a message is printed as one line): the problems, then the listing.
            if events:
                listing = (
                    f"Advertiser {advertiser_id}'s events in Everflow (id: name): "
                    + "; ".join(
                        _describe_event(eid, name, status)
                        for eid, (name, status) in sorted(events.items())
                    )
                    + "."
                )
            else:
                listing = f"Advertiser {advertiser_id} has no events in Everflow."
            raise PreflightError(excerpt(api.mask(" ".join([*problems, listing])), 4000), "event")

    for segment_event, event_id in mapping.items():
        if event_id == 0:
            verified.append((segment_event, 0, "base conversion"))
        else:
            verified.append((segment_event, event_id, events[event_id][0]))

    return PreflightReport(
        api_url=api_url,
        advertiser_id=advertiser_id,
        events=verified,
        network_id=network_id,
        network_name=network_name,
    )

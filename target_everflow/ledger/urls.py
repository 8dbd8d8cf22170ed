"""``ledger_url``: reading it (SQLite path, libpq keywords, the ledger table) and showing it.

``ledger_url`` leaves the process only through :func:`redact_url`, which fails closed: when it
cannot tell for sure where the password is, it prints ``<ledger_url hidden>``. A plain
PostgreSQL URL is shown as SQLAlchemy renders it (``make_url(...).render_as_string(
hide_password=True)``) when SQLAlchemy reads the password as we do. Connections are made from
the same reading of the URL (:func:`pg_params`), never by handing the raw text to libpq, so
libpq's own error messages cannot echo a piece of a password that we read differently (an
unencoded ``/`` makes libpq take part of the password for the host).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import NamedTuple

from target_everflow.ledger.base import DEFAULT_TABLE, LedgerError

HIDDEN_URL = "<ledger_url hidden>"
_SECRET_KEYS = frozenset({"password", "pass", "passwd", "pwd", "sslpassword"})
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_KEYWORD_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
_PG_SCHEMES = frozenset({"postgresql", "postgres"})


class _Reading(NamedTuple):
    """One reading of a ``ledger_url``: what may be shown, and every secret-looking value."""

    shown: str
    secrets: frozenset[str]


def scheme_of(text: str) -> str | None:
    """The scheme of a ``ledger_url``, lower case, without a driver (``postgresql+psycopg2``:
    ``postgresql``); None when it is no URL (a libpq keyword string, say)."""
    match = _SCHEME_RE.match(text)
    return match.group(1).lower().partition("+")[0] if match else None


def is_postgres(text: str) -> bool:
    """A PostgreSQL URL or a libpq keyword/value connection string."""
    scheme = scheme_of(text)
    return scheme in _PG_SCHEMES if scheme else parse_keywords(text) is not None


def redact_url(url: str | None) -> str:
    """``ledger_url`` as it may be printed: passwords shown as ``***``; ``<ledger_url hidden>``
    when the URL cannot be read with certainty. The only way ``ledger_url`` reaches any output.

    >>> redact_url("postgresql://user:s3cret@db.example:5432/app?sslmode=require")
    'postgresql://user:***@db.example:5432/app?sslmode=require'
    >>> redact_url("host=db port=5432 dbname=app password='s3 cret'")
    'host=db port=5432 dbname=app password=***'
    """
    try:
        return _read_url(url or "").shown
    except Exception:  # fail closed, whatever went wrong
        return HIDDEN_URL


def url_secrets(url: str) -> frozenset[str]:
    """Every value of ``url`` that may be a password (raw, percent-decoded, each reading of an
    ambiguous URL), to scrub from driver error texts."""
    try:
        return _read_url(url).secrets
    except Exception:  # fail closed: any error hides the URL
        return frozenset({url})


def _read_url(url: str) -> _Reading:
    text = url.strip()
    if not text or text.lower() == "none":
        return _Reading(text, frozenset())
    scheme_match = _SCHEME_RE.match(text)
    if scheme_match is None:
        pairs = parse_keywords(text) if _KEYWORD_RE.match(text) else None
        if pairs is None:  # neither a URL nor a libpq connection string: say nothing of it
            return _Reading(HIDDEN_URL, frozenset({text}))
        found: set[str] = {v for k, v, _ in pairs if k.lower() in _SECRET_KEYS}
        found |= {raw for k, _, raw in pairs if k.lower() in _SECRET_KEYS}
        shown = " ".join(
            f"{k}=***" if k.lower() in _SECRET_KEYS else f"{k}={_keyword_quote(v)}"
            for k, v, _ in pairs
        )
        return _Reading(shown, frozenset(found))
    scheme = scheme_match.group(1)
    rest = text[scheme_match.end() :]
    if scheme.lower() == "sqlite":  # sqlite:///path: no authority, and a path is no secret
        if rest.partition("/")[0]:
            return _Reading(HIDDEN_URL, frozenset({rest}))
        base, question, query = rest.partition("?")
        shown_query, query_secrets = _mask_query(query)
        shown = f"{scheme}://{base}" + (f"?{shown_query}" if question else "")
        return _Reading(shown, frozenset(query_secrets))
    found = set()
    # The userinfo ends at the LAST "@": a password with an unencoded "@" is masked whole.
    userinfo, at, hostpart = rest.rpartition("@")
    unsure = False
    if at:
        # Every other reading of the "@"s too, for the scrub of error texts.
        for i, char in enumerate(rest):
            if char == "@" and ":" in rest[:i]:
                candidate = rest[:i].split(":", 1)[1]
                found |= {candidate, urllib.parse.unquote(candidate)}
        user, colon, password = userinfo.partition(":")
        if colon:
            found |= {password, urllib.parse.unquote(password)}
        # A "/", "?" or "#" before the ":", or between two "@"s, means an "@" may belong to a
        # path or a query rather than end the password: which one is not certain.
        between = rest[rest.index("@") : len(userinfo)]
        unsure = any(c in user or c in between for c in "/?#")
        authority = f"{user}:***@" if colon else f"{user}@"
    else:
        authority = ""
    base, question, query = hostpart.partition("?")
    shown_query, query_secrets = _mask_query(query)
    found |= query_secrets
    if unsure:
        return _Reading(HIDDEN_URL, frozenset(found))
    shown = f"{scheme}://{authority}{base}" + (f"?{shown_query}" if question else "")
    if scheme.lower() in _PG_SCHEMES and rest.count("@") <= 1 and not query_secrets:
        shown = _sqlalchemy_shown(text, found, shown)
    return _Reading(shown, frozenset(found))


def _sqlalchemy_shown(text: str, secrets: set[str], ours: str) -> str:
    """SQLAlchemy's rendering of a plain URL, if it reads the password as we do and shows no
    secret more often than our own rendering does (ours has every password-like value masked,
    so a secret shows there only where it is also something else, e.g. a user named alike)."""
    try:
        from sqlalchemy.engine import make_url  # only needed here

        parsed = make_url(text)
        if parsed.password is not None and str(parsed.password) not in secrets:
            return ours
        shown = parsed.render_as_string(hide_password=True)
    except Exception:  # not SQLAlchemy's idea of a URL: ours stands
        return ours
    visible, baseline = shown.replace("***", "\0"), ours.replace("***", "\0")
    if any(visible.count(s) > baseline.count(s) for s in secrets if s):
        return ours
    return shown


def _mask_query(query: str) -> tuple[str, set[str]]:
    """A URL query with its password-like values shown as ``***`` (raw pieces kept as
    written), and those values. The whole rest of a piece is the value, ``#`` included."""
    if not query:
        return query, set()
    pieces, secrets = [], set()
    for piece in query.split("&"):
        key, eq, value = piece.partition("=")
        if urllib.parse.unquote_plus(key).lower() in _SECRET_KEYS:
            secrets |= {value, urllib.parse.unquote(value), urllib.parse.unquote_plus(value)}
            pieces.append(f"{key}=***" if eq else key)
        else:
            pieces.append(piece)
    return "&".join(pieces), {s for s in secrets if s}


def parse_keywords(text: str) -> list[tuple[str, str, str]] | None:
    """A libpq keyword/value connection string (``host=h dbname=d password='a b'``) as
    ``(key, value, raw value)`` triples, or None when it is not one (libpq's quoting rules:
    single quotes, backslash escapes)."""
    pairs: list[tuple[str, str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return pairs or None
        match = _KEYWORD_RE.match(text, i)
        if match is None:
            return None
        i = start = match.end()
        chars: list[str] = []
        quoted = i < n and text[i] == "'"
        if quoted:
            i += 1
        while True:
            if i >= n:
                if quoted:
                    return None  # unterminated quote
                break
            char = text[i]
            if char == "\\" and i + 1 < n:
                chars.append(text[i + 1])
                i += 2
                continue
            if quoted and char == "'":
                i += 1
                break
            if not quoted and char.isspace():
                break
            chars.append(char)
            i += 1
        if not quoted and not chars:
            return None  # "key=" with nothing: libpq would read the next word as the value
        pairs.append((match.group(1), "".join(chars), text[start:i]))


def _keyword_quote(value: str) -> str:
    if value and not any(c.isspace() or c in "'\\" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pg_params(text: str) -> tuple[dict[str, str], str]:
    """The libpq connection keywords of a PostgreSQL ``ledger_url`` (a URL or a keyword/value
    string) read exactly as :func:`redact_url` reads it, and the ledger table (``table=``).
    Raises :class:`LedgerError` (saying nothing of the URL) when it cannot be read."""
    table = DEFAULT_TABLE
    params: dict[str, str] = {}
    scheme_match = _SCHEME_RE.match(text)
    if scheme_match is None:
        pairs = parse_keywords(text)
        if pairs is None:
            raise LedgerError("ledger_url is not a PostgreSQL URL or connection string")
        for key, value, _ in pairs:
            params[key] = value
    else:
        rest = text[scheme_match.end() :]
        userinfo, at, hostpart = rest.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            if user:
                params["user"] = urllib.parse.unquote(user)
            if colon:
                params["password"] = urllib.parse.unquote(password)
        base, _, query = hostpart.partition("?")
        hosts, _, dbname = base.partition("/")
        names, ports = [], []
        for host in hosts.split(",") if hosts else []:
            if host.startswith("["):  # [IPv6]:port
                name, _, after = host[1:].partition("]")
                port = after[1:] if after.startswith(":") else ""
            else:
                name, _, port = host.partition(":")
            names.append(urllib.parse.unquote(name))
            ports.append(urllib.parse.unquote(port))
        if any(names):
            params["host"] = ",".join(names)
        if any(ports):
            params["port"] = ",".join(ports)
        if dbname:
            params["dbname"] = urllib.parse.unquote(dbname)
        for piece in query.split("&") if query else []:
            key, _, value = piece.partition("=")
            params[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    table = params.pop("table", table)
    return params, table


def error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # libpq messages span lines
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def split_table(url: str) -> tuple[str, str]:
    """Remove ``table=`` from the URL's query; return (url without it, table)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, DEFAULT_TABLE
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    table = DEFAULT_TABLE
    kept = []
    for k, v in pairs:
        if k == "table":
            table = v
        else:
            kept.append((k, v))
    rest = urllib.parse.urlencode(kept)
    return (f"{base}?{rest}" if rest else base), table

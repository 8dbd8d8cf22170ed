"""The one masking function for secrets: ``mask``.

Everything that leaves the process and may hold a secret (log lines, error messages, dead letters,
the summary, answer excerpts) goes through ``mask`` first. A server that echoes a request back
rarely echoes it as it was sent: it may percent-encode it again (upper- or lower-case hex, ``+``
for a space), write it into JSON (Go escapes ``& < >`` as ``\\u0026 \\u003c \\u003e``, every
encoder may escape any character as ``\\uXXXX`` and ``/`` as ``\\/``), into HTML (``&amp;``,
``&lt;``, ``&#43;``, ``&#x2b;``, ...), or several of these at once (``\\u0026amp;``, ``%26amp%3B``,
``%2526``). ``mask`` finds the secret in any of these forms, character by character, and
replaces it with a marker. Letters match in any case (a server may upper- or lower-case what it
echoes, escapes and all). It fails closed: when it cannot do its work, the whole text is
replaced by ``HIDDEN``.

One rule for every secret: the secrets a run was given (``protect``: the API key, the
verification token, the ledger's password) are masked by every call of ``mask`` and in every log
record of the process (``install_log_masking``), whatever else the call names. A secret shorter
than ``MIN_FREE_TEXT_LENGTH`` (CI's ledger password is ``postgres``) cannot be masked in free text
without mangling ordinary words: it is masked where it is structured, as a value after ``:`` or
``=`` that ends there (a URL's password, a query or connection-string parameter), and
``too_short`` tells the run to warn that it is masked nowhere else.
"""

from __future__ import annotations

import functools
import html.entities
import logging
import re
import threading
import typing as t

REDACTED = "***"
HIDDEN = "<hidden: it may hold a secret>"

_ESCAPERS = "%&;#\\+"
"""Characters the encodings above introduce: an encoding of an encoding re-encodes these."""

_ESCAPE_STARTS = "%&\\+"
"""Characters one of the encodings above starts with: a text without any holds secrets only as
they are."""

_JSON_SHORT = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "\b": "b",
    "\f": "f",
    "\n": "n",
    "\r": "r",
    "\t": "t",
}


MIN_FREE_TEXT_LENGTH = 10
"""A secret shorter than this is masked only where it is structured (see the module docstring)."""

_protected: frozenset[str] = frozenset()
_protect_lock = threading.Lock()


def protect(secrets: t.Iterable[str | None]) -> None:
    """Mask ``secrets`` too in every later ``mask`` call and log record of this process."""
    global _protected  # the process's one set of secrets, only ever added to
    with _protect_lock:
        _protected = _protected | {s for s in secrets if s and s.strip()}


def too_short(secret: str) -> bool:
    """Whether ``secret`` is masked only where it is structured, not in free text."""
    return len(secret) < MIN_FREE_TEXT_LENGTH


def mask(text: object, secrets: t.Iterable[str | None] = (), marker: str = REDACTED) -> str:
    """``text`` with every secret in ``secrets``, and every secret ``protect``ed, replaced by
    ``marker``, in any encoding a server may echo it in and in any case (see the module
    docstring). Never raises: if masking fails, returns ``HIDDEN``."""
    try:
        out = text if isinstance(text, str) else str(text)
        every = {s for s in secrets if s and s.strip()} | _protected
        lowered: str | None = None
        for secret in sorted(every, key=lambda s: (-len(s), s)):
            if secret.isascii() and not any(c in out for c in _ESCAPE_STARTS):
                # No escape anywhere: the secret can only be there as it is (in any case).
                lowered = out.lower() if lowered is None else lowered
                if secret.lower() not in lowered:
                    continue
            lowered = None
            if too_short(secret):
                out = _structured(secret).sub(lambda m: m.group(1) + marker, out)
            else:
                out = _pattern(secret).sub(marker, out)
    except Exception:  # fail closed, whatever went wrong
        return HIDDEN
    return out


def install_log_masking() -> None:
    """Make every log record of this process mask the ``protect``ed secrets in its message and
    in its traceback text (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "masks", False):
        return

    def factory(*args: t.Any, **kwargs: t.Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _protected:
            return record
        message = record.getMessage
        record.getMessage = lambda: mask(message())  # type: ignore[method-assign]  # mask every message
        if record.exc_info:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        return record

    factory.masks = True  # type: ignore[attr-defined]  # marks the factory as installed
    logging.setLogRecordFactory(factory)


def _hex(value: int, width: int = 0) -> str:
    """A regex for ``value`` in hex, either case, zero-padded to ``width`` (any padding when 0)."""
    digits = f"{value:0{width}x}" if width else f"{value:x}"
    body = "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in digits)
    return body if width else f"0*{body}"


@functools.cache
def _entity_names(char: str) -> tuple[str, ...]:
    """HTML5 named character references for ``char`` (``amp;``, ``AMP``, ``plus;``, ...)."""
    names = [name for name, value in html.entities.html5.items() if value == char]
    return tuple(sorted(names, key=lambda name: (not name.endswith(";"), name)))


@functools.lru_cache(maxsize=256)
def _leaf(char: str) -> str:
    """``char`` as a regex; an escaping character (``% & ; # \\ +``) also in its single encodings."""
    literal = re.escape(char)
    if char not in _ESCAPERS:
        return literal
    forms = [literal, "%" + _hex(ord(char), 2), r"\\u" + _hex(ord(char), 4)]
    forms += [f"&#0*{ord(char)};", f"&#[xX]{_hex(ord(char))};"]
    forms += ["&" + re.escape(name) for name in _entity_names(char) if name.endswith(";")]
    return "(?:" + "|".join(forms) + ")"


@functools.lru_cache(maxsize=1024)
def _char(char: str) -> str:
    """A regex matching ``char`` in every encoding, and every encoding of those encodings."""
    amp, hash_, semi, backslash = _leaf("&"), _leaf("#"), _leaf(";"), _leaf("\\")
    forms = [_leaf(char)]
    forms.append(
        "".join(_leaf("%") + _hex(byte, 2) for byte in char.encode("utf-8", "surrogatepass"))
    )
    units = char.encode("utf-16-be", "surrogatepass")
    forms.append("".join(backslash + "u" + _hex(int.from_bytes(units[i:i + 2], "big"), 4)
                         for i in range(0, len(units), 2)))  # fmt: skip
    if char in _JSON_SHORT:
        forms.append(backslash + re.escape(_JSON_SHORT[char]))
    forms.append(f"{amp}{hash_}0*{ord(char)}{semi}")
    forms.append(f"{amp}{hash_}[xX]{_hex(ord(char))}{semi}")
    for name in _entity_names(char):  # "amp;" before "amp": the longer form first
        forms.append(amp + re.escape(name.removesuffix(";")) + (semi if name.endswith(";") else ""))
    if char == " ":
        forms.append(_leaf("+"))
    return "(?:" + "|".join(dict.fromkeys(forms)) + ")"


@functools.lru_cache(maxsize=32)
def _pattern(secret: str) -> re.Pattern[str]:
    return re.compile("".join(_char(c) for c in secret), re.IGNORECASE)


_VALUE_END = r"""(?=$|[\s@&;,/?#%\\'"<>()\[\]{}|+])"""
"""What may follow a structured value: the end of the text, a delimiter, or an escape."""


@functools.lru_cache(maxsize=32)
def _structured(secret: str) -> re.Pattern[str]:
    """A short secret as a value: after ``:`` or ``=`` (in any encoding; a quote may open it),
    up to a delimiter."""
    start = f"((?:{_char(':')}|{_char('=')})\\s*(?:{_char(chr(39))}|{_char(chr(34))})?)"
    return re.compile(start + "".join(_char(c) for c in secret) + _VALUE_END, re.IGNORECASE)

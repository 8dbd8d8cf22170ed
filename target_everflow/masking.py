"""The one masking function for secrets: ``mask``.

Everything that leaves the process and may hold a secret (log lines, error messages, dead letters,
the summary, answer excerpts) goes through ``mask`` first. A server that echoes a request back
rarely echoes it as it was sent: it may percent-encode it again (upper- or lower-case hex, ``+``
for a space), write it into JSON (Go escapes ``& < >`` as ``\\u0026 \\u003c \\u003e``, every
encoder may escape any character as ``\\uXXXX`` and ``/`` as ``\\/``), into HTML (``&amp;``,
``&lt;``, ``&#43;``, ``&#x2b;``, ...), or several of these at once (``\\u0026amp;``, ``%26amp%3B``,
``%2526``). ``mask`` finds the secret in any of these forms, character by character, and
replaces it with a marker. It fails closed: when it cannot do its work, the whole text is
replaced by ``HIDDEN``.
"""

from __future__ import annotations

import functools
import html.entities
import re
import typing as t

REDACTED = "***"
HIDDEN = "<hidden: it may hold a secret>"

_ESCAPERS = "%&;#\\+"
"""Characters the encodings above introduce: an encoding of an encoding re-encodes these."""

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


def mask(text: object, secrets: t.Iterable[str | None], marker: str = REDACTED) -> str:
    """``text`` with every secret in ``secrets`` replaced by ``marker``, in any encoding a server
    may echo it in (see the module docstring). Never raises: if masking fails, returns ``HIDDEN``."""
    try:
        out = text if isinstance(text, str) else str(text)
        for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
            out = _pattern(secret).sub(marker, out)
    except Exception:  # fail closed, whatever went wrong
        return HIDDEN
    return out


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
    return re.compile("".join(_char(c) for c in secret))

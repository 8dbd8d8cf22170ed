"""Everflow's rejection codes, in Everflow's words.

The Conversion Report gives a rejected conversion an ``error_code``; these are the codes Everflow
documents (helpdesk.everflow.io/en/articles/6127792, summarised in the project's research notes).
Reconcile's summary, its JSON report and the HTML report name a code by :func:`code_name`, and
group the codes that mean "too late" (:data:`AGE_CODES`) so that an operator sees at once how much
was lost to age.
"""

from __future__ import annotations

REJECTION_CODES: dict[int, str] = {
    1: "throttled",
    2: "whitelist domain not matching",
    3: "whitelist IP not matching",
    4: "over the offer's caps",
    5: "outside the conversion lookback window",
    6: "non-HTTPS postback",
    7: "invalid protocol",
    8: "duplicate",
    9: "manually rejected",
    10: "domains not matching",
    11: "invalid network",
    12: "invalid transaction id",
    13: "click not found (purged after about 3 months)",
    14: "click and conversion offer differ",
    15: "invalid offer",
    16: "invalid tracking domain",
    17: "invalid conversion domain",
    18: "inactive offer",
    19: "expired offer",
    20: "outside the offer's lookback window",
    21: "invalid verification token",
    22: "flagged as fraud",
    23: "IDFA mismatch",
    24: "GAID mismatch",
    25: "event not on the offer",
    26: "postback control",
    27: "pass-through",
}
"""Every rejection code Everflow documents, with its meaning."""

AGE_CODES: frozenset[int] = frozenset({5, 13, 20})
"""Codes that mean the conversion came too late for its click: lost to age."""

UNKNOWN_CODE = "unknown code"
"""The name of a code Everflow does not document (or a value that is no code at all)."""


def code_name(code: int | None) -> str:
    """Everflow's words for ``code``; :data:`UNKNOWN_CODE` for anything it does not document."""
    if code is None:
        return "no code"
    return REJECTION_CODES.get(code, UNKNOWN_CODE)


def is_age_code(code: int | None) -> bool:
    """Whether ``code`` says the conversion was too late for its click (5, 13, 20)."""
    return code in AGE_CODES

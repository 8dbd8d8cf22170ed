"""Failure thresholds: a run that dead-letters too much ends with exit code 5.

The ratio is dead letters / (delivered + dead letters); a dry run counts its planned postbacks
as delivered. Skipped records (duplicates, unmapped events, ...) are not failures. The check
runs when everything is settled and STATE is emitted; which exit code then wins is
``errors.precedence``'s to say (a failure of the run itself over 5, 5 over reconcile's 6).
"""

from __future__ import annotations

import typing as t

from target_everflow.errors import EXIT_THRESHOLD, precedence

if t.TYPE_CHECKING:
    from target_everflow.settings import Settings


def passed(settings: Settings, delivered: int, dead_letters: int) -> list[str]:
    """Each threshold the counts pass, saying which and by how much (empty: none)."""
    out: list[str] = []
    total = delivered + dead_letters
    ratio = dead_letters / total if total else 0.0
    limit = settings.max_dead_letter_ratio
    if ratio > limit:
        out.append(
            f"{dead_letters} of {total} conversions were dead-lettered ({ratio:.2%}), above "
            f"max_dead_letter_ratio {limit:g} ({limit:.2%}) by {(ratio - limit) * 100:.2f} "
            "percentage points"
        )
    most = settings.max_dead_letters
    if most is not None and dead_letters > most:
        out.append(
            f"{dead_letters} records were dead-lettered, above max_dead_letters {most} by "
            f"{dead_letters - most}"
        )
    return out


def verdict(
    settings: Settings, delivered: int, dead_letters: int, code: int
) -> tuple[int, str | None]:
    """The run's exit code after the thresholds, and the line saying so (None: none passed)."""
    breaches = passed(settings, delivered, dead_letters)
    if not breaches:
        return code, None
    what = "; ".join(breaches)
    final = precedence(code, EXIT_THRESHOLD)
    if final != EXIT_THRESHOLD:
        return final, f"Failure threshold also passed: {what} (exit code {final} takes precedence)."
    return EXIT_THRESHOLD, f"Failure threshold passed: {what}. Exit code {EXIT_THRESHOLD}."

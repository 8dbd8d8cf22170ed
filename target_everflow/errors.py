"""Every error a user sees, each with the exit code the run ends with (README lists them), and the
one rule that decides which code a run ends with when several apply (``precedence``)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 1  # a setting is wrong, or the Everflow API check failed: nothing was read
EXIT_INPUT = 2  # the Singer input is broken (not JSON, RECORD before SCHEMA, ...)
EXIT_DELIVERY = 3  # Everflow or the network failed systemically; the next run resumes
EXIT_LEDGER = 4  # the idempotency ledger cannot be opened or written
EXIT_THRESHOLD = 5  # a failure threshold was passed (issue 14)
EXIT_RECONCILE = 6  # reconcile found conversions Everflow rejected or does not have
EXIT_OUTPUT = 7  # an output file (dead letters, dry-run output) could not be written mid-run
EXIT_SIGNAL_BASE = 128  # + signal number (130 for SIGINT, 143 for SIGTERM)


def _rank(code: int) -> int:
    """How strongly ``code`` claims the run's exit code (higher wins)."""
    if code == EXIT_OK:
        return 0
    if code == EXIT_RECONCILE:
        return 1
    if code == EXIT_THRESHOLD:
        return 2
    return 3  # 1, 2, 3, 4, 7, 128 + n: the run itself failed


def precedence(*codes: int) -> int:
    """The exit code of a run for which each of ``codes`` applies: the one place that decides.

    A failure of the run itself (1 config, 2 input, 3 delivery, 4 ledger, 7 output, 128 + n
    signal) outranks 5 (a failure threshold passed), which outranks 6 (reconcile found
    problems), which outranks 0. Among failures of the run itself the first one stands (it is
    the cause: what followed happened because of it).
    """
    best = EXIT_OK
    for code in codes:
        if _rank(code) > _rank(best):
            best = code
    return best


class TargetEverflowError(Exception):
    """An error with a clear, secret-free message and an exit code."""

    exit_code = EXIT_CONFIG


class ConfigError(TargetEverflowError):
    """A setting is wrong. ``str()`` names the setting; it never contains a secret value."""

    exit_code = EXIT_CONFIG

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"Setting '{setting}': {problem}")


class ConfigFileError(TargetEverflowError):
    """A config file (or ``TARGET_EVERFLOW_*`` variable) cannot be read: one line naming it."""

    exit_code = EXIT_CONFIG


class InputError(TargetEverflowError):
    exit_code = EXIT_INPUT


class DeliveryAborted(TargetEverflowError):
    """A systemic delivery failure: the run stops; undelivered records are not dead-lettered."""

    exit_code = EXIT_DELIVERY


class LedgerUnavailable(TargetEverflowError):
    """The idempotency ledger cannot be opened, read or written."""

    exit_code = EXIT_LEDGER


class ReconcileError(TargetEverflowError):
    """The reporting API failed (or a setting stops reconcile); one line, never the key."""

    exit_code = EXIT_DELIVERY
    reason = ""


class OutputError(TargetEverflowError):
    """An output file could not be written mid-run (disk full, ...): the run stops; what was
    written is counted, records without an outcome come again from the last STATE."""

    exit_code = EXIT_OUTPUT


class Terminated(TargetEverflowError):
    """SIGTERM/SIGINT: stop reading, settle what is in flight, exit non-zero."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = EXIT_SIGNAL_BASE + signum
        super().__init__(f"stopped by signal {signum}")

"""Errors a user sees, each with the exit code the run ends with (README lists them)."""

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


class TargetEverflowError(Exception):
    """An error with a clear, secret-free message and an exit code."""

    exit_code = EXIT_CONFIG


class InputError(TargetEverflowError):
    exit_code = EXIT_INPUT


class DeliveryAborted(TargetEverflowError):
    """A systemic delivery failure: the run stops; undelivered records are not dead-lettered."""

    exit_code = EXIT_DELIVERY


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

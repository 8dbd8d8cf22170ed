"""The operator commands (click): history, ledger, reconcile, report."""

"""Reconciliation: Everflow's verdict on each delivered conversion."""

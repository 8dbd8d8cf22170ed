"""Everflow's REST API."""

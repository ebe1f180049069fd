"""Recorded reference data and the scripts that write it."""

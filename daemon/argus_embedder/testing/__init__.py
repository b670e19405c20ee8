"""Tiny local models for tests, CI and the offline demo: not part of the daemon."""

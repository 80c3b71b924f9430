"""Thin typed wrappers around host tools."""

"""Test fixtures and helpers shared by every tier."""

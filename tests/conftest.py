"""Fixtures shared by every test tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.httpserver import HttpServer


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """A fresh loopback HTTP server (see tests/support/httpserver.py), stopped afterwards."""
    with HttpServer() as server:
        yield server

"""Fixtures shared by every test tier."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence

import docker_export
import pytest

from image_creator import cli
from image_creator.options import Options
from tests.support.httpserver import HttpServer
from tests.support.registry import LOOPBACK_NO_PROXY, Registry, running_registry
from tests.support.requirements import require_tools


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=("mounted", "rootless"),
        default="mounted",
        help="rootless: every command line run in-process gets --rootless (the same tests, "
        "built by the other backend); tests marked mounted_only are left out",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--backend") != "rootless":
        return
    kept = [item for item in items if item.get_closest_marker("mounted_only") is None]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(autouse=True)
def _backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--backend rootless``, as if every in-process command line had --rootless."""
    if request.config.getoption("--backend") != "rootless":
        return
    parse = cli.parse_options

    def rootless(argv: Sequence[str] | None = None) -> Options:
        return dataclasses.replace(parse(argv), rootless=True)

    monkeypatch.setattr(cli, "parse_options", rootless)


def _set_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep loopback traffic away from any proxy the environment sets."""
    existing = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    value = ",".join(part for part in (existing, LOOPBACK_NO_PROXY) if part)
    monkeypatch.setenv("NO_PROXY", value)
    monkeypatch.setenv("no_proxy", value)


@pytest.fixture(autouse=True)
def _streams_of_this_test_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """docker-export draws its progress bars on the stderr it saw first, and ``main()`` binds
    the root logger to the stderr of its time: under capsys, both are one test's stream,
    closed when that test ends, and a later test would write to it."""
    monkeypatch.setattr(docker_export, "progressbar", None)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpServer]:
    """A fresh loopback HTTP server (see tests/support/httpserver.py), stopped afterwards."""
    _set_no_proxy(monkeypatch)
    with HttpServer() as server:
        yield server


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A TLS OCI registry on loopback, shared by the session, with DEFAULT_IMAGES pushed:
    test/hello:1.0 and test/hello:2.0 (linux/arm64/v8 + linux/amd64), test/amd64only:1.0.

    Use it through ``registry_env``, which makes ``requests`` (so docker-export) trust it.
    """
    require_tools("docker-registry", "skopeo", "openssl")
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def registry_env(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The session registry, with REQUESTS_CA_BUNDLE trusting its CA and NO_PROXY set."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(registry.ca))
    _set_no_proxy(monkeypatch)
    return registry

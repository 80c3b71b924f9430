"""Which backend a build uses, and what the rootless one asks of the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from image_creator.checks.host import ROOTLESS_TOOLS, choose_backend, host_problems
from image_creator.options import Options
from image_creator.sink import Backend
from tests.support.requirements import require_tools


def test_asked_for_it_is_rootless_whoever_runs() -> None:
    options = Options(config_src="config.yaml", output=Path("out.img"), rootless=True)
    assert choose_backend(options) == (Backend.ROOTLESS, "asked with --rootless")


def test_otherwise_root_with_loop_devices_mounts() -> None:
    options = Options(config_src="config.yaml", output=Path("out.img"))
    backend, reason = choose_backend(options)
    if os.geteuid() != 0:
        assert (backend, reason) == (Backend.ROOTLESS, "not running as root")
    elif not Path("/dev/loop-control").exists():
        assert backend is Backend.ROOTLESS
        assert reason.startswith("no usable loop devices (/dev/loop-control: ")
    else:
        assert (backend, reason) == (Backend.MOUNTED, "running as root with loop devices")


def test_the_rootless_backend_needs_libext2fs_and_tools_only() -> None:
    require_tools(*ROOTLESS_TOOLS)
    assert host_problems(Backend.ROOTLESS) == []
    assert "losetup" not in ROOTLESS_TOOLS and "mount" not in ROOTLESS_TOOLS


def test_a_missing_tool_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    require_tools("mcopy")
    monkeypatch.setenv("PATH", "/nonexistent")  # the sbin folders are still looked in
    assert "missing tool: mcopy (apt-get install mtools)" in host_problems(Backend.ROOTLESS)

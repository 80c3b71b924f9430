"""Skip a test that lacks root, loop devices or a tool, except under CI=true, where it fails.

CI must prove everything; a silent skip there would hide a missing install step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from image_creator.system.run import which


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tools(*binaries: str) -> None:
    missing = [binary for binary in binaries if which(binary) is None]
    if missing:
        _unavailable(f"missing tools: {', '.join(missing)}")


def require_root() -> None:
    if os.geteuid() != 0:
        _unavailable("needs root")
    if not Path("/dev/loop-control").exists():
        _unavailable("needs loop devices (/dev/loop-control)")

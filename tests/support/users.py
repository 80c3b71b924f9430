"""Running as another user in tests: ``nobody`` must be able to reach the venv and sources."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def reachable_by_everyone(*paths: Path) -> Iterator[None]:
    """Let another user reach ``paths``: a checkout in a 0700 folder (``mktemp -d``, or a
    venv under /root) would otherwise hide the venv and the sources from ``nobody``. Modes
    are restored afterwards."""
    changed: list[tuple[Path, int]] = []
    try:
        for path in paths:
            for folder in (path, *path.parents):
                mode = folder.stat().st_mode
                if folder.is_dir() and not mode & stat.S_IXOTH:
                    changed.append((folder, stat.S_IMODE(mode)))
                    folder.chmod(stat.S_IMODE(mode) | stat.S_IROTH | stat.S_IXOTH)
        yield
    finally:
        for folder, mode in reversed(changed):
            folder.chmod(mode)

"""Mounting ext4 filesystems, always unmounted on the way out."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image_creator.errors import BuildError, CommandError
from image_creator.system.run import run
from image_creator.system.signals import releasing

logger = logging.getLogger(__name__)

UNMOUNT_ATTEMPTS = 5
UNMOUNT_RETRY_DELAY_SECONDS = 0.2

_UMOUNT_MOUNT_FAILURE = 32  # umount's exit code for "could not unmount", EBUSY among others
_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


@contextmanager
def mounted(device: Path, mountpoint: Path) -> Iterator[Path]:
    """Mount the ext4 filesystem on ``device`` at ``mountpoint`` (an existing directory).

    Yields the mountpoint and always unmounts it, on success, on an error and on Ctrl-C.
    Meant to be entered on the build's ExitStack after the device it mounts.
    """
    if is_mounted(mountpoint):
        # Unmounting on exit would then take down a mount that is not ours.
        raise BuildError(f"{mountpoint} is already a mount point")
    mounted_here = False
    try:
        run(["mount", "-t", "ext4", device, mountpoint])
        mounted_here = True
        logger.debug("mounted %s on %s", device, mountpoint)
        yield mountpoint
    except BaseException:
        with releasing():
            # Interrupted while mount ran: the filesystem may be mounted without us knowing.
            if mounted_here or is_mounted(mountpoint):
                _unmount_after_error(mountpoint)
        raise
    else:
        with releasing():
            unmount(mountpoint)


def unmount(
    mountpoint: Path,
    *,
    attempts: int = UNMOUNT_ATTEMPTS,
    retry_delay: float = UNMOUNT_RETRY_DELAY_SECONDS,
) -> None:
    """Unmount ``mountpoint``, retrying briefly while it is busy; raise BuildError if it stays so.

    A process that just wrote there (one of our commands, or udev probing the device) can
    hold the filesystem for a moment after it is done; a lasting hold is a real problem.
    """
    for attempt in range(1, attempts + 1):
        try:
            run(["umount", mountpoint])
        except CommandError as exc:
            if not _is_busy(exc):
                raise
            logger.debug("%s is busy (attempt %d of %d)", mountpoint, attempt, attempts)
            if attempt < attempts:
                os.sync()
                time.sleep(retry_delay)
        else:
            logger.debug("unmounted %s", mountpoint)
            return
    raise BuildError(
        f"cannot unmount {mountpoint}: still busy after {attempts} attempts",
        hint=f"a process still uses a file under it; `fuser -vm {mountpoint}` names it",
    )


def _is_busy(error: CommandError) -> bool:
    return error.returncode == _UMOUNT_MOUNT_FAILURE and "busy" in error.stderr


def _unmount_after_error(mountpoint: Path) -> None:
    # The error already on its way out is the one to report; a failed unmount only adds a log line.
    try:
        unmount(mountpoint)
    except BuildError as exc:
        logger.error("could not unmount %s: %s", mountpoint, exc)


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point of this process's mount namespace."""
    target = str(path.resolve())
    return any(point == target for point in _mount_points())


def mounts_below(directory: Path) -> list[str]:
    """Mount points at or under ``directory``, deepest first (the order to unmount them in)."""
    target = directory.resolve()
    found = {
        point
        for point in _mount_points()
        if Path(point) == target or Path(point).is_relative_to(target)
    }
    return sorted(found, key=lambda point: (-len(Path(point).parts), point))


def _mount_points() -> Iterator[str]:
    with Path("/proc/self/mountinfo").open(encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            # fields: mount ID, parent ID, major:minor, root, mount point, ...
            fields = line.split(" ")
            if len(fields) > 4:
                yield _unescape(fields[4])


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as octal escapes (\040)
    return _MOUNTINFO_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)

"""Mounting ext4 filesystems, always unmounted on the way out, and synced with their write
errors reported before that."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image_creator.errors import BuildError, CommandError, os_reason
from image_creator.localfile import nearly_full
from image_creator.system.run import run
from image_creator.system.signals import releasing

logger = logging.getLogger(__name__)

UNMOUNT_ATTEMPTS = 5
UNMOUNT_RETRY_DELAY_SECONDS = 0.2

_UMOUNT_MOUNT_FAILURE = 32  # umount's exit code for "could not unmount", EBUSY among others
_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
# Below this much free space (or with no inode left), an ENOSPC is the mounted filesystem's.
_NEARLY_FULL = 64 * 1024 * 1024


class WriteFailed(BuildError):
    """Data written to a mounted filesystem did not reach its device (seen by syncfs)."""

    def __init__(self, message: str, *, errno_value: int) -> None:
        super().__init__(message)
        self.errno = errno_value


@contextmanager
def mounted(device: Path, mountpoint: Path, *, label: str | None = None) -> Iterator[Path]:
    """Mount the ext4 filesystem on ``device`` at ``mountpoint`` (an existing directory).

    Yields the mountpoint and always unmounts it, on success, on an error and on Ctrl-C.
    Meant to be entered on the build's ExitStack after the device it mounts.

    Before a successful exit the filesystem is synced with syncfs(2) on a descriptor opened
    right after mounting, so that any write error since then is reported (WriteFailed): a
    write that never reached the device (its backing file's volume full, say) fails the
    block. umount would sync too, but says nothing of errors. An ENOSPC from the body while
    this filesystem is full becomes "no room on LABEL" (``label``, default the device).
    """
    if is_mounted(mountpoint):
        # Unmounting on exit would then take down a mount that is not ours.
        raise BuildError(f"{mountpoint} is already a mount point")
    name = label or f"{device} (mounted at {mountpoint})"
    mounted_here = False
    watch: int | None = None
    try:
        run(["mount", "-t", "ext4", device, mountpoint])
        mounted_here = True
        # sampled now: syncfs on this descriptor reports every writeback error from here on
        watch = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        logger.debug("mounted %s on %s", device, mountpoint)
        try:
            yield mountpoint
        except OSError as exc:
            if exc.errno in _NO_ROOM and nearly_full(mountpoint, _NEARLY_FULL):
                raise BuildError(f"no room on {name}: {os_reason(exc)}") from exc
            raise
        sync_filesystem(watch, name)
    except BaseException:
        with releasing():
            if watch is not None:
                os.close(watch)
            # Interrupted while mount ran: the filesystem may be mounted without us knowing.
            if mounted_here or is_mounted(mountpoint):
                _unmount_after_error(mountpoint)
        raise
    else:
        with releasing():
            assert watch is not None
            os.close(watch)
            unmount(mountpoint)


def sync_filesystem(descriptor: int, name: str) -> None:
    """syncfs(2) on ``descriptor``; a write error since it was opened raises WriteFailed.

    Python has no os.syncfs, and os.sync() reports nothing; fsync of a directory only syncs
    that directory. The kernel reports an error once per descriptor.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(descriptor) != 0:
        code = ctypes.get_errno()
        raise WriteFailed(
            f"write error on {name}: {os.strerror(code)} (data written there was lost)",
            errno_value=code,
        )


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


def mount_point_of(path: Path) -> Path:
    """The mount point of the filesystem holding ``path`` (or its nearest existing parent):
    the name of a volume, as df prints it."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    current = current.resolve()
    device = current.stat().st_dev
    while current != current.parent and current.parent.stat().st_dev == device:
        current = current.parent
    return current


def mounts_of_device(device: Path) -> list[str]:
    """Mount points of the block device ``device`` (by its number), deepest first."""
    number = device.stat().st_rdev
    wanted = f"{os.major(number)}:{os.minor(number)}"
    found = {point for point, numbers in _mounts() if numbers == wanted}
    return sorted(found, key=lambda point: (-len(Path(point).parts), point))


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
    for point, _ in _mounts():
        yield point


def _mounts() -> Iterator[tuple[str, str]]:
    """(mount point, major:minor) of every mount in this process's namespace."""
    with Path("/proc/self/mountinfo").open(encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            # fields: mount ID, parent ID, major:minor, root, mount point, ...
            fields = line.split(" ")
            if len(fields) > 4:
                yield _unescape(fields[4]), fields[2]


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as octal escapes (\040)
    return _MOUNTINFO_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)

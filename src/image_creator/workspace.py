"""The build's workspace: the partial image next to OUTPUT (renamed only when complete) and
the build folder, both released on the run's cleanup stack.

A build holds a lock (flock) on its partial image and on its build folder for as long as
it runs; the kernel drops both when the process dies, even by SIGKILL. So an unlocked
``.OUTPUT.XXXXXXXX.partial`` or ``.image-creator-build-XXXXXXXX`` is what a killed build
left: the next build in the same place unmounts what is mounted from it, detaches its loop
devices and removes it, with a warning for each, and never touches a locked one (a build
running now). Looking and creating happen under a lock on the folder, so a build cannot
take another's brand-new, not yet locked, partial image for a leftover.

Disk faults end one of two ways: the image's volume full (ENOSPC, or a write lost through
the loop device while it was full) is a HostError naming the volume (exit 2); any other lost
write a BuildError (exit 1). Either way nothing is published.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from image_creator.errors import BuildError, HostError, OutputError, os_reason
from image_creator.localfile import nearly_full
from image_creator.options import Options
from image_creator.system.image import set_length
from image_creator.system.loop import (
    attached_loop_devices,
    detach_loop_device,
    loop_devices,
)
from image_creator.system.mount import (
    mount_point_of,
    mounts_below,
    mounts_of_device,
    unmount,
)
from image_creator.system.signals import releasing
from image_creator.ui.base import Reporter
from image_creator.units import NAME_MAX, format_size

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
KEPT_SUFFIX = ".kept.partial"  # a partial image kept with -K: never taken for a leftover
_RANDOM = r"[a-z0-9_]{8}"  # what mkstemp and mkdtemp put in a name
# With less than this free, a failed write to the image is put down to its full volume.
BUILD_FOLDER_PREFIX = ".image-creator-build-"
HOST_NEARLY_FULL = 16 * 1024 * 1024
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_LOST_WRITE = (errno.EIO, errno.EROFS, *_NO_ROOM)
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def default_build_dir(options: Options) -> Path:
    """Where temporary files go: --build-dir, else next to OUTPUT (same disk), else /tmp."""
    if options.build_dir is not None:
        return options.build_dir
    if options.output is not None:
        return options.output.absolute().parent
    return Path(tempfile.gettempdir())


def partial_prefix(output: Path) -> str:
    """``.NAME.``, cut short so that a partial name (kept or not) stays within NAME_MAX."""
    room = NAME_MAX - len(".") - len(".") - 8 - len(KEPT_SUFFIX)
    stem = output.name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f".{stem}."


@contextmanager
def partial_output(output: Path, *, keep: bool, reporter: Reporter) -> Iterator[Path]:
    """A new empty file next to ``output``, locked while the build runs; removed if the
    build fails (kept with ``keep``, as ``.NAME.XXXXXXXX.kept.partial``).

    Leftovers of killed builds of the same OUTPUT are removed first. The caller renames it
    onto ``output`` once complete; after that there is nothing to undo.
    """
    output = output.absolute()
    folder = output.parent
    prefix = partial_prefix(output)
    with _folder_locked(folder, "the folder of OUTPUT"):
        remove_leftover_partials(folder, prefix, reporter)
        try:
            handle, name = tempfile.mkstemp(prefix=prefix, suffix=PARTIAL_SUFFIX, dir=folder)
        except OSError as exc:
            raise _cannot_write(folder, "the folder of OUTPUT", exc) from exc
        fcntl.flock(handle, fcntl.LOCK_EX)  # unlocked by the kernel if this process dies
    partial = Path(name)
    try:
        yield partial
    except BaseException:
        with releasing():
            if partial.exists():
                if keep:
                    kept = partial.with_name(
                        partial.name.removesuffix(PARTIAL_SUFFIX) + KEPT_SUFFIX
                    )
                    partial.rename(kept)
                    reporter.warning(f"kept the partial image (-K): {kept}")
                else:
                    partial.unlink()
        raise
    finally:
        os.close(handle)


def probe_size(image: Path, size: int) -> None:
    """Fail now, before any download, if the image's filesystem cannot hold a file of
    ``size`` bytes (EFBIG): growing a sparse file there and back costs nothing."""
    with image.open("r+b") as file:
        try:
            set_length(file, size, image)
        finally:
            file.truncate(0)


def ensure_room_to_write(image: Path, amount: int) -> None:
    """Before the content is written: the image's volume has room for it now.

    The image is sparse, so what its content will take is only allocated as it is written;
    the free space checked before the build may have gone since (the base image took its
    share, another process wrote there). A volume that fills later still fails the build,
    through the sync of the data partition and the flush of its loop device.
    """
    volume = mount_point_of(image)
    fs = os.statvfs(image)
    free = fs.f_bavail * fs.f_frsize
    if free < amount:
        raise HostError(
            f"no space left on {volume} for the image's content: needs {format_size(amount)}, "
            f"has {format_size(free)}"
        )


@contextmanager
def disk_faults(image: Path) -> Iterator[None]:
    """Name the host volume when a failure comes from it being full.

    A write lost on its way to the image (a sync or flush error, a command that failed, the
    data filesystem turned read-only after one) while the image's volume is (nearly) full is
    that volume's fault: HostError "no space left on VOLUME" (exit 2). An ENOSPC elsewhere
    names its own volume; any other lost write is a BuildError (exit 1).
    """
    volume = mount_point_of(image)
    try:
        yield
    except (OSError, BuildError) as exc:
        if isinstance(exc, OSError) and exc.errno not in _LOST_WRITE:
            raise
        reason = exc.message if isinstance(exc, BuildError) else os_reason(exc)
        if nearly_full(volume, HOST_NEARLY_FULL):
            raise HostError(
                f"no space left on {volume} (the volume of OUTPUT): {reason}",
                hint="free some space there, or build OUTPUT on another volume",
            ) from exc
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            where = mount_point_of(Path(exc.filename)) if exc.filename else "a volume written to"
            raise HostError(f"no space left on {where}: {reason}") from exc
        if isinstance(exc, OSError):
            raise BuildError(f"write error: {exc}") from exc
        raise


@contextmanager
def build_folder(parent: Path, *, reporter: Reporter) -> Iterator[Path]:
    """A new ``.image-creator-build-XXXXXXXX`` folder in ``parent``, locked while the build
    runs, removed with what it holds whatever happens; leftovers of killed builds in
    ``parent`` are removed first."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(parent, "the build folder", exc) from exc
    with _folder_locked(parent, "the build folder"):
        remove_leftover_build_folders(parent, reporter)
        try:
            directory = Path(tempfile.mkdtemp(prefix=BUILD_FOLDER_PREFIX, dir=parent))
        except OSError as exc:
            raise _cannot_write(parent, "the build folder", exc) from exc
        lock = os.open(directory, _DIRECTORY)
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with temporary_directory_removed(directory):
            yield directory
    finally:
        os.close(lock)


@contextmanager
def temporary_directory_removed(directory: Path) -> Iterator[Path]:
    """Remove ``directory`` on the way out, never while something is still mounted below
    it: that would delete the content of the mounted filesystem (the image being built)."""
    try:
        yield directory
    finally:
        with releasing():
            still_mounted = mounts_below(directory)
            if still_mounted:
                logger.error("not removing %s: %s mounted", directory, ", ".join(still_mounted))
            else:
                shutil.rmtree(directory, ignore_errors=True)


# leftovers of killed builds ----------------------------------------------------------------


def remove_leftover_partials(folder: Path, prefix: str, reporter: Reporter) -> None:
    """Remove the unlocked partial images named ``PREFIX XXXXXXXX .partial`` in ``folder``
    (after unmounting and detaching what uses them), and detach loop devices still over
    such a file already deleted."""
    pattern = re.compile(re.escape(prefix) + _RANDOM + re.escape(PARTIAL_SUFFIX))
    for path in sorted(folder.iterdir()):
        if not pattern.fullmatch(path.name) or not _ours(path, stat.S_ISREG):
            continue
        with _unlocked(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC) as unlocked:
            if not unlocked:
                logger.debug("%s: in use by a running build", path)
                continue
            for name in attached_loop_devices(path):
                _release_loop_device(Path(name), path, reporter)
            path.unlink()
            reporter.warning(f"removed the partial image of an interrupted build: {path}")
    for device in loop_devices():
        backing = device.backing_file
        if device.deleted and backing.parent == folder and pattern.fullmatch(backing.name):
            _release_loop_device(device.name, backing, reporter)


def remove_leftover_build_folders(parent: Path, reporter: Reporter) -> None:
    """Remove the unlocked build folders in ``parent``, once nothing is mounted below them;
    the loop devices of what was mounted there are detached if their image is no running
    build's."""
    pattern = re.compile(re.escape(BUILD_FOLDER_PREFIX) + _RANDOM)
    for path in sorted(parent.iterdir()):
        if not pattern.fullmatch(path.name) or not _ours(path, stat.S_ISDIR):
            continue
        with _unlocked(path, _DIRECTORY | os.O_NOFOLLOW) as unlocked:
            if not unlocked:
                logger.debug("%s: in use by a running build", path)
                continue
            devices = {point: _mounted_device(point) for point in mounts_below(path)}
            for point, device in devices.items():
                if not _unmount_leftover(point, reporter):
                    break
                if device is not None:
                    _release_orphan_device(device, reporter)
            if mounts_below(path):
                reporter.warning(f"left the build folder of an interrupted build: {path}")
                continue
            shutil.rmtree(path, ignore_errors=True)
            reporter.warning(f"removed the build folder of an interrupted build: {path}")


def _release_loop_device(device: Path, image: Path, reporter: Reporter) -> None:
    for point in mounts_of_device(device):
        if not _unmount_leftover(point, reporter):
            return
    try:
        detach_loop_device(device)
    except BuildError as exc:
        reporter.warning(f"could not detach {device} (over {image}): {exc.message}")
        return
    reporter.warning(f"detached the loop device of an interrupted build: {device} ({image})")


def _release_orphan_device(device: Path, reporter: Reporter) -> None:
    """Detach ``device`` (just unmounted from a leftover build folder) if it is a loop
    device whose image is gone or no running build's."""
    for loop in loop_devices():
        if loop.name == device:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            with _unlocked(loop.backing_file, flags) as unlocked:
                if loop.deleted or unlocked:
                    _release_loop_device(device, loop.backing_file, reporter)


def _unmount_leftover(point: str, reporter: Reporter) -> bool:
    try:
        unmount(Path(point))
    except BuildError as exc:
        reporter.warning(f"could not unmount {point}, left by an interrupted build: {exc.message}")
        return False
    reporter.warning(f"unmounted what an interrupted build left mounted: {point}")
    return True


def _mounted_device(point: str) -> Path | None:
    """The device mounted at ``point``, when it is a loop device (read from /sys)."""
    number = Path(point).stat().st_dev
    link = Path(f"/sys/dev/block/{os.major(number)}:{os.minor(number)}")
    with contextlib.suppress(OSError):
        name = link.resolve().name
        if name.startswith("loop"):
            return Path("/dev") / name
    return None


def _ours(path: Path, is_kind: Callable[[int], bool]) -> bool:
    """A file or folder of the right kind (not a link), owned by this user."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    return is_kind(info.st_mode) and info.st_uid == os.geteuid()


@contextmanager
def _unlocked(path: Path, flags: int) -> Iterator[bool]:
    """Whether no running build holds ``path``'s lock; if so, hold it during the block."""
    try:
        handle = os.open(path, flags)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(handle)


@contextmanager
def _folder_locked(folder: Path, what: str) -> Iterator[None]:
    """An exclusive lock on ``folder`` itself, while leftovers are looked for and a new
    partial image or build folder is made and locked there."""
    try:
        handle = os.open(folder, _DIRECTORY)
    except OSError as exc:
        raise _cannot_write(folder, what, exc) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _cannot_write(folder: Path, what: str, error: OSError) -> Exception:
    if error.errno in _NO_ROOM:
        return HostError(f"no space left on {mount_point_of(folder)}: {os_reason(error)}")
    if error.errno == errno.ENAMETOOLONG:
        return OutputError(f"{folder}: {what}: a name there is too long ({os_reason(error)})")
    if error.errno in _READ_ONLY:
        return OutputError(f"{folder}: {what} is not writable ({os_reason(error)})")
    return OutputError(f"{folder}: {what} cannot be used ({os_reason(error)})")

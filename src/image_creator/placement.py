"""Putting things on the mounted data partition: safe paths, temporary names, atomic moves."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Protocol, TypeVar

from image_creator.errors import BuildError, Interrupted, os_reason
from image_creator.system.signals import releasing
from image_creator.units import NAME_MAX

_T = TypeVar("_T")
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def destination(root: Path, relative: PurePosixPath) -> Path:
    """``root/relative``, with its parent folders created, never through a link.

    The base image's data partition may hold symbolic links (``contents -> /srv`` or
    ``-> ../..``); followed, one would send folders and files onto the build host. Each
    folder is opened with O_NOFOLLOW relative to the one before it (created when missing),
    so a link anywhere on the way is refused before anything is created beyond it. A link at
    the final name is removed: the entry replaces it.
    """
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise BuildError(f"/data/{relative}: not a path inside the data partition")
    folder = os.open(root, _FOLDER_FLAGS)
    try:
        for depth, part in enumerate(relative.parts[:-1]):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=folder)
            try:
                inner = os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=folder)
            except OSError as exc:
                where = PurePosixPath("/data", *relative.parts[: depth + 1])
                raise BuildError(
                    f"/data/{relative}: {where} {_not_a_folder(part, folder, exc)}: "
                    "refusing to write through it"
                ) from exc
            os.close(folder)
            folder = inner
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(relative.name, dir_fd=folder).st_mode):
                os.unlink(relative.name, dir_fd=folder)
    finally:
        os.close(folder)
    return root.joinpath(*relative.parts)


def _not_a_folder(name: str, parent: int, error: OSError) -> str:
    with contextlib.suppress(OSError):
        if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
            return f"is a symbolic link (to {os.readlink(name, dir_fd=parent)})"
    return "is not a folder" if error.errno == errno.ENOTDIR else os_reason(error)


def temporary_sibling(target: Path, suffix: str = ".part") -> Path:
    """A fresh hidden name next to ``target``, on the same filesystem so a rename is atomic.

    It starts with the target's name, cut short so that the whole stays within the 255 bytes
    a name may have (a 250-byte name is valid; its temporary name must be too).
    """
    unique = f".{uuid.uuid4().hex[:8]}{suffix}"
    room = NAME_MAX - 1 - len(unique.encode())
    stem = target.name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return target.with_name(f".{stem}{unique}")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def staged(
    target: Path, *, directory: bool = False, on_replace: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """A temporary path next to ``target``, moved onto it when the block succeeds.

    On failure the temporary path is removed: nothing half-written is ever under its name.
    A directory is moved in place of an existing one, or merged into it entry by entry;
    ``on_replace`` is told of every existing file the merge replaces.
    """
    staging = temporary_sibling(target)
    if directory:
        staging.mkdir()
    try:
        yield staging
    except BaseException:
        remove(staging)
        raise
    if not directory:
        _fsync_or_remove(staging)
    if directory and target.is_dir() and not target.is_symlink():
        _merge_into(staging, target, on_replace or _ignore)
        return
    if (target.exists() or target.is_symlink()) and (directory or target.is_dir()):
        remove(target)  # a rename puts neither a folder over a file nor a file over a folder
    staging.replace(target)


def _fsync_or_remove(staging: Path) -> None:
    """A file takes its name only once its bytes are on the device: a write lost at
    writeback (the image's own volume full) fails the entry here, instead of leaving a file
    whose content never reached the image. Folders are synced with the whole filesystem."""
    try:
        handle = os.open(staging, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
    except BaseException:
        remove(staging)
        raise


def _merge_into(staging: Path, target: Path, on_replace: Callable[[Path], None]) -> None:
    for entry in list(staging.iterdir()):
        existing = target / entry.name
        if existing.is_dir() and not existing.is_symlink() and entry.is_dir():
            _merge_into(entry, existing, on_replace)
            continue
        if existing.exists() or existing.is_symlink():
            on_replace(existing)
            remove(existing)
        entry.replace(existing)
    staging.rmdir()


def _ignore(path: Path) -> None:
    pass


def placement_rounds(destinations: Sequence[tuple[PurePosixPath, bool]]) -> list[list[int]]:
    """The order entries are written in, as rounds of indices into ``destinations`` (each a
    destination and whether it is an archive); the entries of one round run concurrently.

    An archive merges into its folder whatever is already there, so it waits only for what
    lands inside its folder: the plain files and inline content there (written first, so
    that a member replacing one wins), and the archive whose folder holds its own (outer
    before inner). Everything else starts at once: a large archive downloads and extracts
    while the plain files elsewhere download. The loader allows no other nesting.
    """
    plain = [to for to, is_archive in destinations if not is_archive]
    archives = sorted({to for to, is_archive in destinations if is_archive}, key=_depth)
    archive_round: dict[PurePosixPath, int] = {}
    for folder in archives:  # outer archives first
        after_files = 1 if any(folder in to.parents for to in plain) else 0
        after_outer = [
            archive_round[outer] + 1 for outer in folder.parents if outer in archive_round
        ]
        archive_round[folder] = max([after_files, *after_outer])
    rounds: dict[int, list[int]] = {}
    for index, (to, is_archive) in enumerate(destinations):
        rounds.setdefault(archive_round[to] if is_archive else 0, []).append(index)
    return [rounds[order] for order in sorted(rounds)]


def _depth(path: PurePosixPath) -> int:
    return len(path.parts)


def run_in_rounds(
    tasks: Sequence[Callable[[threading.Event], _T]],
    rounds: Sequence[Sequence[int]],
    *,
    workers: int,
) -> list[_T]:
    """``tasks`` round after round (see :func:`run_concurrently`); results in task order."""
    results: dict[int, _T] = {}
    for indices in rounds:
        done = run_concurrently((tasks[index] for index in indices), workers=workers)
        results.update(zip(indices, done, strict=True))
    return [results[index] for index in range(len(tasks))]


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class CancellableReader:
    """A stream that raises Interrupted as soon as the run is cancelled (Ctrl-C, a failure)."""

    def __init__(self, stream: Readable, cancelled: threading.Event) -> None:
        self._stream = stream
        self._cancelled = cancelled

    def read(self, size: int = -1, /) -> bytes:
        if self._cancelled.is_set():
            raise Interrupted("cancelled")
        return self._stream.read(size)


def run_concurrently(tasks: Iterable[Callable[[threading.Event], _T]], *, workers: int) -> list[_T]:
    """Run tasks on ``workers`` threads; the first failure (or Ctrl-C) cancels the others.

    Returns only when every worker has stopped, so nothing still writes to the image while
    the caller unmounts it.
    """
    cancelled = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
    futures: list[Future[_T]] = []
    try:
        for task in tasks:
            futures.append(pool.submit(task, cancelled))
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and future.exception() is not None:
                future.result()  # raises the first failure, not a sibling's cancellation
        return [future.result() for future in futures]
    except BaseException:
        cancelled.set()
        raise
    finally:
        # every worker has stopped before the caller releases what they write to: a second
        # signal must not cut this wait short (workers stop soon once cancelled)
        with releasing():
            pool.shutdown(wait=True, cancel_futures=True)

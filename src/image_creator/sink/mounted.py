"""The data partition mounted on the host (loop device, root): the kernel does the writing.

Paths are opened through ``placement.destination`` (every folder on the way opened with
O_NOFOLLOW), files staged under a temporary name and synced before they take theirs.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from image_creator.cache.downloads import copy_file
from image_creator.errors import BuildError, os_reason
from image_creator.fetch.extractor import Extractor, MemberWriter
from image_creator.fetch.positional import preallocate
from image_creator.localfile import nearly_full
from image_creator.placement import destination, staged, temporary_sibling
from image_creator.progress import no_progress
from image_creator.sink import OnReplace, Room, checked

# Below this much free space (or with no inode left), an ENOSPC is the data partition's: the
# same error may come from the cache volume, written to while downloading.
_NEARLY_FULL = 64 * 1024 * 1024
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class _MountedFile:
    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        self._file.write(data)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview, /) -> None:
        self._file.flush()
        view = memoryview(data).cast("B")
        while view:
            done = os.pwrite(self._file.fileno(), view, offset)
            view, offset = view[done:], offset + done

    # with write_at, a RandomAccess: a segmented download lands here in place

    def reserve(self, size: int) -> None:
        self._file.flush()
        preallocate(self._file.fileno(), size)

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self._file.fileno(), size, offset)


class MountedSink:
    """The data partition mounted at ``root``."""

    random_access = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def _target(self, path: PurePosixPath) -> Path:
        return destination(self.root, checked(path))

    @contextmanager
    def new_file(self, path: PurePosixPath, *, mode: int = 0o644) -> Iterator[_MountedFile]:
        with staged(self._target(path)) as staging:
            # read and write: a segmented download reads what it wrote back, in order
            with staging.open("w+b") as file:
                yield _MountedFile(file)
            if mode != 0o644:
                staging.chmod(mode)

    @contextmanager
    def local_file(self, path: PurePosixPath) -> Iterator[Path]:
        with staged(self._target(path)) as staging:
            yield staging

    def copy_in(self, source: Path, path: PurePosixPath) -> int:
        target = self._target(path)
        with staged(target) as staging:
            copy_file(source, staging)
        return target.stat().st_size

    @contextmanager
    def scratch(self, path: PurePosixPath, suffix: str) -> Iterator[Path]:
        # on the partition, next to where it goes: no room needed on the host
        spool = temporary_sibling(self._target(path), suffix)
        try:
            yield spool
        finally:
            spool.unlink(missing_ok=True)

    @contextmanager
    def new_folder(
        self, path: PurePosixPath, *, source: str, on_replace: OnReplace
    ) -> Iterator[MemberWriter]:
        def replaced(existing: Path) -> None:
            on_replace(PurePosixPath(existing.relative_to(self.root)))

        with staged(self._target(path), directory=True, on_replace=replaced) as staging:
            yield Extractor(staging, source=source, on_progress=no_progress)

    def make_folders(self, path: PurePosixPath) -> None:
        folder = self._target(path)  # its parents made, through no link
        with contextlib.suppress(FileExistsError):
            folder.mkdir(0o755)
        if folder.is_symlink() or not folder.is_dir():
            raise BuildError(f"/data/{path}: is not a folder")

    def symlink(self, path: PurePosixPath, target: str) -> None:
        final = self._target(path)
        with staged(final) as staging:
            staging.symlink_to(target)

    def hard_link(self, existing: PurePosixPath, path: PurePosixPath) -> None:
        source = self._target(existing)
        with staged(self._target(path)) as staging:
            os.link(source, staging, follow_symlinks=False)

    def set_metadata(
        self, path: PurePosixPath, *, mode: int | None = None, mtime_ns: int | None = None
    ) -> None:
        target = self._target(path)
        if mode is not None and not target.is_symlink():  # a link has no mode of its own
            target.chmod(mode)
        if mtime_ns is not None:
            os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def rename(self, source: PurePosixPath, target: PurePosixPath) -> None:
        self._target(source).replace(self._target(target))

    def room(self) -> Room:
        fs = os.statvfs(self.root)
        return Room(free_bytes=fs.f_bfree * fs.f_frsize, free_inodes=fs.f_ffree)

    def full_reason(self, error: BaseException) -> tuple[str, bool] | None:
        if not isinstance(error, OSError) or error.errno not in _NO_ROOM:
            return None
        if not nearly_full(self.root, _NEARLY_FULL):
            return None
        inodes = error.errno == errno.ENOSPC and self.room().free_inodes == 0
        return os_reason(error), inodes

"""Where the build steps write the data partition's content: one small interface, two
backends.

The steps (``place_images``, ``place_files``, ``write_configs``) name every destination by
its path inside the data partition (``contents/zims/x.zim`` for ``/data/contents/...``) and
write through a :class:`Sink`; they do not know which backend runs:

- ``sink.mounted.MountedSink``: the partition mounted through a loop device (root);
- ``sink.offline.OfflineSink``: libext2fs on the image file itself (any user).

Both keep the same rules: no path leaves the partition, no link on the way is followed (a
link at the final name is replaced), archive members are checked one by one, a file takes
its name only once complete and verified (a failed block leaves nothing under its name).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Protocol

from image_creator.errors import BuildError
from image_creator.fetch.extractor import MemberWriter


class Backend(StrEnum):
    MOUNTED = "mounted"  # loop device and mount: needs root
    ROOTLESS = "rootless"  # libext2fs on the image file: needs only the file


@dataclass(frozen=True)
class Room:
    free_bytes: int  # blocks a build may use (reserved ones included: root's, libext2fs's)
    free_inodes: int


class SinkFile(Protocol):
    """A file being written; sequential ``write`` or positional ``write_at``."""

    def write(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def write_at(self, offset: int, data: bytes | bytearray | memoryview, /) -> None: ...


OnReplace = Callable[[PurePosixPath], None]


class Sink(Protocol):
    """The data partition, open for writing. Paths are relative to its root."""

    # whether the files ``new_file`` gives are also RandomAccess (fetch/positional.py:
    # reserved, written at offsets and read back), so that a download split over several
    # connections can land in place
    random_access: bool

    def new_file(
        self, path: PurePosixPath, *, mode: int = 0o644
    ) -> AbstractContextManager[SinkFile]:
        """A file for ``path`` under a temporary name, put in place (replacing a file or link
        there) when the block succeeds, removed when it fails."""
        ...

    def local_file(self, path: PurePosixPath) -> AbstractContextManager[Path]:
        """A host path to fill (for tools that need one), put at ``path`` when the block
        succeeds. Mounted: on the partition itself; offline: a scratch file, copied in."""
        ...

    def copy_in(self, source: Path, path: PurePosixPath) -> int:
        """``source`` (a host file) put at ``path``; the bytes written."""
        ...

    def scratch(self, path: PurePosixPath, suffix: str) -> AbstractContextManager[Path]:
        """A host file to spool into for ``path`` (a zip read back with random access),
        removed after the block."""
        ...

    def new_folder(
        self, path: PurePosixPath, *, source: str, on_replace: OnReplace
    ) -> AbstractContextManager[MemberWriter]:
        """Archive members written into a temporary folder, moved (or merged, telling
        ``on_replace`` of every entry replaced) onto ``path`` when the block succeeds."""
        ...

    def make_folders(self, path: PurePosixPath) -> None: ...

    def symlink(self, path: PurePosixPath, target: str) -> None: ...

    def hard_link(self, existing: PurePosixPath, path: PurePosixPath) -> None:
        """``path`` made another name of the file ``existing`` (replacing what is there)."""
        ...

    def set_metadata(
        self, path: PurePosixPath, *, mode: int | None = None, mtime_ns: int | None = None
    ) -> None: ...

    def rename(self, source: PurePosixPath, target: PurePosixPath) -> None: ...

    def room(self) -> Room: ...

    def full_reason(self, error: BaseException) -> tuple[str, bool] | None:
        """When ``error`` comes from the data partition being full: why in a few words, and
        whether it is out of inodes; None for any other error."""
        ...


def checked(path: PurePosixPath) -> PurePosixPath:
    """``path`` if it stays inside the partition (relative, no ``..``, not empty)."""
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BuildError(f"/data/{path}: not a path inside the data partition")
    return path

"""Writing archive members safely below a destination folder: the checks every format shares.

Every path is checked against the destination before anything is created: no absolute
names, no ``..``, no link leading outside, no path going through a symlink that escapes, no
device nodes, no setuid bits. No member writes more than the size its archive records for
it. Running out of space or inodes raises NoRoomError (the archive's size is no limit: the
destination's room is). Junk that archivers add (``__MACOSX/``, ``.DS_Store``, AppleDouble
``._*`` files, ``Thumbs.db``, ``desktop.ini``) is skipped and counted.
"""

from __future__ import annotations

import errno
import logging
import lzma
import os
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar

from image_creator.errors import BuildError, SourceError, os_reason
from image_creator.progress import ProgressCallback
from image_creator.units import CHUNK

logger = logging.getLogger(__name__)

# Errors a decompressor or archive reader raises on corrupt or truncated input.
_CORRUPT_INPUT_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    ValueError,
    NotImplementedError,
)

_T = TypeVar("_T")
# Errors of a destination with no room left: out of blocks (or inodes), or over a quota.
_NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Junk that archivers add: macOS resource forks and Finder/Explorer metadata.
_JUNK_FOLDER = "__MACOSX"
_JUNK_NAMES = {".ds_store": ".DS_Store", "thumbs.db": "Thumbs.db", "desktop.ini": "desktop.ini"}
_APPLEDOUBLE_PREFIX = "._"


@dataclass(frozen=True)
class ExtractResult:
    bytes_written: int  # bytes written to files
    files_created: int  # files and links
    directories_created: int
    junk_skipped: int  # members skipped as junk
    junk_kinds: tuple[str, ...] = ()  # which kinds: "__MACOSX", ".DS_Store", "._*", ...


class NoRoomError(BuildError):
    """The destination has no room for the archive: out of space, or of inodes (``inodes``).

    ``reason`` says why in a few words; ``needs_more_than`` is how many inodes the archive
    needs more than, ``free_inodes`` how many were free before it started (when known).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        inodes: bool = False,
        needs_more_than: int = 0,
        free_inodes: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.inodes = inodes
        self.needs_more_than = needs_more_than
        self.free_inodes = free_inodes


def junk_kind(name: str, *, is_dir: bool = False) -> str | None:
    """Which junk a member is (``__MACOSX``, ``.DS_Store``, ``._*``, ...), or None."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts:
        return None
    if _JUNK_FOLDER in parts:
        return _JUNK_FOLDER
    if is_dir:
        return None
    last = parts[-1]
    if last.lower() in _JUNK_NAMES:
        return _JUNK_NAMES[last.lower()]
    if last.startswith(_APPLEDOUBLE_PREFIX):
        return "._*"
    return None


def safe_file_mode(mode: int) -> int:
    """Keep permission bits, drop setuid/setgid/sticky and group/other write; owner can rw."""
    return (mode & 0o755) | 0o600


def safe_dir_mode(mode: int) -> int:
    return (mode & 0o755) | 0o700


class MemberWriter(ABC):
    """What every destination of archive members shares: names checked, junk skipped,
    corrupt input and a full destination turned into our errors, counts kept. Subclasses
    write the members: :class:`Extractor` into a host folder, ``sink.offline`` into an
    unmounted filesystem."""

    free_inodes_at_start: int | None  # the destination's, as the subclass found it

    def __init__(self, *, source: str, on_progress: ProgressCallback, where: str) -> None:
        self.source = source
        self.on_progress = on_progress
        self.where = where  # the destination, in messages
        self.bytes_written = 0
        self.files_created = 0
        self.directories_created = 0
        self.junk: dict[str, int] = {}

    def error(self, member: str, reason: str) -> SourceError:
        return SourceError(f"{self.source}: member {member!r}: {reason}")

    def relative_path(self, name: str) -> PurePosixPath | None:
        """The member's path relative to ``dest`` (None for the archive root ``./``)."""
        if "\x00" in name:
            raise self.error(name, "NUL byte in name")
        if name.startswith("/"):
            raise self.error(name, "absolute path refused")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.error(name, "'..' in path refused")
        return PurePosixPath(*parts) if parts else None

    def skip_junk(self, name: str, *, is_dir: bool = False) -> bool:
        """True (and counted) when the member is junk to leave out."""
        kind = junk_kind(name, is_dir=is_dir)
        if kind is None:
            return False
        self.junk[kind] = self.junk.get(kind, 0) + 1
        logger.debug("%s: skipped junk member %r", self.source, name)
        return True

    def result(self) -> ExtractResult:
        return ExtractResult(
            bytes_written=self.bytes_written,
            files_created=self.files_created,
            directories_created=self.directories_created,
            junk_skipped=sum(self.junk.values()),
            junk_kinds=tuple(sorted(self.junk)),
        )

    def read(self, name: str, read: Callable[[int], _T], size: int) -> _T:
        """Call an archive read, turning corrupt-input errors into a SourceError."""
        with self.reading(name):
            return read(size)

    @contextmanager
    def reading(self, name: str | None = None) -> Iterator[None]:
        try:
            yield
        except SourceError:
            raise
        except _CORRUPT_INPUT_ERRORS as exc:
            where = f"member {name!r}: " if name else ""
            raise SourceError(f"{self.source}: {where}invalid or truncated archive: {exc}") from exc

    def copy_member(
        self, name: str, content: IO[bytes], size: int, write: Callable[[bytes], object]
    ) -> None:
        """The member's bytes to ``write``, counted; refused past its recorded size (the
        size an archive records may lie: what is written is counted, member by member)."""
        member_written = 0
        while chunk := self.read(name, content.read, CHUNK):
            member_written += len(chunk)
            if member_written > size:
                raise self.error(name, f"grows past its recorded size of {size} bytes")
            write(chunk)
            self.bytes_written += len(chunk)
            self.on_progress(len(chunk))

    def file_path(self, name: str) -> PurePosixPath:
        """A file member's path (a file cannot be the archive root)."""
        relative = self.relative_path(name)
        if relative is None:
            raise self.error(name, "a file cannot be the archive root")
        return relative

    def link_path(self, name: str, link_target: str | None = None) -> PurePosixPath:
        """A link member's own path; with ``link_target``, a symlink's target checked too
        (not empty, no NUL, not absolute)."""
        relative = self.relative_path(name)
        if relative is None:
            raise self.error(name, "a link cannot be the archive root")
        if link_target is not None:
            if not link_target or "\x00" in link_target:
                raise self.error(name, "invalid symlink target")
            if link_target.startswith("/"):
                raise self.error(name, f"absolute symlink target {link_target!r} refused")
        return relative

    def hard_link_source(self, name: str, link_target: str) -> PurePosixPath:
        """A hard link's target member, relative to the destination."""
        target_relative = self.relative_path(link_target)
        if target_relative is None:
            raise self.error(name, "hard link to the archive root refused")
        return target_relative

    def no_room(self, reason: str, *, inodes: bool) -> NoRoomError:
        """The NoRoomError for a full destination, after what was written so far."""
        created = self.files_created + self.directories_created
        return NoRoomError(
            f"{self.source}: {reason} in {self.where} after {created} entries and "
            f"{self.bytes_written} bytes",
            reason=reason,
            inodes=inodes,
            needs_more_than=created,
            free_inodes=self.free_inodes_at_start,
        )

    @abstractmethod
    def room(self) -> tuple[int, int] | None:
        """Free bytes and free inodes of the destination (None: unknown)."""

    @abstractmethod
    def writing(self) -> AbstractContextManager[None]:
        """Turn a full destination (no space, no inodes, over quota) into NoRoomError."""

    @abstractmethod
    def add_directory(self, name: str, mode: int | None, mtime: float | None) -> None: ...

    @abstractmethod
    def add_file(
        self,
        name: str,
        content: IO[bytes],
        *,
        size: int,
        mode: int | None,
        mtime: float | None,
    ) -> None: ...

    @abstractmethod
    def add_symlink(self, name: str, link_target: str, mtime: float | None) -> None: ...

    @abstractmethod
    def add_hardlink(self, name: str, link_target: str) -> None: ...

    @abstractmethod
    def finish(self) -> None:
        """Once every member is in: links checked against the final tree, folder times."""


class Extractor(MemberWriter):
    """Writes checked members below ``dest`` and counts what it wrote and skipped."""

    def __init__(self, dest: Path, *, source: str, on_progress: ProgressCallback) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.root = Path(os.path.realpath(dest))
        super().__init__(source=source, on_progress=on_progress, where=str(self.root))
        self.free_inodes_at_start = free_inodes(self.root)
        # resolved paths of the regular files this archive created (hard link targets)
        self._files: set[Path] = set()
        # directory mtimes are set last: writing into a directory changes its mtime
        self._dir_times: dict[Path, float] = {}
        # links this archive made (member name -> path), checked again once all is in
        self._links: dict[str, Path] = {}

    def room(self) -> tuple[int, int] | None:
        try:
            fs = os.statvfs(self.root)
        except OSError:
            return None
        # root may use the blocks ext4 reserves
        free_bytes = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize
        return free_bytes, (fs.f_favail if fs.f_files else 2**63)

    # paths ---------------------------------------------------------------

    def _inside(self, path: Path) -> bool:
        return path == self.root or path.is_relative_to(self.root)

    def _resolve_inside(self, name: str, relative: PurePosixPath | None) -> Path:
        """The real path of ``dest/relative`` (following existing symlinks), if inside dest."""
        path = Path(
            os.path.realpath(self.root.joinpath(*relative.parts) if relative else self.root)
        )
        if not self._inside(path):
            raise self.error(name, "path goes through a link that leads outside the destination")
        return path

    def target(self, name: str, relative: PurePosixPath) -> Path:
        """Where to create a non-directory member: parent created and checked; the final
        component is not followed (an existing file or link there gets replaced)."""
        parent = self._resolve_inside(name, relative.parent if relative.parts[:-1] else None)
        self._make_dirs(name, parent)
        target = parent / relative.name
        if target.is_dir() and not target.is_symlink():
            raise self.error(name, "would replace a directory")
        if target.is_symlink() or target.exists():
            target.unlink()
        return target

    def _make_dirs(self, name: str, path: Path) -> None:
        if path.is_dir():
            return
        if path.exists() or path.is_symlink():
            raise self.error(name, f"{path.relative_to(self.root)} exists and is not a directory")
        missing = [path, *(parent for parent in path.parents if not parent.exists())]
        path.mkdir(parents=True, mode=0o755)
        self.directories_created += len(missing)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Turn a full destination (no space, no inodes, over quota) into NoRoomError."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in _NO_ROOM_ERRNOS:
                raise
            inodes = exc.errno == errno.ENOSPC and free_inodes(self.root) == 0
            reason = "no inodes left" if inodes else os_reason(exc)
            raise self.no_room(reason, inodes=inodes) from exc

    # members -------------------------------------------------------------

    def add_directory(self, name: str, mode: int | None, mtime: float | None) -> None:
        path = self._resolve_inside(name, self.relative_path(name))
        self._make_dirs(name, path)
        if path != self.root:
            if mode is not None:
                path.chmod(safe_dir_mode(mode))
            if mtime is not None:
                self._dir_times[path] = mtime

    def add_file(
        self,
        name: str,
        content: IO[bytes],
        *,
        size: int,
        mode: int | None,
        mtime: float | None,
    ) -> None:
        path = self.target(name, self.file_path(name))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        self.files_created += 1
        with os.fdopen(fd, "wb") as output:
            self.copy_member(name, content, size, output.write)
            os.fchmod(output.fileno(), safe_file_mode(0o644 if mode is None else mode))
        if mtime is not None:
            os.utime(path, (mtime, mtime), follow_symlinks=False)
        self._files.add(path)

    def add_symlink(self, name: str, link_target: str, mtime: float | None) -> None:
        path = self.target(name, self.link_path(name, link_target))
        resolved = Path(os.path.realpath(path.parent / link_target))
        if not self._inside(resolved):
            raise self.error(name, f"symlink target {link_target!r} is outside the destination")
        path.symlink_to(link_target)
        self._links[name] = path
        self.files_created += 1
        if mtime is not None:
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def add_hardlink(self, name: str, link_target: str) -> None:
        relative = self.link_path(name)
        target_relative = self.hard_link_source(name, link_target)
        try:
            existing = self._resolve_inside(name, target_relative)
        except SourceError:
            raise self.error(
                name, f"hard link target {link_target!r} is outside the destination"
            ) from None
        if existing not in self._files or not existing.is_file() or existing.is_symlink():
            raise self.error(
                name, f"hard link target {link_target!r} is not a file extracted from this archive"
            )
        path = self.target(name, relative)
        os.link(existing, path, follow_symlinks=False)
        self.files_created += 1

    def finish(self) -> None:
        # Each link was checked against the tree as it was then; links made later can change
        # where an earlier one leads (``a -> b/..``, then ``b -> .``): check the final tree.
        for name, path in self._links.items():
            if not self._inside(Path(os.path.realpath(path))):
                target = str(path.readlink())
                raise self.error(
                    name,
                    f"symlink target {target!r} leads outside the destination once the "
                    "whole archive is in",
                )
        # deepest first, so setting a child's time does not disturb its parent's afterwards
        for path in sorted(self._dir_times, key=lambda p: len(p.parts), reverse=True):
            mtime = self._dir_times[path]
            os.utime(path, (mtime, mtime))


def free_inodes(path: Path) -> int | None:
    """Inodes an unprivileged user may still create on ``path``'s filesystem (None: unknown)."""
    try:
        return os.statvfs(path).f_favail
    except OSError:
        return None

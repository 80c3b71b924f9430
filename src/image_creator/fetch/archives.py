"""Safe extraction of tar (streamed) and zip archives into a directory.

Members are written by this module, never by ``extractall``: every path is checked against
the destination before anything is created, so an archive cannot write outside ``dest``
(absolute names, ``..``, links escaping, a path going through a symlink that escapes), cannot
create device nodes or setuid files, and cannot expand past its declared size.

Tar archives are read strictly sequentially (tarfile's ``r|`` stream mode) because the
source is a network stream that is hashed as it is read; after the end-of-archive marker the
rest of the input is read too, so that a digest computed on the stream covers the whole file.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Literal, Protocol, TypeVar

from image_creator.errors import SourceError
from image_creator.ui.base import ProgressCallback, no_progress

logger = logging.getLogger(__name__)

TarCompression = Literal["gz", "bz2", "xz", ""]

_CHUNK_SIZE = 1024 * 1024
# Tools pad tar archives to a whole record (10 KiB by default, more with -b); anything this far
# past the end-of-archive marker is not padding and is not decompressed, only read raw.
_MAX_TRAILING_BYTES = 1024 * 1024
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


class ReadableStream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _safe_file_mode(mode: int) -> int:
    """Keep permission bits, drop setuid/setgid/sticky and group/other write; owner can rw."""
    return (mode & 0o755) | 0o600


def _safe_dir_mode(mode: int) -> int:
    return (mode & 0o755) | 0o700


class _Extractor:
    """Writes checked members below ``dest`` and keeps the running byte budget."""

    def __init__(
        self,
        dest: Path,
        *,
        source: str,
        max_bytes: int | None,
        on_progress: ProgressCallback,
    ) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.root = Path(os.path.realpath(dest))
        self.source = source
        self.max_bytes = max_bytes
        self.on_progress = on_progress
        self.bytes_written = 0
        # resolved paths of the regular files this archive created (hard link targets)
        self._files: set[Path] = set()
        # directory mtimes are set last: writing into a directory changes its mtime
        self._dir_times: dict[Path, float] = {}

    def error(self, member: str, reason: str) -> SourceError:
        return SourceError(f"{self.source}: member {member!r}: {reason}")

    # paths ---------------------------------------------------------------

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
        path.mkdir(parents=True, mode=0o755)

    # members -------------------------------------------------------------

    def add_directory(self, name: str, mode: int | None, mtime: float | None) -> None:
        path = self._resolve_inside(name, self.relative_path(name))
        self._make_dirs(name, path)
        if path != self.root:
            if mode is not None:
                path.chmod(_safe_dir_mode(mode))
            if mtime is not None:
                self._dir_times[path] = mtime

    def check_budget(self, name: str, size: int) -> None:
        if self.max_bytes is not None and self.bytes_written + size > self.max_bytes:
            raise self.error(
                name,
                f"archive expands to more than its declared size of {self.max_bytes} bytes",
            )

    def add_file(
        self,
        name: str,
        content: IO[bytes],
        *,
        size: int,
        mode: int | None,
        mtime: float | None,
    ) -> None:
        relative = self.relative_path(name)
        if relative is None:
            raise self.error(name, "a file cannot be the archive root")
        self.check_budget(name, size)
        path = self.target(name, relative)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as output:
            while True:
                chunk = self.read(name, content.read, _CHUNK_SIZE)
                if not chunk:
                    break
                # the header size may lie (or a sparse file expand): count what is written
                self.check_budget(name, len(chunk))
                output.write(chunk)
                self.bytes_written += len(chunk)
                self.on_progress(len(chunk))
            os.fchmod(output.fileno(), _safe_file_mode(0o644 if mode is None else mode))
        if mtime is not None:
            os.utime(path, (mtime, mtime), follow_symlinks=False)
        self._files.add(path)

    def add_symlink(self, name: str, link_target: str, mtime: float | None) -> None:
        relative = self.relative_path(name)
        if relative is None:
            raise self.error(name, "a link cannot be the archive root")
        if not link_target or "\x00" in link_target:
            raise self.error(name, "invalid symlink target")
        if link_target.startswith("/"):
            raise self.error(name, f"absolute symlink target {link_target!r} refused")
        path = self.target(name, relative)
        resolved = Path(os.path.realpath(path.parent / link_target))
        if not self._inside(resolved):
            raise self.error(name, f"symlink target {link_target!r} is outside the destination")
        path.symlink_to(link_target)
        if mtime is not None:
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def add_hardlink(self, name: str, link_target: str) -> None:
        relative = self.relative_path(name)
        if relative is None:
            raise self.error(name, "a link cannot be the archive root")
        target_relative = self.relative_path(link_target)
        if target_relative is None:
            raise self.error(name, "hard link to the archive root refused")
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

    def finish(self) -> None:
        # deepest first, so setting a child's time does not disturb its parent's afterwards
        for path in sorted(self._dir_times, key=lambda p: len(p.parts), reverse=True):
            mtime = self._dir_times[path]
            os.utime(path, (mtime, mtime))

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


def _decompressor(
    fileobj: ReadableStream, compression: TarCompression
) -> gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile | None:
    """A sequential decompressing reader (None for a plain tar). The stdlib readers handle
    multi-stream input (pbzip2, lbzip2, concatenated gzip) and check the trailer CRCs, which
    tarfile's own ``r|gz``/``r|bz2`` modes do not; they never seek."""
    raw: IO[bytes] = fileobj  # type: ignore[assignment]
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    if compression == "":
        return None
    raise ValueError(f"unknown tar compression {compression!r}")


def extract_tar_stream(
    fileobj: ReadableStream,
    dest: Path,
    *,
    compression: TarCompression,
    max_bytes: int | None,
    on_progress: ProgressCallback = no_progress,
    source: str | None = None,
) -> int:
    """Extract a tar archive read strictly sequentially from ``fileobj`` into ``dest``.

    ``compression`` is ``gz``, ``bz2``, ``xz`` or ``""`` (``config.model.Via.tar_compression``).
    ``max_bytes`` bounds the total size of the extracted files (the declared ``size``).
    ``on_progress`` receives the number of bytes written to files as they are.
    ``source`` names the archive in errors (the URL); default: the stream's ``name``.

    Reads ``fileobj`` to its end, past the end-of-archive marker. Returns the bytes written.
    Raises SourceError naming the archive (and the member) for an unsafe member, an archive
    bigger than ``max_bytes``, or corrupt input. ``dest`` is created if missing; on error,
    members already written are left there.
    """
    label = source or str(getattr(fileobj, "name", "tar archive"))
    extractor = _Extractor(dest, source=label, max_bytes=max_bytes, on_progress=on_progress)
    with ExitStack() as stack:
        decompressor = _decompressor(fileobj, compression)
        if decompressor is not None:
            stack.enter_context(decompressor)  # closing it leaves fileobj open
        stream: ReadableStream = decompressor or fileobj
        with extractor.reading():
            tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))  # type: ignore[call-overload]
        while True:
            with extractor.reading():
                member = tar.next()
            if member is None:
                break
            # stream mode never looks members up again; do not keep millions of them in memory
            tar.members.clear()
            _extract_tar_member(extractor, tar, member)
        extractor.finish()
        with extractor.reading():
            _drain(stream, fileobj, label)
    return extractor.bytes_written


def _extract_tar_member(
    extractor: _Extractor, tar: tarfile.TarFile, member: tarfile.TarInfo
) -> None:
    name = member.name
    mtime = float(member.mtime)
    if member.isdir():
        extractor.add_directory(name, member.mode, mtime)
    elif member.isreg():
        with extractor.reading(name):
            content = tar.extractfile(member)
        if content is None:  # pragma: no cover - isreg() members always have content
            raise extractor.error(name, "no content")
        with content:
            extractor.add_file(name, content, size=member.size, mode=member.mode, mtime=mtime)
    elif member.issym():
        extractor.add_symlink(name, member.linkname, mtime)
    elif member.islnk():
        extractor.add_hardlink(name, member.linkname)
    elif member.ischr() or member.isblk():
        raise extractor.error(name, "device node refused")
    elif member.isfifo():
        raise extractor.error(name, "fifo refused")
    else:
        raise extractor.error(name, f"unsupported tar member type {member.type!r}")


def _drain(stream: ReadableStream, raw: ReadableStream, label: str) -> None:
    """Read what follows the end-of-archive marker, so a digest of ``raw`` covers all of it."""
    if stream is not raw:
        # finish the compressed stream: this checks its CRC and consumes its trailer
        trailing = 0
        while trailing <= _MAX_TRAILING_BYTES:
            chunk = stream.read(_CHUNK_SIZE)
            if not chunk:
                break
            trailing += len(chunk)
        if trailing > _MAX_TRAILING_BYTES:
            logger.debug("%s: over %d bytes after the end of the tar", label, _MAX_TRAILING_BYTES)
    while raw.read(_CHUNK_SIZE):
        pass


def extract_zip(
    path: Path,
    dest: Path,
    *,
    max_bytes: int | None,
    on_progress: ProgressCallback = no_progress,
    source: str | None = None,
) -> int:
    """Extract the zip file at ``path`` into ``dest``; the same checks as for tar archives.

    Zip needs random access, so the archive must be a local file (download it first). The
    declared sizes are checked against ``max_bytes`` before anything is written, and the
    written bytes are counted as well. Unix modes and symlinks are honoured when the archive
    records them. Returns the bytes written.
    """
    label = source or str(path)
    extractor = _Extractor(dest, source=label, max_bytes=max_bytes, on_progress=on_progress)
    with extractor.reading():
        archive = zipfile.ZipFile(path)
    with archive:
        members = archive.infolist()
        declared = sum(info.file_size for info in members)
        if max_bytes is not None and declared > max_bytes:
            raise SourceError(
                f"{label}: archive expands to {declared} bytes, "
                f"more than its declared size of {max_bytes} bytes"
            )
        for info in members:
            _extract_zip_member(extractor, archive, info)
    extractor.finish()
    return extractor.bytes_written


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _extract_zip_member(
    extractor: _Extractor, archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> None:
    name = info.filename
    # Unix permissions and file type live in the high 16 bits, when made on Unix
    unix_mode = (info.external_attr >> 16) if info.create_system == 3 else 0
    file_type = stat.S_IFMT(unix_mode)
    mode = stat.S_IMODE(unix_mode) if unix_mode else None
    mtime = _zip_mtime(info)
    if info.flag_bits & 0x1:
        raise extractor.error(name, "encrypted members are not supported")
    if info.is_dir() or file_type == stat.S_IFDIR:
        extractor.add_directory(name, mode, mtime)
    elif file_type == stat.S_IFLNK:
        if info.file_size > 4096:
            raise extractor.error(name, "symlink target too long")
        with extractor.reading(name):
            target = archive.read(info)
        extractor.add_symlink(name, target.decode("utf-8", errors="surrogateescape"), mtime)
    elif file_type in (stat.S_IFCHR, stat.S_IFBLK):
        raise extractor.error(name, "device node refused")
    elif file_type in (stat.S_IFIFO, stat.S_IFSOCK):
        raise extractor.error(name, "fifo or socket refused")
    else:
        with extractor.reading(name):
            content = archive.open(info)
        with content:
            extractor.add_file(name, content, size=info.file_size, mode=mode, mtime=mtime)

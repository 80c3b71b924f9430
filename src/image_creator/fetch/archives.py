"""Safe extraction of tar (streamed) and zip archives into a directory.

Members are written by ``extractor.Extractor``, never by ``extractall``: every path is
checked against the destination before anything is created, so an archive cannot write
outside ``dest``, create device nodes or setuid files, or grow a member past the size it
records; the destination's room is the only bound on the total (NoRoomError). Junk that
archivers add (``__MACOSX/``, ``.DS_Store``, ``._*``, ``Thumbs.db``, ``desktop.ini``) is
skipped and counted in the ExtractResult.

Tar archives are read strictly sequentially (tarfile's ``r|`` stream mode) because the
source is a network stream that is hashed as it is read; after the end-of-archive marker the
rest of the input is read too, so that a digest computed on the stream covers the whole file.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import stat
import tarfile
import time
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Literal, Protocol

from image_creator.fetch.extractor import (
    Extractor,
    ExtractResult,
    MemberWriter,
    NoRoomError,
    junk_kind,
)
from image_creator.progress import ProgressCallback, no_progress
from image_creator.units import CHUNK

__all__ = [
    "ExtractResult",
    "NoRoomError",
    "TarCompression",
    "extract_tar_stream",
    "extract_zip",
    "junk_kind",
]

logger = logging.getLogger(__name__)

TarCompression = Literal["gz", "bz2", "xz", ""]

# Tools pad tar archives to a whole record (10 KiB by default, more with -b); anything this far
# past the end-of-archive marker is not padding and is not decompressed, only read raw.
_MAX_TRAILING_BYTES = 1024 * 1024


class ReadableStream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


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


# Long names (GNU) and extended headers (PAX) are read whole into memory by tarfile: a real
# one is a few KiB; an archive claiming a 1 GiB header is refused before it is read.
MAX_TAR_HEADER = 1024 * 1024
_HEADER_TYPES = frozenset(
    (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE)
) | {tarfile.SOLARIS_XHDTYPE}


class _BoundedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADER_TYPES and self.size > MAX_TAR_HEADER:
            raise tarfile.HeaderError(
                f"a {self.size}-byte extended header (at most {MAX_TAR_HEADER} accepted)"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]


def extract_tar_stream(
    fileobj: ReadableStream,
    dest: Path | MemberWriter,
    *,
    compression: TarCompression,
    on_progress: ProgressCallback = no_progress,
    source: str | None = None,
) -> ExtractResult:
    """Extract a tar archive read strictly sequentially from ``fileobj`` into ``dest``.

    ``compression`` is ``gz``, ``bz2``, ``xz`` or ``""`` (``config.model.Via.tar_compression``).
    ``on_progress`` receives the number of bytes written to files as they are.
    ``source`` names the archive in errors (the URL); default: the stream's ``name``.

    Reads ``fileobj`` to its end, past the end-of-archive marker. Raises SourceError naming
    the archive (and the member) for an unsafe member, a member longer than its header says,
    or corrupt input; NoRoomError when ``dest`` runs out of space or inodes. ``dest`` is
    created if missing; on error, members already written are left there. ``dest`` may
    also be a MemberWriter of its own (members written elsewhere than in a host folder).
    """
    label = source or str(getattr(fileobj, "name", "tar archive"))
    extractor = _writer(dest, label, on_progress)
    with ExitStack() as stack:
        decompressor = _decompressor(fileobj, compression)
        if decompressor is not None:
            stack.enter_context(decompressor)  # closing it leaves fileobj open
        stream: ReadableStream = decompressor or fileobj
        with extractor.reading():
            tar = stack.enter_context(
                tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo)  # type: ignore[call-overload]
            )
        while True:
            with extractor.reading():
                member = tar.next()
            if member is None:
                break
            # stream mode never looks members up again; do not keep millions of them in memory
            tar.members.clear()
            with extractor.writing():
                _extract_tar_member(extractor, tar, member)
        extractor.finish()
        with extractor.reading():
            _drain(stream, fileobj, label)
    return extractor.result()


def _writer(dest: Path | MemberWriter, label: str, on_progress: ProgressCallback) -> MemberWriter:
    if isinstance(dest, MemberWriter):
        return dest
    return Extractor(dest, source=label, on_progress=on_progress)


def _extract_tar_member(
    extractor: MemberWriter, tar: tarfile.TarFile, member: tarfile.TarInfo
) -> None:
    name = member.name
    if extractor.skip_junk(name, is_dir=member.isdir()) or (
        member.islnk() and junk_kind(member.linkname) is not None
    ):
        return  # its content, if any, is skipped by the next read
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
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            trailing += len(chunk)
        if trailing > _MAX_TRAILING_BYTES:
            logger.debug("%s: over %d bytes after the end of the tar", label, _MAX_TRAILING_BYTES)
    while raw.read(CHUNK):
        pass


def extract_zip(
    path: Path,
    dest: Path | MemberWriter,
    *,
    on_progress: ProgressCallback = no_progress,
    source: str | None = None,
) -> ExtractResult:
    """Extract the zip file at ``path`` into ``dest``; the same checks as for tar archives.

    Zip needs random access, so the archive must be a local file (download it first). Its
    central directory is read first: an archive whose members need more bytes or inodes than
    ``dest`` has free is refused (NoRoomError) before anything is written. No member may
    write more than its recorded size. Unix modes and symlinks are honoured when the archive
    records them.
    """
    label = source or str(path)
    extractor = _writer(dest, label, on_progress)
    with extractor.reading():
        archive = zipfile.ZipFile(path)
    with archive:
        members = [
            info
            for info in archive.infolist()
            if not extractor.skip_junk(info.filename, is_dir=info.is_dir())
        ]
        _check_room(extractor, members)
        with extractor.writing():
            for info in members:
                _extract_zip_member(extractor, archive, info)
    extractor.finish()
    return extractor.result()


def _check_room(extractor: MemberWriter, members: list[zipfile.ZipInfo]) -> None:
    """Refuse at once an archive whose recorded sizes or member count cannot fit."""
    room = extractor.room()
    if room is None:
        return
    free_bytes, free_inodes = room
    needed = sum(info.file_size for info in members)
    if needed > free_bytes:
        reason = f"the archive expands to {needed} bytes, {free_bytes} bytes free"
        raise NoRoomError(f"{extractor.source}: {reason} in {extractor.where}", reason=reason)
    if len(members) > free_inodes:
        reason = f"{len(members)} members, {free_inodes} inodes free"
        raise NoRoomError(
            f"{extractor.source}: {reason} in {extractor.where}",
            reason=reason,
            inodes=True,
            needs_more_than=free_inodes,
            free_inodes=free_inodes,
        )


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _extract_zip_member(
    extractor: MemberWriter, archive: zipfile.ZipFile, info: zipfile.ZipInfo
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

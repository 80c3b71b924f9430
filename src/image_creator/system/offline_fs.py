"""Writing onto the data partition without mounting it: libext2fs on the image file.

:class:`OfflineFilesystem` does what the build steps do on a mounted data partition (see
``placement.py``) with the rights of the image file alone: folders made through no
link, files streamed under a temporary name then renamed over the final one, symbolic and
hard links, mode, owner and times. The same safety rules hold: every path is relative to the
partition's root, without ``..``; no link on the way is followed, one at the final name is
replaced, never written through.

libext2fs takes one caller at a time: ``system/queued_writer.py`` owns the filesystem in one
thread.

While open, the superblock says "not clean" (as a mounted filesystem does): a run cut short
leaves a filesystem that ``ensure_cleanly_unmounted`` and e2fsck do not take for finished.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

from image_creator.errors import BuildError
from image_creator.system.ext2fs import (
    ERROR_FS,
    FT_DIR,
    FT_REG_FILE,
    FT_SYMLINK,
    LINK_MAX,
    ROOT_INO,
    S_IFDIR,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    VALID_FS,
    Ext2Filesystem,
    ExtentFile,
    File,
    Inode,
)
from image_creator.system.partitions import Partition
from image_creator.units import NAME_MAX

logger = logging.getLogger(__name__)

DEFAULT_SHOWN_AS = PurePosixPath("/data")  # where the device mounts the partition
FILE_MODE = 0o644
PERMISSION_BITS = 0o7777

PathLike = PurePosixPath | str


@dataclass(frozen=True)
class Attributes:
    """What to set on an entry; None keeps what it has (new entries: 0644 or the folder's
    0755, owner 0:0, times now)."""

    mode: int | None = None  # permission bits only (0o7777)
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None  # also sets atime

    def __post_init__(self) -> None:
        if self.mode is not None and not 0 <= self.mode <= PERMISSION_BITS:
            raise ValueError(f"mode {self.mode:o}: only permission bits (0 to 7777) are set")
        for name in ("uid", "gid"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**32:
                raise ValueError(f"{name} {value}: not a 32-bit id")


KEEP = Attributes()


@dataclass(frozen=True)
class FreeSpace:
    """Room left in the filesystem. libext2fs, like root, may use the reserved blocks."""

    block_size: int
    free_bytes: int  # reserved blocks included
    reserved_bytes: int
    free_inodes: int


@dataclass(frozen=True)
class EntryStat:
    """An entry as ``lstat`` would describe it (links are not followed)."""

    ino: int
    kind: str  # "file", "folder", "symlink" or "other"
    mode: int  # permission bits
    uid: int
    gid: int
    size: int
    links: int
    mtime_ns: int


@dataclass
class PendingFile:
    """A file being written under a temporary name (see :meth:`OfflineFilesystem.begin_file`)."""

    path: PurePosixPath
    parent: int
    temporary: bytes
    final: bytes
    ino: int
    file: File | ExtentFile
    written: int = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.file.write(data)
        self.written += len(data)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at byte ``offset`` (for pieces that arrive out of order)."""
        if isinstance(self.file, ExtentFile):
            self.file.write_at(offset, data)
        else:
            if self.file.position != offset:
                self.file.seek(offset)
            self.file.write(data)
        self.written += len(data)


def _kind(inode: Inode) -> str:
    kinds = {S_IFREG: "file", S_IFDIR: "folder", S_IFLNK: "symlink"}
    return kinds.get(int(inode.i_mode) & S_IFMT, "other")


@dataclass(frozen=True)
class _Found:
    """A path looked up: see OfflineFilesystem._entry."""

    parts: tuple[bytes, ...]
    shown: str
    parent: int
    ino: int | None


class OfflineFilesystem:
    """The ext4 filesystem of ``partition`` in ``image``, open for writing, without root.

    Errors name paths as the device sees them (``shown_as``, ``/data``). Use as a context
    manager; one thread at a time (:class:`QueuedWriter` for several producers). On a
    normal exit the superblock is marked clean again and everything is flushed; on an error
    what was written is flushed but the filesystem stays marked not clean.
    """

    def __init__(
        self, image: Path, partition: Partition, *, shown_as: PurePosixPath = DEFAULT_SHOWN_AS
    ) -> None:
        self.image = image
        self.partition = partition
        self.shown_as = shown_as
        self._fs: Ext2Filesystem | None = None
        self._state = 0

    def __enter__(self) -> OfflineFilesystem:
        label = f"{self.image} (partition {self.partition.number})"
        fs = Ext2Filesystem(self.image, self.partition.start_bytes, writable=True, label=label)
        try:
            self._refuse_unfit(fs, label)
            self._state = fs.state
            fs.set_state(self._state & ~VALID_FS)
        except BaseException:
            fs.__exit__(BuildError, None, None)
            raise
        self._fs = fs
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        fs, self._fs = self._fs, None
        if fs is None:
            return
        if kind is None:
            try:
                fs.set_state(self._state | VALID_FS)
            except BaseException:
                fs.__exit__(BuildError, None, None)
                raise
            fs.close()
        else:
            fs.__exit__(kind, error, trace)

    def _refuse_unfit(self, fs: Ext2Filesystem, label: str) -> None:
        counts = fs.counts()
        problems: list[str] = []
        if counts.blocks * counts.block_size > self.partition.size_bytes:
            problems.append(
                f"the filesystem ({counts.blocks * counts.block_size} bytes) is larger than "
                f"its partition ({self.partition.size_bytes} bytes)"
            )
        if not fs.state & VALID_FS or fs.state & ERROR_FS:
            problems.append("the filesystem is not marked clean")
        if fs.needs_recovery:
            problems.append("its journal needs recovery")
        if problems:
            raise BuildError(
                f"{label}: cannot write offline: {'; '.join(problems)}", hint="run e2fsck -f"
            )

    @property
    def _ext2(self) -> Ext2Filesystem:
        if self._fs is None:
            raise BuildError(f"{self.image}: the data filesystem is not open")
        return self._fs

    # paths ------------------------------------------------------------------------------

    def _parts(self, path: PathLike) -> tuple[bytes, ...]:
        relative = PurePosixPath(path)
        shown = self._shown(relative.parts)
        if relative.is_absolute() or not relative.parts or ".." in relative.parts:
            raise BuildError(f"{shown}: not a path inside the data partition")
        parts = tuple(os.fsencode(part) for part in relative.parts)
        for part in parts:
            if b"\0" in part or len(part) > NAME_MAX:
                raise BuildError(f"{shown}: invalid name (NUL byte, or over {NAME_MAX} bytes)")
        return parts

    def _shown(self, parts: Sequence[str | bytes]) -> str:
        names = [os.fsdecode(part) for part in parts]
        return str(self.shown_as.joinpath(*names))

    def _entry(self, parts: tuple[bytes, ...]) -> _Found:
        """Where the path ``parts`` is: how it is shown, its folder's inode (folders on the
        way must exist and be folders) and its own inode, None when it does not exist."""
        shown = self._shown(parts)
        parent = self._folder(parts[:-1], shown, create=False)
        return _Found(parts, shown, parent, self._ext2.lookup(parent, parts[-1], shown))

    def _folder(self, parts: Sequence[bytes], target: str, *, create: bool) -> int:
        """The inode of the folder ``parts``, made when missing (``create``), never through
        a link: a link or a file on the way is refused, naming it."""
        fs = self._ext2
        ino = ROOT_INO
        for depth, name in enumerate(parts):
            where = self._shown(parts[: depth + 1])
            child = fs.lookup(ino, name, where)
            if child is None:
                if not create:
                    raise BuildError(f"{target}: {where} does not exist")
                child = fs.mkdir(ino, name, where)
            else:
                inode = fs.read_inode(child, where)
                if _kind(inode) == "symlink":
                    link = os.fsdecode(fs.read_link(child, where))
                    raise BuildError(
                        f"{target}: {where} is a symbolic link (to {link}): "
                        "refusing to write through it"
                    )
                if _kind(inode) != "folder":
                    raise BuildError(
                        f"{target}: {where} is not a folder: refusing to write through it"
                    )
            ino = child
        return ino

    def _temporary_name(self, final: bytes) -> bytes:
        unique = f".{uuid.uuid4().hex[:8]}.part".encode()
        stem = final[: NAME_MAX - 1 - len(unique)]
        return b"." + stem + unique

    # operations -------------------------------------------------------------------------

    def make_folders(self, path: PathLike, attributes: Attributes = KEEP) -> None:
        """Make ``path`` and its missing parents (0755, 0:0); ``attributes`` go to ``path``."""
        parts = self._parts(path)
        target = self._shown(parts)
        ino = self._folder(parts, target, create=True)
        if attributes != KEEP:
            self._apply(ino, attributes, target)

    def begin_file(self, path: PathLike, *, mode: int = FILE_MODE) -> PendingFile:
        """Start a file at ``path`` (parents made): an inode under a temporary name, open
        for writing. Finish with :meth:`commit_file` or :meth:`abort_file`."""
        parts = self._parts(path)
        target = self._shown(parts)
        fs = self._ext2
        parent = self._folder(parts[:-1], target, create=True)
        self._refuse_folder_at(parent, parts[-1], target)
        temporary = self._temporary_name(parts[-1])
        ino = fs.new_inode(parent, S_IFREG | (mode & PERMISSION_BITS), target)
        try:
            fs.link(parent, temporary, ino, FT_REG_FILE, target)
        except BaseException:
            fs.release_inode(ino, target)
            raise
        try:
            file = fs.open_file(ino, target, writable=True)
        except BaseException:
            self._discard(parent, temporary, ino, target)
            raise
        return PendingFile(
            PurePosixPath(*map(os.fsdecode, parts)), parent, temporary, parts[-1], ino, file
        )

    def commit_file(self, pending: PendingFile, attributes: Attributes = KEEP) -> int:
        """Close the file, set ``attributes`` and move it onto its name (replacing a file or
        link there); return the bytes written. On an error the file is discarded."""
        target = self._shown(pending.path.parts)
        try:
            pending.file.close()
            self._apply(pending.ino, attributes, target)
            self._replace(
                (pending.parent, pending.temporary),
                (pending.parent, pending.final),
                pending.ino,
                target,
            )
        except BaseException:
            self.discard_file(pending)
            raise
        return pending.written

    def abort_file(self, pending: PendingFile) -> None:
        """Drop a file begun with :meth:`begin_file`: its name and its blocks are freed."""
        target = self._shown(pending.path.parts)
        pending.file.close(quiet=True)
        fs = self._ext2
        if fs.lookup(pending.parent, pending.temporary, target) == pending.ino:
            self._discard(pending.parent, pending.temporary, pending.ino, target)

    def discard_file(self, pending: PendingFile) -> None:
        """:meth:`abort_file` on the way out of an error: a failure to clean up is logged,
        so that the error being raised is the one the caller sees."""
        try:
            self.abort_file(pending)
        except Exception as exc:  # the first error is the one to report
            logger.error("%s: could not discard the partial file: %s", pending.path, exc)

    def write_file(
        self,
        path: PathLike,
        chunks: Iterable[bytes | bytearray | memoryview],
        attributes: Attributes = KEEP,
    ) -> int:
        """Write the file ``path`` from ``chunks`` (each written once, as it comes); the
        file takes its name only when complete. Returns the bytes written."""
        pending = self.begin_file(
            path, mode=FILE_MODE if attributes.mode is None else attributes.mode
        )
        try:
            for chunk in chunks:
                pending.write(chunk)
        except BaseException:
            self.discard_file(pending)
            raise
        return self.commit_file(pending, attributes)

    def symlink(self, path: PathLike, target: str, attributes: Attributes = KEEP) -> None:
        """Make ``path`` a symbolic link to ``target`` (stored as given, never followed),
        replacing a file or link there. Owner and times from ``attributes``, not the mode."""
        parts = self._parts(path)
        shown = self._shown(parts)
        encoded = os.fsencode(target)
        fs = self._ext2
        if not encoded or b"\0" in encoded or len(encoded) >= fs.counts().block_size:
            raise BuildError(f"{shown}: invalid link target {target!r}")
        if attributes.mode is not None:
            raise BuildError(f"{shown}: a symbolic link has no mode of its own")
        parent = self._folder(parts[:-1], shown, create=True)
        self._refuse_folder_at(parent, parts[-1], shown)
        temporary = self._temporary_name(parts[-1])
        ino = fs.symlink(parent, temporary, encoded, shown)
        try:
            self._apply(ino, attributes, shown)
            self._replace((parent, temporary), (parent, parts[-1]), ino, shown)
        except BaseException:
            self._discard(parent, temporary, ino, shown)
            raise

    def hard_link(self, existing: PathLike, path: PathLike) -> None:
        """Make ``path`` another name of the file (or link) ``existing``, replacing a file
        or link at ``path``; the link count rises by one."""
        source_parts, parts = self._parts(existing), self._parts(path)
        source = self._entry(source_parts)
        source_shown, shown = source.shown, self._shown(parts)
        fs = self._ext2
        ino = source.ino
        if ino is None:
            raise BuildError(f"{shown}: cannot link to {source_shown}: it does not exist")
        inode = fs.read_inode(ino, source_shown)
        if _kind(inode) == "folder":
            raise BuildError(f"{shown}: cannot link to {source_shown}: it is a folder")
        if inode.i_links_count >= LINK_MAX:
            raise BuildError(f"{shown}: {source_shown} has too many links")
        parent = self._folder(parts[:-1], shown, create=True)
        existing_ino = fs.lookup(parent, parts[-1], shown)
        if existing_ino == ino:
            return
        if existing_ino is not None:
            self._refuse_folder_at(parent, parts[-1], shown)
            fs.unlink(parent, parts[-1], shown)
            self._drop_link(existing_ino, shown)
        fs.link(parent, parts[-1], ino, self._file_type(inode), shown)
        inode = fs.read_inode(ino, shown)
        inode.i_links_count += 1
        inode.set_times_ns(ctime_ns=time.time_ns())
        fs.write_inode(ino, inode, shown)

    def rename(self, source: PathLike, target: PathLike) -> None:
        """Move the file or link ``source`` onto ``target`` (parents made), replacing a file
        or link there. Folders are not moved."""
        source_parts, parts = self._parts(source), self._parts(target)
        moved = self._entry(source_parts)
        shown = self._shown(parts)
        ino = moved.ino
        if ino is None:
            raise BuildError(f"{moved.shown}: cannot move it: it does not exist")
        if _kind(self._ext2.read_inode(ino, moved.shown)) == "folder":
            raise BuildError(f"{moved.shown}: cannot move a folder offline")
        parent = self._folder(parts[:-1], shown, create=True)
        self._refuse_folder_at(parent, parts[-1], shown)
        self._replace((moved.parent, moved.parts[-1]), (parent, parts[-1]), ino, shown)

    def remove(self, path: PathLike) -> None:
        """Remove the file or link ``path`` (its blocks are freed with its last name)."""
        found = self._entry(self._parts(path))
        if found.ino is None:
            raise BuildError(f"{found.shown}: cannot remove it: it does not exist")
        self._refuse_folder_at(found.parent, found.parts[-1], found.shown)
        self._ext2.unlink(found.parent, found.parts[-1], found.shown)
        self._drop_link(found.ino, found.shown)

    def set_attributes(self, path: PathLike, attributes: Attributes) -> None:
        """Set mode, owner, group, mtime of ``path`` itself (a link is not followed)."""
        found = self._entry(self._parts(path))
        if found.ino is None:
            raise BuildError(f"{found.shown}: does not exist")
        self._apply(found.ino, attributes, found.shown)

    def stat(self, path: PathLike) -> EntryStat | None:
        """``path`` as lstat describes it, or None when missing (folders on the way must
        exist and be folders)."""
        found = self._entry(self._parts(path))
        ino = found.ino
        if ino is None:
            return None
        inode = self._ext2.read_inode(ino, found.shown)
        return EntryStat(
            ino=ino,
            kind=_kind(inode),
            mode=int(inode.i_mode) & PERMISSION_BITS,
            uid=inode.uid,
            gid=inode.gid,
            size=inode.size,
            links=int(inode.i_links_count),
            mtime_ns=inode.mtime_ns(),
        )

    def list_folder(self, path: PathLike | None = None) -> list[str]:
        """The names in the folder ``path`` (None: the partition's root), links unfollowed."""
        fs = self._ext2
        if path is None:
            return sorted(os.fsdecode(name) for name, _ in fs.list_folder(ROOT_INO, "/"))
        parts = self._parts(path)
        shown = self._shown(parts)
        ino = self._folder(parts, shown, create=False)
        return sorted(os.fsdecode(name) for name, _ in fs.list_folder(ino, shown))

    def remove_folder(self, path: PathLike) -> None:
        """Remove the empty folder ``path``."""
        parts = self._parts(path)
        shown = self._shown(parts)
        fs = self._ext2
        parent = self._folder(parts[:-1], shown, create=False)
        ino = self._folder(parts, shown, create=False)
        if fs.list_folder(ino, shown):
            raise BuildError(f"{shown}: cannot remove a folder that is not empty")
        fs.unlink(parent, parts[-1], shown)
        inode = fs.read_inode(parent, shown)
        inode.i_links_count -= 1  # its ".." is gone
        inode.set_times_ns(mtime_ns=time.time_ns(), ctime_ns=time.time_ns())
        fs.write_inode(parent, inode, shown)
        fs.release_inode(ino, shown)

    def rename_folder(self, path: PathLike, name: str) -> None:
        """Give the folder ``path`` the name ``name`` in the same parent, where nothing has
        that name yet (its ".." and every link count stay as they are)."""
        parts = self._parts(path)
        shown = self._shown(parts)
        (new,) = self._parts(name)
        target = self._shown((*parts[:-1], new))
        fs = self._ext2
        parent = self._folder(parts[:-1], shown, create=False)
        ino = self._folder(parts, shown, create=False)
        if fs.lookup(parent, new, target) is not None:
            raise BuildError(f"{target}: already exists: cannot move {shown} there")
        fs.link(parent, new, ino, FT_DIR, target)
        fs.unlink(parent, parts[-1], shown)

    def read_link(self, path: PathLike) -> str:
        found = self._entry(self._parts(path))
        fs = self._ext2
        if found.ino is None or _kind(fs.read_inode(found.ino, found.shown)) != "symlink":
            raise BuildError(f"{found.shown}: not a symbolic link")
        return os.fsdecode(fs.read_link(found.ino, found.shown))

    def free_space(self) -> FreeSpace:
        counts = self._ext2.counts()
        return FreeSpace(
            block_size=counts.block_size,
            free_bytes=counts.free_blocks * counts.block_size,
            reserved_bytes=counts.reserved_blocks * counts.block_size,
            free_inodes=counts.free_inodes,
        )

    # inside -----------------------------------------------------------------------------

    def _refuse_folder_at(self, parent: int, name: bytes, shown: str) -> None:
        fs = self._ext2
        ino = fs.lookup(parent, name, shown)
        if ino is not None and _kind(fs.read_inode(ino, shown)) == "folder":
            raise BuildError(f"{shown}: is a folder: refusing to replace it")

    @staticmethod
    def _file_type(inode: Inode) -> int:
        return FT_SYMLINK if _kind(inode) == "symlink" else FT_REG_FILE

    def _apply(self, ino: int, attributes: Attributes, shown: str) -> None:
        fs = self._ext2
        inode = fs.read_inode(ino, shown)
        if attributes.mode is not None:
            inode.i_mode = (int(inode.i_mode) & ~PERMISSION_BITS) | attributes.mode
        if attributes.uid is not None:
            inode.uid = attributes.uid
        if attributes.gid is not None:
            inode.gid = attributes.gid
        inode.set_times_ns(mtime_ns=attributes.mtime_ns, ctime_ns=time.time_ns())
        fs.write_inode(ino, inode, shown)

    def _replace(
        self, source: tuple[int, bytes], target: tuple[int, bytes], ino: int, shown: str
    ) -> None:
        """Give inode ``ino``, now named ``source`` (a folder's inode and a name), the name
        ``target`` instead, dropping what had that name. Its link count is unchanged."""
        (source_parent, source_name), (parent, name) = source, target
        fs = self._ext2
        existing = fs.lookup(parent, name, shown)
        if existing == ino:  # two names of one file: as rename(2), leave both
            return
        if existing is not None:
            fs.unlink(parent, name, shown)
            self._drop_link(existing, shown)
        fs.link(parent, name, ino, self._file_type(fs.read_inode(ino, shown)), shown)
        fs.unlink(source_parent, source_name, shown)

    def _drop_link(self, ino: int, shown: str) -> None:
        fs = self._ext2
        inode = fs.read_inode(ino, shown)
        if inode.i_links_count > 1:
            inode.i_links_count -= 1
            inode.set_times_ns(ctime_ns=time.time_ns())
            fs.write_inode(ino, inode, shown)
        else:
            fs.release_inode(ino, shown)

    def _discard(self, parent: int, name: bytes, ino: int, shown: str) -> None:
        fs = self._ext2
        fs.unlink(parent, name, shown)
        fs.release_inode(ino, shown)

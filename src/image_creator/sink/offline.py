"""The data partition written inside the image file by libext2fs: no loop device, no mount,
no root (see ``system/offline_fs.py``).

Every operation goes to the one writer thread of a :class:`QueuedWriter`; downloads, hashing
and extraction run in the callers' threads. Archives are extracted member by member into a
temporary folder next to their destination (each byte written once), then moved or merged
onto it once verified, as on the mounted partition. Tools that need a host path (an OCI
export, a zip read back with random access) get a scratch file in the build folder.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from image_creator.fetch.extractor import (
    MemberWriter,
    safe_dir_mode,
    safe_file_mode,
)
from image_creator.progress import no_progress
from image_creator.sink import OnReplace, Room, checked
from image_creator.system.ext2fs import ET_INODE_ALLOC_FAIL, Ext2fsError
from image_creator.system.offline_fs import Attributes
from image_creator.system.queued_writer import QueuedFile, QueuedWriter
from image_creator.units import CHUNK, NAME_MAX

logger = logging.getLogger(__name__)

_MAX_LINK_HOPS = 40  # as the kernel's path walk (ELOOP)


def _ns(seconds: float) -> int:
    """A member's time in nanoseconds, exact for whole seconds (as os.utime takes a float)."""
    whole = int(seconds // 1)
    return whole * 1_000_000_000 + round((seconds - whole) * 1_000_000_000)


def _temporary_name(name: str) -> str:
    unique = f".{uuid.uuid4().hex[:8]}.part"
    room = NAME_MAX - 1 - len(unique.encode())
    stem = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f".{stem}{unique}"


class OfflineSink:
    """The data partition of an image file, written through ``writer``; scratch files go
    in ``scratch_dir`` (the build folder)."""

    # its files are written, not read back: a download comes on one connection here
    random_access = False

    def __init__(self, writer: QueuedWriter, scratch_dir: Path) -> None:
        self.writer = writer
        self.scratch_dir = scratch_dir

    @contextmanager
    def new_file(self, path: PurePosixPath, *, mode: int = 0o644) -> Iterator[QueuedFile]:
        with self.writer.open_file(checked(path), mode=mode) as file:
            yield file
            file.commit()

    @contextmanager
    def local_file(self, path: PurePosixPath) -> Iterator[Path]:
        with self.scratch(path, ".part") as spool:
            yield spool
            self.copy_in(spool, path)

    def copy_in(self, source: Path, path: PurePosixPath) -> int:
        with source.open("rb") as reader, self.new_file(path) as file:
            written = 0
            while chunk := reader.read(CHUNK):
                file.write(chunk)
                written += len(chunk)
        return written

    @contextmanager
    def scratch(self, path: PurePosixPath, suffix: str) -> Iterator[Path]:
        handle, name = tempfile.mkstemp(
            prefix=_temporary_name(checked(path).name)[:64], suffix=suffix, dir=self.scratch_dir
        )
        spool = Path(name)
        try:
            with open(handle, "wb"):
                pass
            yield spool
        finally:
            spool.unlink(missing_ok=True)

    @contextmanager
    def new_folder(
        self, path: PurePosixPath, *, source: str, on_replace: OnReplace
    ) -> Iterator[MemberWriter]:
        target = checked(path)
        stage = target.with_name(_temporary_name(target.name))
        self.writer.make_folders(stage)
        try:
            yield OfflineExtractor(self.writer, stage, source=source)
            self._move(stage, target, on_replace)
        except BaseException:
            self._discard(stage)
            raise

    def make_folders(self, path: PurePosixPath) -> None:
        self.writer.make_folders(checked(path))

    def symlink(self, path: PurePosixPath, target: str) -> None:
        self.writer.symlink(checked(path), target)

    def hard_link(self, existing: PurePosixPath, path: PurePosixPath) -> None:
        self.writer.hard_link(checked(existing), checked(path))

    def set_metadata(
        self, path: PurePosixPath, *, mode: int | None = None, mtime_ns: int | None = None
    ) -> None:
        self.writer.set_attributes(checked(path), Attributes(mode=mode, mtime_ns=mtime_ns))

    def rename(self, source: PurePosixPath, target: PurePosixPath) -> None:
        self.writer.rename(checked(source), checked(target))

    def room(self) -> Room:
        free = self.writer.free_space()
        return Room(free_bytes=free.free_bytes, free_inodes=free.free_inodes)

    def full_reason(self, error: BaseException) -> tuple[str, bool] | None:
        if not isinstance(error, Ext2fsError) or not error.no_space:
            return None
        inodes = error.code == ET_INODE_ALLOC_FAIL or self.room().free_inodes == 0
        return ("no inodes left" if inodes else "No space left on device"), inodes

    def _discard(self, stage: PurePosixPath) -> None:
        """Remove what an archive left in its folder; on the way out of an error, so a
        failure here is logged and the first error is the one raised."""
        try:
            if self.writer.stat(stage) is not None:
                self._remove_tree(stage)
        except Exception as exc:
            logger.error("/data/%s: could not remove the partial folder: %s", stage, exc)

    # moving a staged folder into place ----------------------------------------------------

    def _move(self, stage: PurePosixPath, target: PurePosixPath, on_replace: OnReplace) -> None:
        existing = self.writer.stat(target)
        if existing is not None and existing.kind == "folder":
            self._merge_into(stage, target, on_replace)
            return
        if existing is not None:
            self.writer.remove(target)  # a folder takes the place of a file or link
        self.writer.rename_folder(stage, target.name)

    def _merge_into(
        self, stage: PurePosixPath, target: PurePosixPath, on_replace: OnReplace
    ) -> None:
        """As ``placement.staged`` merges on a mounted partition: entry by entry, folders
        into folders, anything else replacing what has its name."""
        writer = self.writer
        for name in writer.list_folder(stage):
            staged_entry, final = stage / name, target / name
            entry, existing = writer.stat(staged_entry), writer.stat(final)
            assert entry is not None
            if entry.kind == "folder" and existing is not None and existing.kind == "folder":
                self._merge_into(staged_entry, final, on_replace)
                continue
            if existing is not None:
                on_replace(final)
                self._remove_tree(final)
            if entry.kind == "folder":
                # a folder moves to another parent as a new folder with the same attributes
                writer.make_folders(final)
                self._merge_into(staged_entry, final, on_replace)
                writer.set_attributes(
                    final,
                    Attributes(
                        mode=entry.mode, uid=entry.uid, gid=entry.gid, mtime_ns=entry.mtime_ns
                    ),
                )
            else:
                writer.rename(staged_entry, final)
        writer.remove_folder(stage)

    def _remove_tree(self, path: PurePosixPath) -> None:
        entry = self.writer.stat(path)
        if entry is None:
            return
        if entry.kind == "folder":
            for name in self.writer.list_folder(path):
                self._remove_tree(path / name)
            self.writer.remove_folder(path)
        else:
            self.writer.remove(path)


class OfflineExtractor(MemberWriter):
    """Archive members written under ``stage`` (a folder of the partition) with the checks
    of ``extractor.Extractor``: names inside the folder, links resolved inside it (a link
    leading out of it is refused, as is a path through one), no member past its size."""

    def __init__(self, writer: QueuedWriter, stage: PurePosixPath, *, source: str) -> None:
        super().__init__(source=source, on_progress=no_progress, where=f"/data/{stage}")
        self.writer = writer
        self.stage = stage
        self.free_inodes_at_start = writer.free_space().free_inodes
        self._files: set[tuple[str, ...]] = set()
        self._dir_times: dict[tuple[str, ...], float] = {}
        self._links: dict[str, tuple[str, ...]] = {}
        # folders known to be there (made or seen here): a folder never turns into a link
        # or a file while the archive is extracted, so they are not looked at again
        self._folders: set[tuple[str, ...]] = {()}

    def _at(self, parts: tuple[str, ...]) -> PurePosixPath:
        return self.stage.joinpath(*parts)

    def _resolve(self, parts: tuple[str, ...]) -> tuple[str, ...] | None:
        """``parts`` with the links made inside the folder followed (as realpath does), or
        None when it leads outside of it."""
        pending, hops, walking = list(parts), 0, True
        resolved: list[str] = []
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    return None
                resolved.pop()
                continue
            if (*resolved, part) in self._folders:
                resolved.append(part)
                continue
            entry = self.writer.stat(self._at((*resolved, part))) if walking else None
            if entry is not None and entry.kind == "symlink":
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    return None
                link = self.writer.read_link(self._at((*resolved, part)))
                if link.startswith("/"):
                    return None
                pending[:0] = link.split("/")
                continue
            resolved.append(part)
            walking = entry is not None and entry.kind == "folder"
        return tuple(resolved)

    def _make_dirs(self, name: str, parts: tuple[str, ...]) -> None:
        for depth in range(1, len(parts) + 1):
            if parts[:depth] in self._folders:
                continue
            entry = self.writer.stat(self._at(parts[:depth]))
            if entry is None:
                self.writer.make_folders(self._at(parts[:depth]))
                self.directories_created += 1
            elif entry.kind != "folder":
                where = "/".join(parts[:depth])
                raise self.error(name, f"{where} exists and is not a directory")
            self._folders.add(parts[:depth])

    def _target(self, name: str, relative: PurePosixPath) -> tuple[str, ...]:
        parent = self._resolve(relative.parts[:-1])
        if parent is None:
            raise self.error(name, "path goes through a link that leads outside the destination")
        self._make_dirs(name, parent)
        target = (*parent, relative.name)
        existing = self.writer.stat(self._at(target))
        if existing is not None and existing.kind == "folder":
            raise self.error(name, "would replace a directory")
        if existing is not None:
            self.writer.remove(self._at(target))
        return target

    def room(self) -> tuple[int, int] | None:
        free = self.writer.free_space()
        return free.free_bytes, free.free_inodes

    @contextmanager
    def writing(self) -> Iterator[None]:
        try:
            yield
        except Ext2fsError as exc:
            if not exc.no_space:
                raise
            inodes = exc.code == ET_INODE_ALLOC_FAIL or self.writer.free_space().free_inodes == 0
            reason = "no inodes left" if inodes else "No space left on device"
            raise self.no_room(reason, inodes=inodes) from exc

    def add_directory(self, name: str, mode: int | None, mtime: float | None) -> None:
        relative = self.relative_path(name)
        resolved = self._resolve(relative.parts if relative else ())
        if resolved is None:
            raise self.error(name, "path goes through a link that leads outside the destination")
        self._make_dirs(name, resolved)
        if resolved:
            if mode is not None:
                self.writer.set_attributes(self._at(resolved), Attributes(mode=safe_dir_mode(mode)))
            if mtime is not None:
                self._dir_times[resolved] = mtime

    def add_file(
        self,
        name: str,
        content: IO[bytes],
        *,
        size: int,
        mode: int | None,
        mtime: float | None,
    ) -> None:
        target = self._target(name, self.file_path(name))
        file_mode = safe_file_mode(0o644 if mode is None else mode)
        with self.writer.open_file(self._at(target), mode=file_mode) as output:
            self.files_created += 1
            self.copy_member(name, content, size, output.write)
            output.commit(Attributes(mtime_ns=None if mtime is None else _ns(mtime)))
        self._files.add(target)

    def add_symlink(self, name: str, link_target: str, mtime: float | None) -> None:
        target = self._target(name, self.link_path(name, link_target))
        if self._resolve((*target[:-1], *link_target.split("/"))) is None:
            raise self.error(name, f"symlink target {link_target!r} is outside the destination")
        attributes = Attributes(mtime_ns=None if mtime is None else _ns(mtime))
        self.writer.symlink(self._at(target), link_target, attributes)
        self._links[name] = target
        self.files_created += 1

    def add_hardlink(self, name: str, link_target: str) -> None:
        relative = self.link_path(name)
        target_relative = self.hard_link_source(name, link_target)
        existing = self._resolve(target_relative.parts)
        if existing is None:
            raise self.error(name, f"hard link target {link_target!r} is outside the destination")
        entry = self.writer.stat(self._at(existing)) if existing in self._files else None
        if entry is None or entry.kind != "file":
            raise self.error(
                name, f"hard link target {link_target!r} is not a file extracted from this archive"
            )
        target = self._target(name, relative)
        self.writer.hard_link(self._at(existing), self._at(target))
        self.files_created += 1

    def finish(self) -> None:
        for name, target in self._links.items():
            if self._resolve(target) is None:
                link = self.writer.read_link(self._at(target))
                raise self.error(
                    name,
                    f"symlink target {link!r} leads outside the destination once the "
                    "whole archive is in",
                )
        for parts in sorted(self._dir_times, key=len, reverse=True):
            mtime_ns = _ns(self._dir_times[parts])
            self.writer.set_attributes(self._at(parts), Attributes(mtime_ns=mtime_ns))

"""The data filesystem of a built image, read entry by entry, and its superblocks.

The tree is read through a read-only loop mount (root; ``losetup --offset --sizelimit``, as
this kernel scans no partitions) so that every field is the kernel's own reading: type,
mode, owner, size, mtime, link target, link count, and the sha256 of each file's bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from image_creator.system.partitions import Partition
from image_creator.system.run import run


@dataclass(frozen=True)
class Entry:
    kind: str  # file, folder, symlink
    mode: int
    uid: int
    gid: int
    size: int | None  # folders: None (their size follows how entries were added)
    mtime_ns: int
    target: str | None
    links: int
    sha256: str | None


@contextlib.contextmanager
def mounted_read_only(image: Path, partition: Partition) -> Iterator[Path]:
    device = run(
        [
            "losetup",
            "--find",
            "--show",
            "--read-only",
            "--offset",
            str(partition.start_bytes),
            "--sizelimit",
            str(partition.size_bytes),
            image,
        ]
    ).stdout.strip()
    try:
        with tempfile.TemporaryDirectory(prefix="tree-") as folder:
            run(["mount", "-t", "ext4", "-o", "ro,noload", device, folder])
            try:
                yield Path(folder)
            finally:
                run(["umount", folder])
    finally:
        run(["losetup", "-d", device])


def read_tree(root: Path) -> dict[str, Entry]:
    """Every entry under ``root`` (lost+found aside), links not followed."""
    found: dict[str, Entry] = {}
    for folder, folders, files in os.walk(root):
        for name in [*folders, *files]:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if relative == "lost+found" or relative.startswith("lost+found/"):
                continue
            info = path.lstat()
            kind = (
                "symlink"
                if stat.S_ISLNK(info.st_mode)
                else "folder"
                if stat.S_ISDIR(info.st_mode)
                else "file"
                if stat.S_ISREG(info.st_mode)
                else "other"
            )
            found[relative] = Entry(
                kind=kind,
                mode=stat.S_IMODE(info.st_mode),
                uid=info.st_uid,
                gid=info.st_gid,
                size=None if kind == "folder" else info.st_size,
                mtime_ns=info.st_mtime_ns,
                target=os.readlink(path) if kind == "symlink" else None,
                links=info.st_nlink,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else None,
            )
    return found


def superblock(device: str, *extra: str) -> dict[str, str]:
    """``dumpe2fs -h`` (with ``extra`` options, e.g. ``-o superblock=N``) as a dict."""
    fields: dict[str, str] = {}
    for line in run(["dumpe2fs", "-h", *extra, device]).stdout.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields[key.strip()] = value.strip()
    return fields


def backup_superblocks(device: str) -> list[int]:
    """The blocks that hold a backup superblock (``dumpe2fs``'s group listing)."""
    blocks = []
    for line in run(["dumpe2fs", device]).stdout.splitlines():
        if "Backup superblock at " in line:
            blocks.append(int(line.split("Backup superblock at ")[1].split(",")[0]))
    return blocks

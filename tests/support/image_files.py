"""Look inside a built image from the outside, without root or mounts.

The data partition is read with debugfs (``IMAGE?offset=N``), the boot partition with mtools.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from image_creator.system.partitions import PartitionTable, read_partition_table
from image_creator.system.run import run
from tests.support.fat import read_fat_file


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    table: PartitionTable

    @classmethod
    def open(cls, path: Path) -> BuiltImage:
        return cls(path=path, table=read_partition_table(path))

    def offset(self, number: int) -> int:
        partition = self.table.partition(number)
        assert partition is not None, f"no partition {number}"
        return partition.start_bytes

    def data_device(self) -> str:
        return f"{self.path}?offset={self.offset(3)}"

    def fsck_data(self) -> str:
        """``e2fsck -fn`` of the data partition; raises unless clean."""
        return run(["e2fsck", "-fn", self.data_device()]).stdout

    def dump_data(self, dest: Path) -> Path:
        """The whole data partition copied to ``dest`` (debugfs rdump)."""
        dest.mkdir(parents=True, exist_ok=True)
        run(["debugfs", "-R", f"rdump / {dest}", self.data_device()])
        return dest

    def boot_file(self, name: str) -> bytes:
        return read_fat_file(self.path, self.offset(1), name)

    def partition_bytes_digest(self, number: int) -> str:
        partition = self.table.partition(number)
        assert partition is not None
        digest = hashlib.sha256()
        with self.path.open("rb") as image:
            image.seek(partition.start_bytes)
            remaining = partition.size_bytes
            while remaining:
                chunk = image.read(min(remaining, 1 << 20))
                assert chunk, "image shorter than its partition table says"
                digest.update(chunk)
                remaining -= len(chunk)
        return digest.hexdigest()


def tree_digests(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under ``root``; symlinks as ``-> target``."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith("lost+found"):
            continue
        if path.is_symlink():
            found[relative] = f"-> {path.readlink()}"
        elif path.is_file():
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found

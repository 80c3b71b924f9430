"""Partition tables of image files: read with sfdisk, or parsed from the MBR bytes alone."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_creator.errors import BuildError, SourceError
from image_creator.system.run import run
from image_creator.units import SECTOR_SIZE

logger = logging.getLogger(__name__)

DATA_PARTITION_NUMBER = 3

_MBR_DISK_ID_OFFSET = 0x1B8
_MBR_ENTRIES_OFFSET = 0x1BE
_MBR_ENTRY_SIZE = 16
_MBR_PRIMARY_ENTRIES = 4
_MBR_SIGNATURE_OFFSET = 0x1FE
_MBR_SIGNATURE = b"\x55\xaa"
_MBR_TYPE_EMPTY = 0x00
_MBR_TYPE_GPT_PROTECTIVE = 0xEE


@dataclass(frozen=True)
class Partition:
    """One partition; ``type`` as sfdisk spells it (MBR: lowercase hex, ``"c"``, ``"83"``)."""

    number: int
    start_bytes: int
    size_bytes: int
    type: str

    @property
    def end_bytes(self) -> int:
        """Offset of the first byte after the partition."""
        return self.start_bytes + self.size_bytes


@dataclass(frozen=True)
class PartitionTable:
    """A disk label; ``disk_id`` as sfdisk prints it (MBR: ``"0x1234abcd"``)."""

    label: str
    disk_id: str
    sector_size: int
    partitions: tuple[Partition, ...]

    def partition(self, number: int) -> Partition | None:
        return next((part for part in self.partitions if part.number == number), None)


def read_partition_table(image: Path) -> PartitionTable:
    """The partition table of an image file (or block device), as sfdisk reads it."""
    result = run(["sfdisk", "--json", image])
    try:
        document = json.loads(result.stdout)
        return _table_from_sfdisk(document["partitiontable"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"{image}: unexpected sfdisk --json output: {exc}") from exc


def _table_from_sfdisk(table: dict[str, Any]) -> PartitionTable:
    sector_size = int(table["sectorsize"])
    partitions = tuple(
        Partition(
            number=_partition_number(str(entry["node"])),
            start_bytes=int(entry["start"]) * sector_size,
            size_bytes=int(entry["size"]) * sector_size,
            type=str(entry["type"]),
        )
        for entry in table.get("partitions", [])
    )
    return PartitionTable(
        label=str(table["label"]),
        disk_id=str(table["id"]),
        sector_size=sector_size,
        partitions=partitions,
    )


def _partition_number(node: str) -> int:
    # sfdisk names partitions after the device: "disk.img3", "/dev/loop0p3", "/dev/sda3"
    match = re.search(r"(\d+)$", node)
    if match is None:
        raise ValueError(f"no partition number in node {node!r}")
    return int(match.group(1))


def parse_mbr(first_sectors: bytes) -> PartitionTable:
    """The MBR partition table in the first 512 bytes of an image, read without any tool.

    Only the four primary entries are read (Raspberry Pi images use nothing else), so sizes of
    a remote image can be computed from its first sector. Raises SourceError (such an image
    cannot be a base) when the bytes are not an MBR, or are the protective MBR of a GPT disk.
    """
    if len(first_sectors) < SECTOR_SIZE:
        raise SourceError(
            f"not an MBR: {len(first_sectors)} bytes given, the MBR needs {SECTOR_SIZE}"
        )
    if first_sectors[_MBR_SIGNATURE_OFFSET : _MBR_SIGNATURE_OFFSET + 2] != _MBR_SIGNATURE:
        raise SourceError("not an MBR: boot signature 0x55AA missing at offset 0x1FE")

    partitions: list[Partition] = []
    for index in range(_MBR_PRIMARY_ENTRIES):
        offset = _MBR_ENTRIES_OFFSET + index * _MBR_ENTRY_SIZE
        entry = first_sectors[offset : offset + _MBR_ENTRY_SIZE]
        type_byte = entry[4]
        first_lba = int.from_bytes(entry[8:12], "little")
        sector_count = int.from_bytes(entry[12:16], "little")
        if type_byte == _MBR_TYPE_GPT_PROTECTIVE:
            raise SourceError("not an MBR disk: protective MBR of a GPT disk")
        # sfdisk lists neither empty slots nor zero-sized entries; do the same so both agree
        if type_byte == _MBR_TYPE_EMPTY or sector_count == 0:
            continue
        partitions.append(
            Partition(
                number=index + 1,
                start_bytes=first_lba * SECTOR_SIZE,
                size_bytes=sector_count * SECTOR_SIZE,
                type=f"{type_byte:x}",
            )
        )

    disk_id = int.from_bytes(first_sectors[_MBR_DISK_ID_OFFSET : _MBR_DISK_ID_OFFSET + 4], "little")
    return PartitionTable(
        label="dos",
        disk_id=f"0x{disk_id:08x}",
        sector_size=SECTOR_SIZE,
        partitions=tuple(partitions),
    )


def data_partition(table: PartitionTable) -> Partition:
    """Partition 3, the data partition; it must be the last one on the disk so it can grow."""
    data = table.partition(DATA_PARTITION_NUMBER)
    if data is None:
        raise BuildError(
            f"no data partition: the image has no partition {DATA_PARTITION_NUMBER} "
            f"(found {_describe(table.partitions)})"
        )
    after = [
        part for part in table.partitions if part != data and part.end_bytes > data.start_bytes
    ]
    if after:
        raise BuildError(
            f"data partition {DATA_PARTITION_NUMBER} is not the last one on the disk: "
            f"{_describe(after)} lies after its start, so it cannot be grown"
        )
    return data


def _describe(partitions: Sequence[Partition]) -> str:
    if not partitions:
        return "none"
    return ", ".join(f"partition {part.number} at byte {part.start_bytes}" for part in partitions)

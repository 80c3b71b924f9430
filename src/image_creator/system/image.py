"""Growing an image file and its data partition, on the file itself (no loop device)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import BinaryIO

from image_creator.errors import BuildError, OutputError
from image_creator.system.partitions import (
    DATA_PARTITION_NUMBER,
    Partition,
    PartitionTable,
    data_partition,
    read_partition_table,
)
from image_creator.system.run import run
from image_creator.units import SECTOR_SIZE, format_size

logger = logging.getLogger(__name__)


def grow_image_file(path: Path, size: int) -> None:
    """Make the file ``size`` bytes long; the new space is a hole (sparse), never written.

    Refuses to shrink (that would cut partitions) and sizes that are not whole sectors (the
    data partition would not be able to end on the file's last byte).
    """
    current = path.stat().st_size
    if size < current:
        raise BuildError(
            f"{path}: cannot grow to {size} bytes: the image is already {current} bytes "
            "and shrinking it would cut its partitions"
        )
    if size % SECTOR_SIZE:
        raise BuildError(f"{path}: size {size} is not a multiple of {SECTOR_SIZE}-byte sectors")
    if size == current:
        return
    logger.debug("growing %s from %d to %d bytes", path, current, size)
    with path.open("r+b") as image:
        set_length(image, size, path)


def set_length(file: BinaryIO, size: int, path: Path) -> None:
    """Truncate (or extend, sparsely) ``file`` at ``path``; a size over the largest file its
    filesystem can hold (EFBIG) is output.size's fault."""
    try:
        file.truncate(size)
    except OSError as exc:
        if exc.errno != errno.EFBIG:
            raise
        raise OutputError(
            f"output.size: {format_size(size)} ({size} bytes) is more than the largest file "
            f"the filesystem of {path.parent} can hold (File too large)"
        ) from exc


def grow_data_partition(image: Path) -> Partition:
    """Extend the data partition (3) to the last sector of the image file; return it, grown.

    Only the partition entry changes: its start, the other entries and the disk identifier
    are kept (checked afterwards), and the filesystem inside is left for resize2fs.
    """
    before = read_partition_table(image)
    data = data_partition(before)
    if data.end_bytes == _last_full_sector_end(image, before.sector_size):
        logger.debug("data partition of %s already ends at the end of the file", image)
        return data
    run(
        [
            "sfdisk",
            "--no-reread",
            "--no-tell-kernel",
            # sfdisk must not erase signatures: the data filesystem lives on in the grown entry
            "--wipe",
            "never",
            "--wipe-partitions",
            "never",
            "-N",
            str(DATA_PARTITION_NUMBER),
            image,
        ],
        # keep the start, take every sector up to the end of the file
        input_text=", +\n",
    )
    after = read_partition_table(image)
    grown = _verify_grown(image, before, after)
    logger.debug(
        "data partition of %s grown from %d to %d bytes", image, data.size_bytes, grown.size_bytes
    )
    return grown


def _verify_grown(image: Path, before: PartitionTable, after: PartitionTable) -> Partition:
    """Check that sfdisk changed nothing but the size of the data partition."""
    grown = after.partition(DATA_PARTITION_NUMBER)
    old = before.partition(DATA_PARTITION_NUMBER)
    if grown is None or old is None:
        raise BuildError(f"{image}: the data partition disappeared while growing it")
    problems: list[str] = []
    if after.disk_id != before.disk_id:
        problems.append(f"disk identifier changed from {before.disk_id} to {after.disk_id}")
    others_before = [p for p in before.partitions if p.number != DATA_PARTITION_NUMBER]
    others_after = [p for p in after.partitions if p.number != DATA_PARTITION_NUMBER]
    if others_after != others_before:
        problems.append("other partition entries changed")
    if grown.start_bytes != old.start_bytes:
        problems.append(
            f"the data partition's start moved from {old.start_bytes} to {grown.start_bytes}"
        )
    last_full_sector_end = _last_full_sector_end(image, after.sector_size)
    if grown.end_bytes != last_full_sector_end:
        problems.append(
            f"the data partition ends at byte {grown.end_bytes}, "
            f"not at the end of the file ({last_full_sector_end})"
        )
    if problems:
        raise BuildError(f"{image}: growing the data partition went wrong: {'; '.join(problems)}")
    return grown


def _last_full_sector_end(image: Path, sector_size: int) -> int:
    file_size = image.stat().st_size
    return file_size - file_size % sector_size

"""How large the image must be, and whether the disks involved can take it."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from image_creator.config.units import format_size, round_up
from image_creator.errors import HostError, OutputError
from image_creator.steps.sources import Inventory
from image_creator.system.partitions import DATA_PARTITION_NUMBER

# ext4 needs room for inodes, bitmaps, the journal and reserved blocks: 10% of the content
# (what the reference tool keeps) plus a fixed allowance for small images.
EXT4_MARGIN_RATIO = 0.10
EXT4_FIXED_OVERHEAD = 32 * 2**20
FS_BLOCK = 4096
# Sizes chosen with `auto` are rounded up to whole 4 MiB, a multiple of SD-card erase blocks.
AUTO_ALIGNMENT = 4 * 2**20


@dataclass(frozen=True)
class SizePlan:
    before_data: int  # bytes of the disk before the data partition
    existing_data: int  # the base image's data partition, kept as is
    content: int  # files and images, rounded to filesystem blocks
    minimum: int  # smallest image that fits it all
    output: int  # the size the image will have
    base_image: int  # size of the uncompressed base image, when known

    @property
    def added(self) -> int:
        """Bytes the build adds to the base image file."""
        return self.output - self.base_image


def plan_sizes(inventory: Inventory, *, requested: int | None, max_size: int | None) -> SizePlan:
    base = inventory.base
    table = base.table
    data = table.partition(DATA_PARTITION_NUMBER) if table else None
    if data is not None and table is not None:
        before_data = data.start_bytes
        existing = data.size_bytes
        base_image = max(part.end_bytes for part in table.partitions)
    else:
        before_data = base.image.root_size or 0
        existing = 0
        base_image = before_data
    content = sum(round_up(source.expanded_size, FS_BLOCK) for source in inventory.files)
    content += sum(
        round_up(source.filesize, FS_BLOCK) + source.fullsize for source in inventory.images
    )
    needed = before_data + existing + math.ceil(content * (1 + EXT4_MARGIN_RATIO))
    minimum = round_up(max(needed + EXT4_FIXED_OVERHEAD, base_image), AUTO_ALIGNMENT)
    if requested is not None:
        if requested < minimum:
            raise OutputError(
                f"output.size: {format_size(requested)} ({requested} bytes) is too small: "
                f"the base image and content need at least {format_size(minimum)} "
                f"({minimum} bytes)"
            )
        output = requested
    else:
        output = minimum
    if max_size is not None and output > max_size:
        raise OutputError(
            f"--max-size: the image would be {format_size(output)} ({output} bytes), "
            f"over the limit of {format_size(max_size)}"
        )
    return SizePlan(
        before_data=before_data,
        existing_data=existing,
        content=content,
        minimum=minimum,
        output=output,
        base_image=base_image,
    )


def space_shortages(needs: Mapping[Path, int]) -> list[str]:
    """Volumes without room for what is to be written there; paths on one volume add up."""
    by_volume: dict[int, tuple[list[Path], int]] = {}
    for path, amount in needs.items():
        existing = _existing_parent(path)
        device = existing.stat().st_dev
        paths, total = by_volume.get(device, ([], 0))
        by_volume[device] = ([*paths, path], total + amount)
    shortages = []
    for paths, total in by_volume.values():
        stats = os.statvfs(_existing_parent(paths[0]))
        free = stats.f_bavail * stats.f_frsize
        if free < total:
            names = ", ".join(str(path) for path in paths)
            shortages.append(
                f"not enough free space for {names}: needs {format_size(total)}, "
                f"has {format_size(free)}"
            )
    return shortages


def ensure_space(needs: Mapping[Path, int]) -> None:
    shortages = space_shortages(needs)
    if shortages:
        raise HostError("; ".join(shortages))


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path

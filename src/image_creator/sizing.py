"""How large the image must be, and whether the disks involved can take it.

The image is the space before the data partition plus a data filesystem just large enough
for what the base already holds there and for the content (``content_needs.py``),
once ext4's own needs are counted at that size (``system/ext4_geometry.py``): that is the
``auto`` size. It is exact when the base's data filesystem was read: at build time always
(right after the base image is fetched, before anything grows), at check time when the base
is not compressed (a ranged read of its superblock). For a compressed base, ``--check``
gives an upper bound under stated assumptions, and the build decides the exact size.

Root-reserved blocks (``mke2fs -m``, 1% on the official base) stay free: the build writes
as root and could fill them, but the device's services would then find a full partition.
"""

from __future__ import annotations

import logging
from pathlib import Path

from image_creator.content_needs import ContentNeeds, content_needs
from image_creator.errors import (
    BuildError,
    CommandError,
    OutputError,
    tail_lines,
)
from image_creator.plan import Inventory, SizePlan
from image_creator.system.ext4 import check_filesystem
from image_creator.system.ext4_geometry import (
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    Ext4Geometry,
    NotExt4Error,
    assumed_geometry,
    blocks_for_groups,
    grown,
    parse_superblock,
)
from image_creator.system.loop import attached_partition
from image_creator.system.partitions import (
    DATA_PARTITION_NUMBER,
    PartitionTable,
    data_partition,
    read_partition_table,
)
from image_creator.ui.base import Reporter
from image_creator.units import SECTOR_SIZE, format_size, round_up

logger = logging.getLogger(__name__)

FS_BLOCK = 4096
# `auto` sizes end on a whole MiB: the grid partitions start on, so the data partition ends
# on it too and holds whole 4 KiB blocks. Nothing gains from more: the end of an image is not
# where flash erase blocks matter (partition starts are), and the device grows the data
# partition to the card's end on first boot.
AUTO_ALIGNMENT = 2**20
# When the base's partition table cannot be read (``base.root_size``), its data partition is
# taken as the official base's: 256 MiB, full.
ASSUMED_DATA_PARTITION = 256 * 2**20
# offspot-config's minimum: its root size, the content and 10% of the content, in sectors.
OFFSPOT_CONFIG_MARGIN = 0.1
_MAX_STEPS = 10_000


def plan_sizes(
    inventory: Inventory,
    *,
    requested: int | None,
    max_size: int | None,
    filesystem: Ext4Geometry | None = None,
    table: PartitionTable | None = None,
) -> SizePlan:
    """The image size for this content, checked against ``output.size`` and ``--max-size``.

    ``filesystem`` and ``table`` are the base's: as measured at build time, or as the check
    read them at its URL (without them, the table of the inventory and an assumed geometry).
    """
    base = inventory.base
    table = table or base.table
    data = table.partition(DATA_PARTITION_NUMBER) if table else None
    if data is not None and table is not None:
        before_data = data.start_bytes
        existing = data.size_bytes
        base_image = max(part.end_bytes for part in table.partitions)
        geometry = filesystem or assumed_geometry(existing)
    else:
        before_data = base.image.root_size or 0
        existing = 0
        base_image = before_data
        geometry = filesystem or assumed_geometry(ASSUMED_DATA_PARTITION)
        base_image = max(base_image, before_data + geometry.block_count * geometry.block_size)
    needs = content_needs(inventory, geometry.block_size)
    floor = round_up(base_image, SECTOR_SIZE)
    minimum, inode_bound = smallest_image(geometry, needs, before_data=before_data, floor=floor)
    if geometry.measured:
        lowest = minimum
    else:  # what fits even if the base's data partition were empty and ext4 took nothing
        lowest = max(floor, before_data + needs.blocks * geometry.block_size)
    if requested is not None:
        fits = requested >= minimum or (not geometry.measured and requested >= lowest)
        if not fits:
            raise OutputError(
                f"output.size: {format_size(requested)} ({requested} bytes) is too small: "
                f"the base image and content need at least {format_size(lowest)} "
                f"({lowest} bytes)"
            )
        output = requested
    else:
        output = minimum
    if max_size is not None:
        over = output if geometry.measured or requested is not None else lowest
        if over > max_size:
            least = "" if geometry.measured or requested is not None else "at least "
            raise OutputError(
                f"--max-size: the image would be {least}{format_size(over)} ({over} bytes), "
                f"over the limit of {format_size(max_size)}"
            )
    return SizePlan(
        before_data=before_data,
        existing_data=existing,
        content=_content_bytes(inventory),
        minimum=minimum,
        output=output,
        base_image=base_image,
        exact=geometry.measured,
        data_blocks=needs.blocks,
        inodes=needs.inodes,
        inode_bound=inode_bound,
        offspot_config_minimum=offspot_config_minimum(inventory),
    )


def smallest_image(
    geometry: Ext4Geometry, needs: ContentNeeds, *, before_data: int, floor: int
) -> tuple[int, bool]:
    """The smallest aligned image (at least ``floor``) whose grown data filesystem has the
    blocks and inodes ``needs`` asks for; and whether the inodes were what set it."""
    block = geometry.block_size
    by_blocks = before_data + (geometry.used_blocks + needs.blocks) * block
    groups = -(-(geometry.used_inodes + needs.inodes) // geometry.inodes_per_group)
    by_inodes = before_data + blocks_for_groups(geometry, groups) * block
    size = round_up(max(floor, by_blocks, by_inodes), AUTO_ALIGNMENT)
    for _ in range(_MAX_STEPS):
        fs = grown(geometry, size - before_data)
        missing_blocks = needs.blocks - fs.available_blocks
        missing_inodes = needs.inodes - fs.free_inodes
        if missing_blocks <= 0 and missing_inodes <= 0:
            return size, by_inodes > max(floor, by_blocks)
        step = max(missing_blocks, 0) * block
        if missing_inodes > 0:
            extra_groups = -(-missing_inodes // geometry.inodes_per_group)
            step = max(step, extra_groups * geometry.blocks_per_group * block)
        size = round_up(size + max(step, 1), AUTO_ALIGNMENT)
    raise BuildError("no image size fits the content: the size model does not converge")


def show_sizes(
    sizes: SizePlan, reporter: Reporter, *, requested: int | None, max_size: int | None = None
) -> None:
    how = "requested" if requested is not None else "auto"
    if sizes.exact:
        reporter.info(
            f"image size: {format_size(sizes.output)} ({sizes.output} bytes, {how}); "
            f"minimum {format_size(sizes.minimum)}; content {format_size(sizes.content)}: "
            f"{sizes.data_blocks} filesystem blocks and {sizes.inodes} inodes"
            + ("; the inode count sets the minimum" if sizes.inode_bound else "")
        )
    else:
        reporter.info(
            f"image size: at most {format_size(sizes.output)} ({sizes.output} bytes, {how}); "
            f"content {format_size(sizes.content)}: an upper bound, the exact size is "
            "computed from the base's data filesystem once the base image is fetched"
        )
        if max_size is not None and requested is None and sizes.output > max_size:
            reporter.warning(
                f"--max-size: the image may be over the limit of {format_size(max_size)}; "
                "the build will tell"
            )
    if sizes.offspot_config_minimum is not None:
        difference = sizes.minimum - sizes.offspot_config_minimum
        reporter.info(
            f"offspot-config's minimum: {format_size(sizes.offspot_config_minimum)} "
            f"({sizes.offspot_config_minimum} bytes); ours is "
            f"{'+' if difference >= 0 else '-'}{format_size(abs(difference))}"
        )


def offspot_config_minimum(inventory: Inventory) -> int | None:
    """offspot-config's minimum image size for this content, when ``base.root_size`` is
    given: what the ordering service picks the SD card by."""
    root_size = inventory.base.image.root_size
    if root_size is None:
        return None
    raw = sum(image.filesize + image.fullsize for image in inventory.images)
    raw += sum(source.expanded_size for source in inventory.files)
    return round_up(root_size + raw + int(OFFSPOT_CONFIG_MARGIN * raw), SECTOR_SIZE)


def _content_bytes(inventory: Inventory) -> int:
    content = sum(round_up(source.expanded_size, FS_BLOCK) for source in inventory.files)
    return content + sum(
        round_up(source.filesize, FS_BLOCK) + source.fullsize for source in inventory.images
    )


def measure_data_filesystem(
    image: Path, *, rootless: bool = False
) -> tuple[PartitionTable, Ext4Geometry]:
    """The fetched base image's partition table and data filesystem, checked first so that
    the superblock's counts are the real ones (``rootless``: through the image file)."""
    table = read_partition_table(image)
    partition = data_partition(table)
    if rootless:
        _repair_base(Path(f"{image}?offset={partition.start_bytes}"))
        return table, read_superblock(image, offset=partition.start_bytes)
    with attached_partition(image, partition) as device:
        _repair_base(device)
        return table, read_superblock(device)


def _repair_base(device: Path) -> None:
    try:
        check_filesystem(device, fix=True)
    except CommandError as exc:
        found = tail_lines(exc.stderr) or tail_lines(exc.stdout)
        raise BuildError(
            "the base image's data filesystem (partition 3) is damaged beyond what e2fsck "
            f"repairs (e2fsck exit {exc.returncode}): {found}",
            hint="check the base image's source and checksum",
        ) from exc


def read_superblock(device: Path, *, offset: int = 0) -> Ext4Geometry:
    with device.open("rb") as handle:
        handle.seek(offset + SUPERBLOCK_OFFSET)
        raw = handle.read(SUPERBLOCK_SIZE)
    try:
        return parse_superblock(raw)
    except NotExt4Error as exc:
        raise BuildError(f"{device}: the data partition holds no ext4 filesystem: {exc}") from exc


def ensure_room(device: Path, plan: SizePlan, *, offset: int = 0) -> None:
    """After resizing: the filesystem has the blocks and inodes planned, or the build stops
    before writing (the size model would be wrong)."""
    geometry = read_superblock(device, offset=offset)
    fs = grown(geometry, geometry.block_count * geometry.block_size)
    if fs.available_blocks < plan.data_blocks or fs.free_inodes < plan.inodes:
        raise BuildError(
            f"{device}: the resized data filesystem has {fs.available_blocks} blocks and "
            f"{fs.free_inodes} inodes available, the content needs {plan.data_blocks} and "
            f"{plan.inodes}: the size model is wrong for this base image"
        )

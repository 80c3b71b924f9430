"""The image's size at check time: planned (sizing.py) from what the checks found, exact when
the base's data filesystem can be read with one ranged request, an upper bound otherwise."""

from __future__ import annotations

import logging

from image_creator.context import Context
from image_creator.errors import SourceError
from image_creator.fetch.client import HttpClient
from image_creator.plan import BaseSource, Inventory, SizePlan
from image_creator.sizing import plan_sizes, show_sizes
from image_creator.system.ext4_geometry import (
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    Ext4Geometry,
    NotExt4Error,
    parse_superblock,
)
from image_creator.system.partitions import DATA_PARTITION_NUMBER

logger = logging.getLogger(__name__)


def check_sizes(ctx: Context, inventory: Inventory) -> SizePlan:
    """The image's size for this content (an upper bound when the base is compressed), checked
    against ``output.size`` and ``--max-size``."""
    sizes = plan_sizes(
        inventory,
        requested=ctx.config.output_size,
        max_size=ctx.options.max_size,
        filesystem=read_data_filesystem(inventory.base, ctx.http),
    )
    show_sizes(sizes, ctx.reporter, requested=ctx.config.output_size, max_size=ctx.options.max_size)
    return sizes


def read_data_filesystem(base: BaseSource, client: HttpClient) -> Ext4Geometry | None:
    """The data filesystem's superblock, read with one ranged request; None when the base
    is compressed (the partition lies deep in the stream), has no data partition, or the
    bytes are not ext4."""
    data = base.table.partition(DATA_PARTITION_NUMBER) if base.table else None
    if data is None or base.image.is_xz:
        return None
    data_start = data.start_bytes
    try:
        raw = client.read_range(base.image.url, data_start + SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE)
        return parse_superblock(raw)
    except (SourceError, NotExt4Error) as exc:
        logger.debug("%s: data filesystem not read: %s", base.image.url, exc)
        return None

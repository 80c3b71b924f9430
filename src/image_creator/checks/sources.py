"""Every source of the config checked, and what was learnt of each told, downloading no
content (the inspection itself is in steps/sources.py)."""

from __future__ import annotations

from image_creator.config.units import format_size
from image_creator.context import Context
from image_creator.steps.sources import Inventory, SizeFrom, inspect_sources
from image_creator.ui.base import Reporter


def check_sources(ctx: Context) -> Inventory:
    inventory = inspect_sources(ctx.config, concurrency=ctx.options.concurrency, cache=ctx.cache)
    report_sources(inventory, ctx.reporter)
    return inventory


def report_sources(inventory: Inventory, reporter: Reporter) -> None:
    base = inventory.base
    download = format_size(base.download_size) if base.download_size is not None else "size unknown"
    reporter.info(f"base image {base.image.url}: {download}")
    for warning in base.warnings:
        reporter.warning(warning)
    for image in inventory.images:
        reporter.info(
            f"OCI image {image.image.ident}: {format_size(image.filesize)} tar, "
            f"{format_size(image.fullsize)} extracted (sizes from {image.sizes_from})"
        )
    for source in inventory.files:
        entry = source.entry
        origin = entry.url if entry.url is not None else "inline content"
        sized = format_size(source.expanded_size)
        if entry.via.is_archive and source.download_size is not None:
            sized = f"{format_size(source.download_size)} {entry.via.value}, {sized} expanded"
        if entry.via.is_archive or source.size_from is SizeFrom.DECLARED:
            sized += f" (size from {source.size_from}"
            sized += f"; {source.size_note})" if source.size_note else ")"
        reporter.info(f"{entry.to} <- {origin}: {sized}")
        for warning in source.warnings:
            reporter.warning(warning)

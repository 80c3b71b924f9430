"""Room on every volume a build writes to: OUTPUT's, the build folder's, the cache's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from image_creator.checks.settle import settle
from image_creator.config.model import Pull, Via
from image_creator.context import Context
from image_creator.options import Options
from image_creator.plan import CacheForecast, Inventory, SizePlan
from image_creator.sink import Backend
from image_creator.units import format_size
from image_creator.workspace import default_build_dir


def check_space(
    ctx: Context,
    inventory: Inventory,
    sizes: SizePlan,
    forecast: CacheForecast | None,
    backend: Backend,
) -> None:
    """Whether the disks the build writes to (OUTPUT's, the cache's, the build folder's)
    have room for what it will write there."""
    rootless = backend is Backend.ROOTLESS
    needs = space_needs(ctx.options, inventory, sizes, forecast, rootless=rootless)
    settle(ctx, space_shortages(needs))


def space_needs(
    options: Options,
    inventory: Inventory,
    sizes: SizePlan,
    cache: CacheForecast | None,
    *,
    rootless: bool = False,
) -> dict[Path, int]:
    """What a build will write, by path; paths on one volume add up. A rootless build also
    spools in the build folder what needs a host file: OCI tars, zip archives."""
    needs: dict[Path, int] = {}
    if cache is not None and options.cache_dir is not None:
        needs[options.cache_dir] = sum(use.size for use in cache.incoming)
    if options.output is not None:
        # the image is sparse: what lands on disk is the base image plus the content
        needs[options.output.absolute()] = sizes.base_image + sizes.content
    exports = sum(
        image.fullsize for image in inventory.images if isinstance(image.image.origin, Pull)
    )
    if rootless:
        # spooled one at a time per worker, at worst all at once
        exports += sum(image.filesize for image in inventory.images)
        exports += sum(
            source.download_size or source.expanded_size
            for source in inventory.files
            if source.entry.via is Via.ZIP
        )
    if exports:
        needs[default_build_dir(options)] = exports
    return needs


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


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path

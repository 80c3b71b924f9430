"""What a run carries from its checks to its build, and what its record is made of.

``check(ctx)`` returns a frozen Plan: every source inspected, the sizes, what the cache will
do. ``build(ctx, plan, built)`` fills in Built as each step is done, so that the record of a
failed build still says how far it went.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from image_creator.cache.entry import EntryKind
from image_creator.cache.eviction import Eviction, Incoming
from image_creator.steps.base_image import FetchedBase
from image_creator.steps.files import PlacedFile
from image_creator.steps.images import PlacedImage
from image_creator.steps.sources import Inventory


@dataclass(frozen=True)
class SizePlan:
    before_data: int  # bytes of the disk before the data partition
    existing_data: int  # the base image's data partition, before growing
    content: int  # files and images, rounded to filesystem blocks
    minimum: int  # smallest image that fits it all (an upper bound unless ``exact``)
    output: int  # the size the image will have
    base_image: int  # size of the uncompressed base image, when known
    exact: bool = False  # sized from the base's data filesystem itself
    data_blocks: int = 0  # filesystem blocks the content needs
    inodes: int = 0  # inodes the content needs
    inode_bound: bool = False  # the inode count, not the bytes, set the minimum
    offspot_config_minimum: int | None = None  # offspot-config's figure (base.root_size given)

    @property
    def added(self) -> int:
        """Bytes the build adds to the base image file."""
        return self.output - self.base_image


@dataclass(frozen=True)
class CacheUse:
    """One source of this build that the cache may hold."""

    kind: EntryKind
    source: str
    key: str
    version: str
    size: int


@dataclass(frozen=True)
class CacheForecast:
    hits: tuple[CacheUse, ...]
    additions: tuple[CacheUse, ...]
    outdated: tuple[CacheUse, ...]
    uncached: tuple[CacheUse, ...]
    evictions: tuple[Eviction, ...]

    @property
    def protected(self) -> list[str]:
        return [use.key for use in self.hits]

    @property
    def incoming(self) -> list[Incoming]:
        return [
            Incoming(kind=use.kind, source=use.source, key=use.key, size=use.size)
            for use in (*self.additions, *self.outdated)
        ]


@dataclass(frozen=True)
class Plan:
    """Everything the checks found; a build starts from it and changes none of it."""

    inventory: Inventory
    sizes: SizePlan
    cache_uses: tuple[CacheUse, ...] = ()  # the sources the cache may hold (with --cache-dir)
    cache: CacheForecast | None = None  # what the cache will do (with --cache-dir)


@dataclass
class Built:
    """What the build has done so far, step by step."""

    base: FetchedBase | None = None
    sizes: SizePlan | None = None  # the exact sizes, decided once the base image is here
    images: list[PlacedImage] = field(default_factory=list)
    files: list[PlacedFile] = field(default_factory=list)
    output: Path | None = None  # set once published
    output_sha256: str | None = None

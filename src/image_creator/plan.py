"""What a run carries from its checks to its build, and what its record is made of.

``check(ctx)`` returns a frozen Plan: every source inspected, the sizes, what the cache will
do. ``build(ctx, plan, built)`` fills in Built as each step is done, so that the record of a
failed build still says how far it went.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from image_creator.cache.entry import EntryKind
from image_creator.cache.eviction import Eviction, Incoming
from image_creator.config.model import BaseImage, Checksum, FileEntry, OciImage
from image_creator.fetch.archives import ExtractResult
from image_creator.fetch.responses import RemoteInfo
from image_creator.fetch.segmented import Transfer
from image_creator.sink import Backend
from image_creator.system.partitions import PartitionTable


@dataclass(frozen=True)
class BaseSource:
    image: BaseImage
    remote: RemoteInfo
    table: PartitionTable | None
    # what the download is verified against: the config's checksum with its digest read once
    # (even from its URL), or for a release number, the md5 published beside the image
    checksum: Checksum | None = None
    warnings: tuple[str, ...] = ()

    @property
    def expected(self) -> str | None:
        return self.checksum.value if self.checksum is not None else None

    @property
    def download_size(self) -> int | None:
        return self.remote.size


class ImageSizesFrom(StrEnum):
    """Where an OCI image's planned sizes come from."""

    CONFIG = "config"  # filesize and fullsize given
    REGISTRY = "registry"  # the verified manifest and each layer's gzip trailer
    URL = "url"  # the exported tar's own size


@dataclass(frozen=True)
class ImageSource:
    image: OciImage
    filesize: int
    fullsize: int
    manifest_digest: str | None  # None for images downloaded from a url
    sizes_from: ImageSizesFrom
    remote: RemoteInfo | None = None  # for images downloaded from a url


class SizeFrom(StrEnum):
    """Where a file entry's planned size comes from."""

    DECLARED = "declared"  # the config's `size` (for an archive: the larger, or the only one)
    ARCHIVE = "archive"  # read from the archive itself (larger than `size`, or no `size`)
    BOTH = "both"  # the config's `size` and the archive agree
    SERVER = "server"  # the size the server announces (for an archive: its own size)
    CONTENT = "content"  # inline content


@dataclass(frozen=True)
class FileSource:
    entry: FileEntry
    remote: RemoteInfo | None  # None for content entries
    expanded_size: int  # bytes it occupies once written or extracted
    expected: str | None = None  # the checksum's digest (read once, even from its URL)
    # filesystem entries (inodes) it creates: 1 for a file; for an archive whose members are
    # listed (zip), its members, implied folders and the destination folder
    entries: int = 1
    size_from: SizeFrom = SizeFrom.SERVER
    archive_size: int | None = None  # what the archive says it expands to, when it does
    size_note: str | None = None  # why the archive's expanded size is unknown
    warnings: tuple[str, ...] = ()  # for the user; the check goes on

    @property
    def download_size(self) -> int | None:
        return self.remote.size if self.remote is not None else None


@dataclass(frozen=True)
class Inventory:
    base: BaseSource
    images: tuple[ImageSource, ...]
    files: tuple[FileSource, ...]


@dataclass(frozen=True)
class FetchedBase:
    image_size: int
    from_cache: bool


@dataclass(frozen=True)
class PlacedImage:
    tar_name: str
    size: int
    architecture: str
    from_cache: bool


@dataclass(frozen=True)
class PlacedFile:
    bytes_written: int
    from_cache: bool
    junk_skipped: int = 0  # archive members left out as junk (__MACOSX/, .DS_Store, ...)
    junk_kinds: tuple[str, ...] = ()  # which junk: "__MACOSX", ".DS_Store", "._*", ...
    transfer: Transfer | None = None  # how a plain file came: connections, bytes per URL

    @staticmethod
    def extracted(result: ExtractResult, from_cache: bool) -> PlacedFile:
        return PlacedFile(
            result.bytes_written,
            from_cache,
            junk_skipped=result.junk_skipped,
            junk_kinds=result.junk_kinds,
        )


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
    backend: Backend = Backend.MOUNTED  # how the data partition is written
    backend_reason: str = ""  # why that backend, in a few words


@dataclass
class Built:
    """What the build has done so far, step by step."""

    base: FetchedBase | None = None
    sizes: SizePlan | None = None  # the exact sizes, decided once the base image is here
    images: list[PlacedImage] = field(default_factory=list)
    files: list[PlacedFile] = field(default_factory=list)
    output: Path | None = None  # set once published
    output_sha256: str | None = None

"""Every source of the config checked and its size learnt, downloading no content; what was
learnt of each is told.

HTTP sources get a HEAD (or a one-byte ranged GET), the base image's partition table comes
from its first sectors (a ranged read, decompressed on the fly for .xz), an archive's
expanded size from its own index (ranged reads), registry images from their manifests and a
4-byte read per layer.
"""

from __future__ import annotations

import logging
import lzma
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from image_creator.cache.downloads import version_of
from image_creator.cache.entry import EntryKind
from image_creator.cache.store import CacheStore
from image_creator.config.model import (
    BaseImage,
    Checksum,
    ChecksumKind,
    Config,
    Export,
    FileEntry,
    Inline,
    OciImage,
    Via,
)
from image_creator.context import Context
from image_creator.digests import ChecksumAlgo
from image_creator.errors import BuildError, SourceError
from image_creator.fetch import oci
from image_creator.fetch.archive_probe import ArchiveFacts, inspect_archive
from image_creator.fetch.checksums import parse_checksum_text
from image_creator.fetch.client import HttpClient
from image_creator.fetch.responses import RemoteInfo
from image_creator.fetch.source import Source
from image_creator.plan import (
    BaseSource,
    FileSource,
    ImageSizesFrom,
    ImageSource,
    Inventory,
    SizeFrom,
)
from image_creator.system.partitions import (
    PartitionTable,
    data_partition,
    parse_mbr,
)
from image_creator.ui.base import Reporter
from image_creator.units import SECTOR_SIZE, format_size

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
# How much of a compressed base image may be read to reach its first sector.
_XZ_HEAD_STEPS = (64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024)


def check_sources(ctx: Context) -> Inventory:
    inventory = inspect_sources(
        ctx.config, ctx.http, concurrency=ctx.options.concurrency, cache=ctx.cache
    )
    show_sources(inventory, ctx.reporter)
    return inventory


def show_sources(inventory: Inventory, reporter: Reporter) -> None:
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
        origin = entry.source_text
        sized = format_size(source.expanded_size)
        if entry.via.is_archive and source.download_size is not None:
            sized = f"{format_size(source.download_size)} {entry.via.value}, {sized} expanded"
        if entry.via.is_archive or source.size_from is SizeFrom.DECLARED:
            sized += f" (size from {source.size_from}"
            sized += f"; {source.size_note})" if source.size_note else ")"
        reporter.info(f"{entry.to} <- {origin}: {sized}")
        for warning in source.warnings:
            reporter.warning(warning)


def inspect_sources(
    config: Config, client: HttpClient, *, concurrency: int, cache: CacheStore | None = None
) -> Inventory:
    """Every source checked concurrently; all failures are reported together, by URL."""
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="check") as pool:
        base = pool.submit(inspect_base, config.base, client, cache)
        images = [pool.submit(inspect_oci_image, image, client) for image in config.oci_images]
        files = [
            pool.submit(inspect_file, entry, f"files[{index}]", client, cache)
            for index, entry in enumerate(config.files)
        ]
        problems: list[str] = []

        def collect(future: Callable[[], _T]) -> _T | None:
            try:
                return future()
            except SourceError as exc:
                problems.extend(exc.lines())
                return None

        base_source = collect(base.result)
        image_sources = [collect(future.result) for future in images]
        file_sources = [collect(future.result) for future in files]
    if problems or base_source is None:
        raise SourceError(problems[0], problems=problems)
    return Inventory(
        base=base_source,
        images=tuple(source for source in image_sources if source is not None),
        files=tuple(source for source in file_sources if source is not None),
    )


def inspect_base(
    base: BaseImage, client: HttpClient, cache: CacheStore | None = None
) -> BaseSource:
    info = client.probe(base.url)
    checksum, warnings = _base_checksum(base, client)
    cached = None
    if cache is not None:
        cached = cache.peek(EntryKind.FILES, base.url, base.url, version=version_of(info))
    # a cached copy spares a request; the partition table only serves to compute sizes
    source = client.source(cached.as_uri() if cached else base.url)
    head = _read_head(source, compressed=base.is_xz)
    table: PartitionTable | None = None
    try:
        table = parse_mbr(head)
    except (ValueError, SourceError) as exc:
        logger.debug("no partition table read from %s: %s", base.url, exc)
    if table is None and base.root_size is None:
        raise SourceError(
            f"{base.url}: cannot read the base image's partition table; "
            "give base.root_size to size the image"
        )
    if table is not None:
        # what the build refuses once it has the image (no partition 3, or not the last
        # one), refused here already: --check says it, and a build downloads nothing
        try:
            data_partition(table)
        except BuildError as exc:
            raise SourceError(f"{base.url}: {exc.message}") from exc
    return BaseSource(image=base, remote=info, table=table, checksum=checksum, warnings=warnings)


def _base_checksum(base: BaseImage, client: HttpClient) -> tuple[Checksum | None, tuple[str, ...]]:
    """The checksum to verify the base image with, and a warning when a release has none.

    An explicit checksum wins. A release number (``base: 1.4.2``) is checked against the
    MirrorBrain-style ``<url>.md5`` published beside the image, when there is one.
    """
    if base.checksum is not None:
        return replace(
            base.checksum, value=expected_digest(base.checksum, client), kind=ChecksumKind.DIGEST
        ), ()
    if base.version is None:
        return None, ()
    sidecar = f"{base.url}.md5"
    try:
        digest = parse_checksum_text(
            client.read_text(sidecar), algo=ChecksumAlgo.MD5, source=sidecar
        )
    except SourceError as exc:
        return None, (f"base {base.version}: no checksum to verify it with ({exc.message})",)
    return Checksum(algo=ChecksumAlgo.MD5, value=digest), ()


def _read_head(source: Source, *, compressed: bool) -> bytes:
    """The first sector of the (decompressed) image, reading as little as possible."""
    if not compressed:
        return source.read_range(0, SECTOR_SIZE)
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    output = b""
    offset = 0
    for end in _XZ_HEAD_STEPS:
        chunk = source.read_range(offset, end - offset)
        if not chunk:
            break
        offset += len(chunk)
        try:
            output += decompressor.decompress(chunk, max_length=SECTOR_SIZE - len(output))
        except lzma.LZMAError as exc:
            raise SourceError(f"{source.url}: not a valid .xz file: {exc}") from exc
        if len(output) >= SECTOR_SIZE or decompressor.eof:
            break
    return output


def expected_digest(checksum: Checksum, client: HttpClient) -> str:
    """The digest to compare with: as given, or read from its URL (``kind: url``)."""
    if checksum.kind is ChecksumKind.DIGEST:
        return checksum.value
    return parse_checksum_text(
        client.read_text(checksum.value), algo=checksum.algo, source=checksum.value
    )


def inspect_oci_image(image: OciImage, client: HttpClient) -> ImageSource:
    if isinstance(image.origin, Export):
        url = image.origin.url
        remote = client.probe(url)
        filesize = image.filesize or remote.size
        if filesize is None:
            raise SourceError(f"{url}: size unknown; give filesize for {image.ident}")
        # A docker-load tar holds uncompressed layers: its extracted size is at most its size.
        return ImageSource(
            image=image,
            filesize=filesize,
            fullsize=image.fullsize or filesize,
            manifest_digest=None,
            sizes_from=ImageSizesFrom.URL,
            remote=remote,
        )
    registry_image = oci.inspect_image(image.ident, client)
    from_config = image.filesize is not None and image.fullsize is not None
    return ImageSource(
        image=image,
        filesize=image.filesize if image.filesize is not None else registry_image.export_size,
        fullsize=image.fullsize if image.fullsize is not None else registry_image.extracted_size,
        manifest_digest=registry_image.manifest_digest,
        sizes_from=ImageSizesFrom.CONFIG if from_config else ImageSizesFrom.REGISTRY,
    )


def inspect_file(
    entry: FileEntry, label: str, client: HttpClient, cache: CacheStore | None = None
) -> FileSource:
    expected = expected_digest(entry.checksum, client) if entry.checksum is not None else None
    if isinstance(entry.origin, Inline):
        return FileSource(
            entry=entry,
            remote=None,
            expanded_size=len(entry.origin.content),
            expected=expected,
            size_from=SizeFrom.CONTENT,
        )
    url = entry.origin.url
    info = client.probe(url)
    download_size = info.size
    if entry.size is None and download_size is None:
        raise SourceError(f"{url}: the server gives no size; set {label}.size")
    if entry.via.is_archive:
        facts = _inspect_archive(client, url, entry.via, info, cache)
        return _archive_source(entry, label, info, facts, expected)
    if entry.size is not None and download_size is not None and entry.size != download_size:
        raise SourceError(
            f"{url}: the server announces {download_size} bytes but {label}.size says {entry.size}"
        )
    if download_size is not None:
        expanded, size_from = download_size, SizeFrom.SERVER
    else:
        assert entry.size is not None  # one of both is known, checked above
        expanded, size_from = entry.size, SizeFrom.DECLARED
    return FileSource(
        entry=entry, remote=info, expanded_size=expanded, expected=expected, size_from=size_from
    )


def _inspect_archive(
    client: HttpClient, url: str, via: Via, info: RemoteInfo, cache: CacheStore | None
) -> ArchiveFacts:
    """What the archive holds, read from its cached copy when the cache has a current one
    (the build will take it from there too), else with ranged reads of ``url``."""
    cached = None
    if cache is not None:
        cached = cache.peek(EntryKind.FILES, url, url, version=version_of(info))
    if cached is not None:
        try:
            return inspect_archive(client.source(cached.as_uri()), via, cached.stat().st_size)
        except (OSError, SourceError) as exc:  # evicted meanwhile, or damaged: ask the source
            logger.debug("cached copy of %s not readable: %s", url, exc)
    return inspect_archive(client.source(url), via, info.size, accepts_ranges=info.accepts_ranges)


def _archive_source(
    entry: FileEntry, label: str, info: RemoteInfo, facts: ArchiveFacts, expected: str | None
) -> FileSource:
    """The larger of the declared ``size`` and what the archive says, when both are known.

    Generated configs give the archive's download size as ``size``: below what it expands
    to, it is a warning, not an error (the image is sized for the archive's figure).
    """
    declared, found = entry.size, facts.expanded
    warnings: tuple[str, ...] = ()
    if declared is not None and found is not None:
        expanded = max(declared, found)
        if declared == found:
            size_from = SizeFrom.BOTH
        elif declared > found:
            size_from = SizeFrom.DECLARED
        else:
            size_from = SizeFrom.ARCHIVE
            warnings = (
                f"{label}.size: {format_size(declared)} ({declared} bytes) is less than "
                f"{entry.source_text} expands to, {format_size(found)} ({found} bytes); "
                "the archive's size is used",
            )
    elif declared is not None:
        expanded, size_from = declared, SizeFrom.DECLARED
    elif found is not None:
        expanded, size_from = found, SizeFrom.ARCHIVE
    else:
        assert info.size is not None  # with no declared size, the server gave one
        expanded, size_from = info.size, SizeFrom.SERVER
    return FileSource(
        entry=entry,
        remote=info,
        expanded_size=expanded,
        expected=expected,
        entries=facts.entries + 1 if facts.entries is not None else 1,
        size_from=size_from,
        archive_size=found,
        size_note=facts.note,
        warnings=warnings,
    )

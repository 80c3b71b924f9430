"""Files onto the data partition: written once, verified before they take their name.

Downloads stream straight onto the partition under a temporary name, hashed on the fly (and
copied into the cache on the way when it keeps them); tar archives are extracted while they
download; a zip (which needs random access) is spooled once next to its destination. Nothing
takes its final name before its checksum matched. A cache hit of a plain file whose checksum
is already known is copied by the kernel.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from image_creator.cache.downloads import Downloads, Fetched, copy_file
from image_creator.config.model import Checksum, FileEntry, Via
from image_creator.fetch.archives import extract_tar_stream, extract_zip
from image_creator.fetch.checksums import Hasher, HashingReader, new_hasher, verify_digest
from image_creator.steps.placement import CancellableReader, Readable, destination, staged
from image_creator.steps.sources import FileSource
from image_creator.ui.base import Reporter

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PlacedFile:
    bytes_written: int
    from_cache: bool


def place_file(
    source: FileSource,
    root: Path,
    cancelled: threading.Event,
    *,
    downloads: Downloads,
    reporter: Reporter,
) -> PlacedFile:
    """Put one config file entry in place under ``root``."""
    entry = source.entry
    target = destination(root, entry.relative_to_data)
    if entry.content is not None:
        written = _write_content(entry, entry.content, target, source.expected)
        return PlacedFile(written, from_cache=False)
    assert entry.url is not None  # the loader guarantees a url or a content
    url = entry.url
    expected = source.expected
    with (
        reporter.progress(str(entry.to), source.download_size) as advance,
        downloads.open(
            url, remote=source.remote, on_progress=advance, cancelled=cancelled
        ) as fetched,
    ):
        if entry.via is Via.DIRECT and _known_good(fetched, entry.checksum, expected):
            assert fetched.cached_path is not None
            with staged(target) as staging:
                copy_file(fetched.cached_path, staging)
            return PlacedFile(target.stat().st_size, from_cache=True)
        hashers: list[Hasher] = []
        if entry.checksum is not None:
            hashers.append(new_hasher(entry.checksum.algo.value))
        reader = HashingReader(CancellableReader(fetched.stream, cancelled), *hashers)

        def verify() -> None:
            if entry.checksum is not None and expected is not None:
                verify_digest(hashers[0], expected, source=url)
                fetched.verified(entry.checksum.algo.value, expected)

        if entry.via is Via.DIRECT:
            with staged(target) as staging:
                written = _copy(reader, staging)
                verify()
            return PlacedFile(written, fetched.from_cache)
        if entry.via is Via.ZIP:
            # zip needs random access: a cached copy is used in place, a download is spooled
            archive = fetched.cached_path or target.with_name(f".{target.name}.zip-spool")
            try:
                if fetched.cached_path is None:
                    _copy(reader, archive)
                    verify()
                elif not _known_good(fetched, entry.checksum, expected):
                    _drain(reader)
                    verify()
                with staged(target, directory=True) as staging:
                    written = extract_zip(archive, staging, max_bytes=entry.size, source=url)
                return PlacedFile(written, fetched.from_cache)
            finally:
                if fetched.cached_path is None:
                    archive.unlink(missing_ok=True)
        with staged(target, directory=True) as staging:
            written = extract_tar_stream(
                reader,
                staging,
                compression=entry.via.tar_compression,  # type: ignore[arg-type]
                max_bytes=entry.size,
                source=url,
            )
            verify()
        return PlacedFile(written, fetched.from_cache)


def _known_good(fetched: Fetched, checksum: Checksum | None, expected: str | None) -> bool:
    """A cache hit whose content needs no hashing: no checksum asked, or already verified."""
    if not fetched.from_cache:
        return False
    if checksum is None:
        return True
    return fetched.known_digests.get(checksum.algo.value) == expected


def _write_content(entry: FileEntry, content: bytes, target: Path, expected: str | None) -> int:
    with staged(target) as staging:
        staging.write_bytes(content)
        if entry.checksum is not None and expected is not None:
            hasher = new_hasher(entry.checksum.algo.value)
            hasher.update(content)
            verify_digest(hasher, expected, source=str(entry.to))
    return len(content)


def _drain(reader: Readable) -> None:
    while reader.read(CHUNK):
        pass


def _copy(reader: Readable, path: Path) -> int:
    written = 0
    with path.open("wb") as file:
        while chunk := reader.read(CHUNK):
            file.write(chunk)
            written += len(chunk)
    return written

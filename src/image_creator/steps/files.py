"""Files onto the data partition: written once, verified before they take their name.

Downloads stream straight onto the partition under a temporary name, hashed on the fly;
tar archives are extracted while they download; a zip (which needs random access) is spooled
once next to its destination. Nothing takes its final name before its checksum matched.
"""

from __future__ import annotations

import threading
from pathlib import Path

from image_creator.config.model import FileEntry, Via
from image_creator.fetch import http
from image_creator.fetch.archives import extract_tar_stream, extract_zip
from image_creator.fetch.checksums import Hasher, HashingReader, new_hasher, verify_digest
from image_creator.steps.placement import CancellableReader, Readable, destination, staged
from image_creator.steps.sources import FileSource, expected_digest
from image_creator.ui.base import Reporter

CHUNK = 1024 * 1024


def place_file(
    source: FileSource, root: Path, reporter: Reporter, cancelled: threading.Event
) -> int:
    """Put one config file entry in place under ``root``; returns the bytes it occupies."""
    entry = source.entry
    target = destination(root, entry.relative_to_data)
    if entry.content is not None:
        return _write_content(entry, entry.content, target)
    assert entry.url is not None  # the loader guarantees a url or a content
    url = entry.url
    hashers: list[Hasher] = []
    expected = None
    if entry.checksum is not None:
        expected = expected_digest(entry.checksum)
        hashers.append(new_hasher(entry.checksum.algo.value))
    label = str(entry.to)
    with (
        reporter.progress(label, source.download_size) as advance,
        http.open_stream(url, on_progress=advance) as raw,
    ):
        reader = HashingReader(CancellableReader(raw, cancelled), *hashers)
        if entry.via is Via.DIRECT:
            with staged(target) as staging:
                written = _copy(reader, staging)
                _verify(hashers, expected, url)
            return written
        if entry.via is Via.ZIP:
            spool = target.with_name(f".{target.name}.zip-spool")
            try:
                _copy(reader, spool)
                _verify(hashers, expected, url)
                with staged(target, directory=True) as staging:
                    return extract_zip(spool, staging, max_bytes=entry.size, source=url)
            finally:
                spool.unlink(missing_ok=True)
        with staged(target, directory=True) as staging:
            written = extract_tar_stream(
                reader,
                staging,
                compression=entry.via.tar_compression,  # type: ignore[arg-type]
                max_bytes=entry.size,
                source=url,
            )
            _verify(hashers, expected, url)
        return written


def _write_content(entry: FileEntry, content: bytes, target: Path) -> int:
    with staged(target) as staging:
        staging.write_bytes(content)
        if entry.checksum is not None:
            hasher = new_hasher(entry.checksum.algo.value)
            hasher.update(content)
            verify_digest(hasher, expected_digest(entry.checksum), source=str(entry.to))
    return len(content)


def _copy(reader: Readable, path: Path) -> int:
    written = 0
    with path.open("wb") as file:
        while chunk := reader.read(CHUNK):
            file.write(chunk)
            written += len(chunk)
    return written


def _verify(hashers: list[Hasher], expected: str | None, url: str) -> None:
    if hashers and expected is not None:
        verify_digest(hashers[0], expected, source=url)

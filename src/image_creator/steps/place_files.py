"""Files onto the data partition: written once, verified before they take their name.

Downloads stream straight onto the partition under a temporary name, hashed on the fly (and
copied into the cache on the way when it keeps them); tar archives are extracted while they
download; a zip (which needs random access) is spooled once next to its destination. Nothing
takes its final name before its checksum matched. A cache hit of a plain file without a
checksum is copied by the kernel.

An archive expands as far as the data partition has room: the config's ``size`` sized the
image, it does not stop the extraction. Running out of space or inodes is one clear error
naming the entry; junk members (``__MACOSX/``, ``.DS_Store``, ...) are skipped and told.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Protocol

from image_creator.cache.downloads import Downloads, Fetched
from image_creator.config.model import Checksum, FileEntry, Inline, Via
from image_creator.errors import BuildError
from image_creator.fetch.archives import NoRoomError, extract_tar_stream, extract_zip
from image_creator.fetch.checksums import Hasher, HashingReader, new_hasher, verify_digest
from image_creator.fetch.positional import RandomAccess
from image_creator.placement import CancellableReader, Readable
from image_creator.plan import FileSource, PlacedFile
from image_creator.sink import Sink, SinkFile
from image_creator.ui.base import Reporter
from image_creator.units import CHUNK


def place_file(
    source: FileSource,
    sink: Sink,
    cancelled: threading.Event,
    *,
    downloads: Downloads,
    reporter: Reporter,
) -> PlacedFile:
    """Put one config file entry in place on the data partition (``sink``).

    Raises BuildError "no room on the data partition for ..." (or "out of inodes ...") when
    the data partition fills up, whatever filled it.
    """
    entry = source.entry
    with _room_on(sink, entry):
        placed = _place(source, sink, cancelled, downloads=downloads, reporter=reporter)
    if placed.junk_skipped:
        kinds = ", ".join(placed.junk_kinds)
        reporter.info(f"{entry.to}: skipped {placed.junk_skipped} junk entries ({kinds})")
    return placed


@contextmanager
def _room_on(sink: Sink, entry: FileEntry) -> Iterator[None]:
    """Turn a full data partition (space or inodes) into one clear BuildError."""
    origin = entry.source_text
    free_before = sink.room().free_inodes
    try:
        yield
    except NoRoomError as exc:
        if exc.inodes:
            free = exc.free_inodes if exc.free_inodes is not None else free_before
            raise BuildError(
                f"out of inodes on the data partition: {entry.to} needs more than "
                f"{exc.needs_more_than} inodes ({free} free)"
            ) from exc
        raise BuildError(
            f"no room on the data partition for {entry.to} ({origin}): {exc.reason}"
        ) from exc
    except (OSError, BuildError) as exc:
        full = sink.full_reason(exc)
        if full is None:
            raise
        reason, inodes = full
        if inodes:
            raise BuildError(
                f"out of inodes on the data partition: {entry.to} needs more inodes "
                f"({free_before} free)"
            ) from exc
        raise BuildError(
            f"no room on the data partition for {entry.to} ({origin}): {reason}"
        ) from exc


def _place(
    source: FileSource,
    sink: Sink,
    cancelled: threading.Event,
    *,
    downloads: Downloads,
    reporter: Reporter,
) -> PlacedFile:
    entry = source.entry
    target = entry.relative_to_data
    if isinstance(entry.origin, Inline):
        written = _write_content(entry, entry.origin.content, sink, source.expected)
        return PlacedFile(written, from_cache=False)
    url = entry.origin.url
    expected = source.expected
    with (
        reporter.progress(str(entry.to), source.download_size) as advance,
        downloads.open(
            url,
            remote=source.remote,
            on_progress=advance,
            cancelled=cancelled,
            size=entry.size if entry.via is Via.DIRECT else None,
            segmentable=entry.via is Via.DIRECT and sink.random_access,
        ) as fetched,
    ):
        if entry.via is Via.DIRECT and _known_good(fetched, entry.checksum, expected):
            assert fetched.cached_path is not None
            written = sink.copy_in(fetched.cached_path, target)
            return PlacedFile(written, from_cache=True, transfer=fetched.transfer(0))
        hashers: list[Hasher] = []
        if entry.checksum is not None:
            hashers.append(new_hasher(entry.checksum.algo))
        reader = HashingReader(CancellableReader(fetched.stream, cancelled), *hashers)

        def verify() -> None:
            if entry.checksum is not None and expected is not None:
                verify_digest(hashers[0], expected, source=url)
                fetched.verified(entry.checksum.algo, expected)

        if entry.via is Via.DIRECT:
            with sink.new_file(target) as file:
                if fetched.segmented is not None:  # over several connections, in place
                    assert isinstance(file, RandomAccess)  # asked for only when it is one
                    written = fetched.segmented.into(file, *hashers)
                else:
                    written = _copy(reader, file)
                verify()
            return PlacedFile(written, fetched.from_cache, transfer=fetched.transfer(written))

        def replaced(path: PurePosixPath) -> None:
            # the config's own files are written first: an archive member replacing one wins
            reporter.warning(
                f"{entry.to}: a member of {url} replaces {PurePosixPath('/data', path)}"
            )

        if entry.via is Via.ZIP:
            # zip needs random access: a cached copy is used in place, a download is spooled
            with sink.scratch(target, ".zip-spool") as spool:
                archive = fetched.cached_path or spool
                if fetched.cached_path is None:
                    with archive.open("wb") as spooled:
                        _copy(reader, spooled)
                    verify()
                elif not _known_good(fetched, entry.checksum, expected):
                    _drain(reader)
                    verify()
                with sink.new_folder(target, source=url, on_replace=replaced) as members:
                    result = extract_zip(archive, members, source=url)
            return PlacedFile.extracted(result, fetched.from_cache)
        with sink.new_folder(target, source=url, on_replace=replaced) as members:
            result = extract_tar_stream(
                reader,
                members,
                compression=entry.via.tar_compression,  # type: ignore[arg-type]
                source=url,
            )
            verify()
        return PlacedFile.extracted(result, fetched.from_cache)


def _known_good(fetched: Fetched, checksum: Checksum | None, expected: str | None) -> bool:
    """A cache hit whose content needs no hashing: no checksum asked. A checksum is verified
    on the bytes as they are read: the cache's metadata cannot vouch for them."""
    return fetched.from_cache and checksum is None


def _write_content(entry: FileEntry, content: bytes, sink: Sink, expected: str | None) -> int:
    with sink.new_file(entry.relative_to_data) as file:
        file.write(content)
        if entry.checksum is not None and expected is not None:
            hasher = new_hasher(entry.checksum.algo)
            hasher.update(content)
            verify_digest(hasher, expected, source=str(entry.to))
    return len(content)


def _drain(reader: Readable) -> None:
    while reader.read(CHUNK):
        pass


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _copy(reader: Readable, file: _Writable | SinkFile) -> int:
    written = 0
    while chunk := reader.read(CHUNK):
        file.write(chunk)
        written += len(chunk)
    return written

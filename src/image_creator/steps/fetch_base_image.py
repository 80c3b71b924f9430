"""The base image: streamed from its source, .xz decompressed on the fly, checksum verified,
written sparse so that its empty space costs no disk."""

from __future__ import annotations

import contextlib
import lzma
import os
import threading
from pathlib import Path
from typing import IO, BinaryIO

from image_creator.cache.downloads import Downloads
from image_creator.errors import CommandError, SourceError, tail_lines
from image_creator.fetch.checksums import Hasher, HashingReader, new_hasher, verify_digest
from image_creator.plan import BaseSource, FetchedBase
from image_creator.progress import ProgressCallback
from image_creator.system.run import piped, which
from image_creator.units import CHUNK

# Runs of zeros this long (and aligned) become holes in the output file.
HOLE_BLOCK = 64 * 1024
_ZEROS = bytes(HOLE_BLOCK)
# Bytes a base image may have past its last partition (some tools round images up).
TRAILING_SLACK = 64 * 2**20


class SparseWriter:
    """Writes a stream to a file, seeking over aligned all-zero blocks instead of writing them.

    With a ``limit``, more bytes than that raise ``TooLarge``: a small compressed file can
    decompress to anything, and the host disk is not the place to find out how much.
    """

    class TooLarge(Exception):
        pass

    def __init__(self, file: BinaryIO, limit: int | None = None) -> None:
        self._file = file
        self._pending = b""
        self._limit = limit
        self.position = 0

    def write(self, data: bytes) -> None:
        if self._limit is not None and self.position + len(self._pending) + len(data) > self._limit:
            raise SparseWriter.TooLarge
        buffer = self._pending + data if self._pending else data
        whole = len(buffer) - len(buffer) % HOLE_BLOCK
        start = 0
        while start < whole:
            # a run of zero blocks is skipped, a run of data blocks written, each at once;
            # bytes.startswith compares with memcmp (a memoryview comparison would not)
            zero = buffer.startswith(_ZEROS, start)
            end = start + HOLE_BLOCK
            while end < whole and buffer.startswith(_ZEROS, end) is zero:
                end += HOLE_BLOCK
            if zero:
                self._file.seek(end - start, os.SEEK_CUR)
            else:
                self._file.write(memoryview(buffer)[start:end])
            self.position += end - start
            start = end
        self._pending = buffer[whole:]

    def close(self) -> int:
        """Write the tail and set the file's length (a trailing hole has no bytes written)."""
        if self._pending.strip(b"\0"):
            self._file.write(self._pending)
        else:
            self._file.seek(len(self._pending), os.SEEK_CUR)
        self.position += len(self._pending)
        self._pending = b""
        self._file.truncate(self.position)
        return self.position


def fetch_base_image(
    source: BaseSource, target: Path, downloads: Downloads, *, on_progress: ProgressCallback
) -> FetchedBase:
    """Write the (decompressed) base image to ``target``."""
    base = source.image
    hashers: list[Hasher] = []
    checksum = source.checksum
    if checksum is not None:
        hashers.append(new_hasher(checksum.algo))
    # Set on the way out, whatever the way: the download is cut even while xz's feeder
    # thread is blocked reading it (the main thread itself is woken by the signal).
    leaving = threading.Event()
    with (
        downloads.open(
            base.url, remote=source.remote, on_progress=on_progress, cancelled=leaving
        ) as fetched,
        target.open("r+b") as file,
        contextlib.ExitStack() as on_exit,
    ):
        on_exit.callback(leaving.set)
        reader = HashingReader(fetched.stream, *hashers)
        limit = _size_limit(source)
        writer = SparseWriter(file, limit)
        try:
            if base.is_xz:
                _decompress_xz(reader, writer, label=base.url)
            else:
                while chunk := reader.read(CHUNK):
                    writer.write(chunk)
        except SparseWriter.TooLarge:
            raise SourceError(
                f"{base.url}: the base image goes on past its partitions' end "
                f"({limit} bytes, with {TRAILING_SLACK} bytes of slack); not a base image"
            ) from None
        size = writer.close()
        if size == 0:
            raise SourceError(f"{base.url}: the base image is empty")
        if checksum is not None:
            verify_digest(hashers[0], checksum.value, source=base.url)
            fetched.verified(checksum.algo, checksum.value)
        from_cache = fetched.from_cache
    return FetchedBase(image_size=size, from_cache=from_cache)


def _size_limit(source: BaseSource) -> int | None:
    """How large the (decompressed) base image may be: its last partition's end, plus slack
    for tools that round images up. None when its partition table could not be read."""
    if source.table is None or not source.table.partitions:
        return None
    return max(part.end_bytes for part in source.table.partitions) + TRAILING_SLACK


def _decompress_xz(reader: HashingReader, writer: SparseWriter, *, label: str) -> None:
    """Decompress through ``xz -T0`` when the host has it (several cores for the multi-block
    files that ``xz -T0`` makes), else in this process with lzma (one core)."""
    if which("xz") is None:
        _decompress_xz_here(reader, writer, label=label)
        return
    failures: list[BaseException] = []
    try:
        with piped(["xz", "--decompress", "--stdout", "--threads=0"]) as xz:
            assert xz.stdin is not None and xz.stdout is not None
            feeder = threading.Thread(
                target=_feed, args=(reader, xz.stdin, failures), name="xz-feed", daemon=True
            )
            feeder.start()
            while chunk := xz.stdout.read(CHUNK):
                writer.write(chunk)
            feeder.join()
            for failure in failures:
                if not isinstance(failure, BrokenPipeError):  # xz stopped: its error says why
                    raise failure
    except CommandError as exc:
        reason = tail_lines(exc.stderr, lines=1) or "xz failed"
        raise SourceError(f"{label}: corrupt .xz data: {reason}") from exc


def _feed(reader: HashingReader, sink: IO[bytes], failures: list[BaseException]) -> None:
    """Copy the download (hashed as it is read) into xz's stdin; runs in its own thread."""
    try:
        while chunk := reader.read(CHUNK):
            sink.write(chunk)
            # nothing left in the pipe's buffer while the next read waits on the network: a
            # close after xz was killed (Ctrl-C) would try to flush it and fail
            sink.flush()
    except BaseException as exc:
        failures.append(exc)
    finally:
        with contextlib.suppress(BrokenPipeError):
            sink.close()


def _decompress_xz_here(reader: HashingReader, writer: SparseWriter, *, label: str) -> None:
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        while not decompressor.eof:
            if decompressor.needs_input:
                chunk = reader.read(CHUNK)
                if not chunk:
                    raise SourceError(f"{label}: truncated .xz file")
            else:
                chunk = b""
            # bounded output per call: a highly compressed image never sits whole in memory
            writer.write(decompressor.decompress(chunk, max_length=4 * CHUNK))
    except lzma.LZMAError as exc:
        raise SourceError(f"{label}: corrupt .xz data: {exc}") from exc
    # bytes after the xz stream (padding or a second stream) still count for the checksum
    while reader.read(CHUNK):
        pass

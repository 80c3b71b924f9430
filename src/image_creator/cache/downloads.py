"""Sources opened for a build: from the cache when it holds them, else from the network,
filling the cache on the way when the policy allows it.

A plain file worth splitting (see fetch/segmented.py) is not streamed: its caller gets a
``SegmentedFile`` and has it written in place over several connections. The cache entry gets
the same bytes, in order, as the written prefix grows: exactly what a single stream would
have given it (content, size, xxh3), with no byte fetched twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from image_creator.cache.entry import EntryKind
from image_creator.cache.store import CacheStore, CacheWriter
from image_creator.config.model import OCI_PLATFORM
from image_creator.errors import ChecksumMismatchError, Interrupted, SourceError
from image_creator.fetch import metalink, segmented
from image_creator.fetch.archives import ReadableStream
from image_creator.fetch.checksums import Hasher, new_hasher, verify_digest
from image_creator.fetch.client import HttpClient
from image_creator.fetch.mirrors import MirrorHealth, Source
from image_creator.fetch.positional import RandomAccess
from image_creator.fetch.responses import RemoteInfo
from image_creator.fetch.segmented import ConnectionLimiter, Outcome, Transfer
from image_creator.fetch.source import RemoteStream
from image_creator.progress import ProgressCallback, no_progress
from image_creator.system import signals


def version_of(info: RemoteInfo | None) -> str:
    """The remote's version marker: its content digest (MirrorBrain), else its ETag, else its
    size and Last-Modified, else "" (unknown: the entry is used as long as it verifies)."""
    if info is None:
        return ""
    if info.digest:
        return f"digest:{info.digest}"
    if info.etag:
        return f"etag:{info.etag}"
    if info.size is not None and info.last_modified is not None:
        return f"size:{info.size}|modified:{info.last_modified.isoformat()}"
    return ""


def is_cacheable_url(url: str) -> bool:
    """Local files are never cached: they are already on this machine."""
    return urlsplit(url).scheme.lower() in ("http", "https")


class _Tee:
    """Passes a stream through, copying every byte into a cache entry being written."""

    def __init__(self, stream: RemoteStream, writer: CacheWriter) -> None:
        self._stream = stream
        self._writer = writer
        self.at_end = False

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        if data:
            self._writer.write(data)
        elif size != 0:
            self.at_end = True
        return data


@dataclass
class Fetched:
    """An open source. ``cached_path`` is set on a cache hit (for kernel-side copies): it
    names the very file that was checked, whatever happens to the cache folder meanwhile.

    A hit carries no checksum known in advance: the cache's metadata is written by whoever
    can write the cache folder, so a config checksum is verified on the bytes as they are
    read from the cache, like on a download.
    """

    stream: ReadableStream
    cached_path: Path | None = None
    _writer: CacheWriter | None = None
    # set when the source is to be fetched in segments: ``stream`` is then not to be read
    segmented: SegmentedFile | None = None
    url: str = ""

    @property
    def from_cache(self) -> bool:
        return self.cached_path is not None

    def transfer(self, written: int) -> Transfer:
        """How the content came, once ``written`` bytes were placed."""
        if self.from_cache:
            return Transfer(connections=0)
        if self.segmented is not None and self.segmented.outcome is not None:
            outcome = self.segmented.outcome
            return Transfer(outcome.connections, dict(outcome.bytes_from))
        return Transfer(connections=1, bytes_from={self.url: written} if written else {})

    def verified(self, algo: str, digest: str) -> None:
        """Record a config checksum verified on this content, kept with a new cache entry."""
        if self._writer is not None:
            self._writer.digests[algo] = digest


class SegmentedFile:
    """A source to be fetched over several connections straight into its destination."""

    def __init__(
        self,
        url: str,
        remote: RemoteInfo,
        *,
        client: HttpClient,
        writer: CacheWriter | None,
        limiter: ConnectionLimiter | None,
        health: MirrorHealth,
        cancelled: threading.Event | None,
        on_progress: ProgressCallback,
    ) -> None:
        assert remote.size is not None
        self.url = url
        self.remote = remote
        self.size = remote.size
        self._client = client
        self._writer = writer
        self._limiter = limiter
        self._health = health
        self._cancelled = cancelled
        self._on_progress = on_progress
        self.outcome: Outcome | None = None

    def into(self, destination: Path | RandomAccess, *hashers: Hasher) -> int:
        """Fetch the whole file into ``destination`` (a path, created: it must not exist;
        or a file written at offsets), every byte also going, in order, through
        ``hashers`` and into the cache entry; its size.

        Mirrors named by the source (see fetch/metalink.py) share the segments; the
        metalink's digest is then verified too (ChecksumMismatchError), and its piece
        digests as the pieces come.
        """
        writer = self._writer
        # the URL the check probed (after redirects), with its validators, comes first
        sources = [Source(self.remote.url, etag=self.remote.etag)]
        session = self._client.session  # the run's: its User-Agent, pool and watches
        mirrors, found = metalink.find_mirrors(session, self.url, size=self.size)
        sources += [Source(m.url) for m in mirrors if m.url != self.remote.url]
        strongest = found.strongest_hash() if found is not None else None
        checks = [new_hasher(strongest[0])] if strongest is not None else []

        def consume(data: bytes) -> None:
            for hasher in (*hashers, *checks):
                hasher.update(data)
            if writer is not None:
                writer.write(data)

        with contextlib.ExitStack() as closing:
            if isinstance(destination, Path):
                flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                handle = os.open(destination, flags, 0o644)
                closing.callback(os.close, handle)
                target: int | RandomAccess = handle
            else:
                target = destination
            self.outcome = segmented.fetch_segmented(
                target,
                self.size,
                sources,
                session=session,
                consume=consume,
                pieces=found.pieces if found is not None else None,
                limiter=self._limiter,
                cancelled=self._cancelled,
                on_progress=self._on_progress,
                health=self._health,
                min_segment=segmented.MIN_SEGMENT,
                min_steal=segmented.MIN_STEAL,
                retries=self._client.policy.retries,
                backoff=self._client.policy.backoff,
                timeout=self._client.timeout,
            )
        if strongest is not None:
            verify_digest(checks[0], strongest[1], source=f"{self.url} (its metalink)")
        if writer is not None:
            writer.complete = True
        return self.size


class _Unopened:
    """The stream of a source fetched in segments: opened only if read after all."""

    def __init__(self, open_stream: Callable[[], RemoteStream]) -> None:
        self._open = open_stream
        self._stream: RemoteStream | None = None

    def read(self, size: int = -1, /) -> bytes:
        if self._stream is None:
            self._stream = self._open()
        return self._stream.read(size)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


@dataclass(frozen=True)
class Downloads:
    client: HttpClient  # the run's
    cache: CacheStore | None = None
    # the run's connection slots (-T), shared by segmented downloads
    connections: ConnectionLimiter | None = None
    mirrors: MirrorHealth = field(default_factory=MirrorHealth)

    def splits(self, url: str, remote: RemoteInfo | None, size: int | None) -> bool:
        """Whether ``url`` is fetched in segments (when not in the cache)."""
        return (
            remote is not None
            and is_cacheable_url(url)
            and remote.accepts_ranges
            and segmented.worth_splitting(remote.size, min_segment=segmented.MIN_SEGMENT)
            and (size is None or size == remote.size)
        )

    @contextlib.contextmanager
    def open(
        self,
        url: str,
        *,
        remote: RemoteInfo | None,
        on_progress: ProgressCallback = no_progress,
        cancelled: threading.Event | None = None,
        size: int | None = None,
        segmentable: bool = False,
    ) -> Iterator[Fetched]:
        """Open ``url`` for one sequential read to its end.

        ``segmentable``: the caller writes a plain file, and can take a ``SegmentedFile``
        (``Fetched.segmented``) instead of a stream for a source worth splitting.

        A new cache entry is committed only if the block reads the source to its end and
        ends without an error (so after the caller verified its checksum). When
        ``cancelled`` is set, the transfer is cut and waits between retries end at once.
        A download is held to ``remote`` (what the check found) and to ``size`` (the
        config's size of the file): see ``HttpClient.open_stream``.
        """

        def stream() -> RemoteStream:
            return self.client.open_stream(
                url,
                on_progress=on_progress,
                cancelled=cancelled,
                expected=remote,
                expected_size=size,
            )

        split = segmentable and self.splits(url, remote, size)

        def in_segments(writer: CacheWriter | None) -> Iterator[Fetched]:
            assert remote is not None
            file = SegmentedFile(
                url,
                remote,
                client=self.client,
                writer=writer,
                limiter=self.connections,
                health=self.mirrors,
                cancelled=cancelled,
                on_progress=on_progress,
            )
            unopened = _Unopened(stream)
            try:
                yield Fetched(stream=unopened, segmented=file, _writer=writer, url=url)
            finally:
                unopened.close()

        if self.cache is None or not is_cacheable_url(url):
            if split:
                yield from in_segments(None)
                return
            with self._connection(url, cancelled), stream() as opened:
                yield Fetched(stream=opened, url=url)
            return
        with self.cache.slot(
            EntryKind.FILES,
            url,
            url,
            version=version_of(remote),
            size=remote.size if remote is not None else None,
        ) as slot:
            if slot.file is not None and slot.entry is not None:
                on_progress(slot.entry.size)
                try:
                    yield Fetched(stream=slot.file, cached_path=slot.path)
                except ChecksumMismatchError as exc:
                    self.cache.discard(slot, "does not match the config's checksum")
                    raise ChecksumMismatchError(
                        f"{exc.message} in the cached copy: dropped from the cache, "
                        "the next build downloads it again"
                    ) from exc
                return
            if split:
                yield from in_segments(slot.writer)
                return
            with self._connection(url, cancelled), stream() as opened:
                if slot.writer is None:
                    yield Fetched(stream=opened, url=url)
                    return
                tee = _Tee(opened, slot.writer)
                yield Fetched(stream=tee, _writer=slot.writer, url=url)
                slot.writer.complete = tee.at_end

    @contextlib.contextmanager
    def _connection(self, url: str, cancelled: threading.Event | None) -> Iterator[None]:
        """One of the run's connection slots, held while a source streams (-T bounds every
        connection of the files step; a segmented download takes its own)."""
        limiter = self.connections
        if limiter is None or not is_cacheable_url(url):
            yield
            return
        while not limiter.acquire(timeout=0.25):
            if (cancelled is not None and cancelled.is_set()) or signals.interrupted():
                raise Interrupted("cancelled")
        try:
            yield
        finally:
            limiter.release()

    @contextlib.contextmanager
    def image_tar(self, ident: str, key: str, *, version: str, size: int) -> Iterator[ImageTarSlot]:
        """The cached tar of an OCI image, or where to keep a freshly exported one."""
        if self.cache is None:
            yield ImageTarSlot()
            return
        with self.cache.slot(EntryKind.OCI_IMAGES, ident, key, version=version, size=size) as slot:
            try:
                yield ImageTarSlot(cached_path=slot.path, writer=slot.writer)
            except SourceError:
                if slot.entry is not None:  # the cached tar did not verify
                    self.cache.discard(slot, "not a valid image tar")
                raise


@dataclass
class ImageTarSlot:
    cached_path: Path | None = None
    writer: CacheWriter | None = None

    def keep(self, exported: Path) -> None:
        """Copy a verified export into the cache entry being written."""
        if self.writer is None:
            return
        with exported.open("rb") as source:
            shutil.copyfileobj(source, self.writer, length=1024 * 1024)
        self.writer.complete = True


def copy_file(source: Path, target: Path) -> None:
    """Copy in the kernel (copy_file_range/sendfile) where the platform allows it."""
    shutil.copyfile(source, target)


def image_cache_key(ident: str) -> str:
    return f"{ident}|{OCI_PLATFORM}"

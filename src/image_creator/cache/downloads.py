"""Sources opened for a build: from the cache when it holds them, else from the network,
filling the cache on the way when the policy allows it."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from image_creator.cache.entry import EntryKind
from image_creator.cache.store import CacheStore, CacheWriter
from image_creator.config.model import OCI_PLATFORM
from image_creator.errors import ChecksumMismatchError, SourceError
from image_creator.fetch.archives import ReadableStream
from image_creator.fetch.client import HttpClient
from image_creator.fetch.responses import RemoteInfo
from image_creator.fetch.source import RemoteStream
from image_creator.ui.base import ProgressCallback, no_progress


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

    @property
    def from_cache(self) -> bool:
        return self.cached_path is not None

    def verified(self, algo: str, digest: str) -> None:
        """Record a config checksum verified on this content, kept with a new cache entry."""
        if self._writer is not None:
            self._writer.digests[algo] = digest


@dataclass(frozen=True)
class Downloads:
    client: HttpClient  # the run's
    cache: CacheStore | None = None

    @contextlib.contextmanager
    def open(
        self,
        url: str,
        *,
        remote: RemoteInfo | None,
        on_progress: ProgressCallback = no_progress,
        cancelled: threading.Event | None = None,
        size: int | None = None,
    ) -> Iterator[Fetched]:
        """Open ``url`` for one sequential read to its end.

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

        if self.cache is None or not is_cacheable_url(url):
            with stream() as opened:
                yield Fetched(stream=opened)
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
            with stream() as opened:
                if slot.writer is None:
                    yield Fetched(stream=opened)
                    return
                tee = _Tee(opened, slot.writer)
                yield Fetched(stream=tee, _writer=slot.writer)
                slot.writer.complete = tee.at_end

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

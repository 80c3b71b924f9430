"""What every source offers, HTTP or local: the reads of ``Source``, and ``RemoteStream``,
the sequential read of its content (``HttpClient.source`` picks the kind once)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Protocol

from image_creator.fetch.responses import TEXT_LIMIT, RemoteInfo
from image_creator.progress import ProgressCallback, no_progress


class Source(Protocol):
    """One source, HTTP or local, read the same way."""

    url: str

    def probe(self) -> RemoteInfo: ...

    def read_bytes(self, limit: int = TEXT_LIMIT) -> bytes: ...

    def read_range(self, start: int, length: int) -> bytes: ...

    def open_stream(
        self,
        *,
        on_progress: ProgressCallback = no_progress,
        cancelled: threading.Event | None = None,
        expected: RemoteInfo | None = None,
        expected_size: int | None = None,
    ) -> RemoteStream: ...


class RemoteStream(io.RawIOBase):
    """A source read sequentially: ``read(n)`` like a file, or ``chunks()`` for a copy.

    The attributes describe the source once opened: ``final_url`` (after redirects),
    ``size`` (None if unknown), ``etag``, ``last_modified``, plus ``position`` (bytes received
    so far) and ``resumes``. Bytes come out exactly once and in order, whatever happened on
    the network, so a digest of what ``read`` returned is a digest of the source.
    """

    def __init__(self, url: str, on_progress: ProgressCallback) -> None:
        super().__init__()
        self.url = url
        self.final_url = url
        self.size: int | None = None
        self.etag: str | None = None
        self.last_modified: datetime | None = None
        self.position = 0
        self.resumes = 0
        self._on_progress = on_progress
        self._pending = memoryview(b"")

    def _next_chunk(self) -> bytes:
        """The next bytes of the source (up to CHUNK), b"" at its end."""
        raise NotImplementedError

    def _receive(self) -> bytes:
        chunk = self._next_chunk()
        if chunk:
            self.position += len(chunk)
            self._on_progress(len(chunk))
        return chunk

    def chunks(self) -> Iterator[bytes]:
        """The rest of the source, in chunks of up to CHUNK bytes."""
        if self._pending:
            pending, self._pending = bytes(self._pending), memoryview(b"")
            yield pending
        while chunk := self._receive():
            yield chunk

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = memoryview(self._receive())
            if not self._pending:
                return 0
        target = memoryview(buffer).cast("B")
        count = min(len(target), len(self._pending))
        target[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

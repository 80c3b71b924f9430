"""A ``file://`` source: the same reads as an HTTP source, from a regular file on this host."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from image_creator.errors import SourceError, os_reason
from image_creator.fetch.responses import TEXT_LIMIT, RemoteInfo
from image_creator.fetch.source import RemoteStream
from image_creator.localfile import open_regular
from image_creator.progress import ProgressCallback, no_progress
from image_creator.units import CHUNK


def local_path(url: str) -> Path | None:
    """The local path of a ``file://`` URL, None for other schemes."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        raise SourceError(f"{url}: file:// URLs must be local (file:///path)")
    return Path(unquote(parts.path))


def _open_local(url: str, path: Path) -> BinaryIO:
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise SourceError(f"{url}: no such file") from None
    except OSError as exc:
        raise SourceError(f"{url}: cannot read: {os_reason(exc)}") from exc


class LocalSource:
    """A regular file named by a ``file://`` URL."""

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path

    def probe(self) -> RemoteInfo:
        with _open_local(self.url, self.path) as file:
            stat = os.fstat(file.fileno())
        return RemoteInfo(
            url=self.url,
            size=stat.st_size,
            etag=None,
            last_modified=datetime.fromtimestamp(stat.st_mtime, UTC),
            accepts_ranges=True,
        )

    def read_bytes(self, limit: int = TEXT_LIMIT) -> bytes:
        with _open_local(self.url, self.path) as file:
            data = file.read(limit + 1)
        if len(data) > limit:
            raise SourceError(f"{self.url}: more than {limit} bytes; expected a short document")
        return data

    def read_range(self, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError("start and length must not be negative")
        if length == 0:
            return b""
        with _open_local(self.url, self.path) as file:
            file.seek(start)
            return file.read(length)

    def open_stream(
        self,
        *,
        on_progress: ProgressCallback = no_progress,
        cancelled: threading.Event | None = None,  # a local read does not block
        expected: RemoteInfo | None = None,  # a local file is read as it is now
        expected_size: int | None = None,
    ) -> RemoteStream:
        return FileStream(self.url, self.path, on_progress)


class FileStream(RemoteStream):
    def __init__(self, url: str, path: Path, on_progress: ProgressCallback) -> None:
        super().__init__(url, on_progress)
        self._file = _open_local(url, path)
        stat = os.fstat(self._file.fileno())
        self.size = stat.st_size
        self.last_modified = datetime.fromtimestamp(stat.st_mtime, UTC)

    def _next_chunk(self) -> bytes:
        try:
            return self._file.read(CHUNK)
        except OSError as exc:
            raise SourceError(f"{self.url}: cannot read: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._file.close()
        super().close()

"""A whole download into a sink, for tests of the resumable stream (fetch/http.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import requests

from image_creator.fetch.http import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RemoteInfo,
    Sleep,
    Timeout,
    open_stream,
)
from image_creator.ui.base import ProgressCallback, no_progress

Sink = Callable[[bytes], object]


@dataclass(frozen=True)
class DownloadResult:
    url: str  # as asked
    final_url: str  # after redirects
    size: int  # bytes delivered to the sink
    etag: str | None
    last_modified: datetime | None
    resumes: int  # how many times the transfer was resumed after a failure


def download(
    url: str,
    sink: Sink,
    *,
    session: requests.Session | None = None,
    on_progress: ProgressCallback = no_progress,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    timeout: Timeout = DEFAULT_TIMEOUT,
    sleep: Sleep = time.sleep,
    cancelled: threading.Event | None = None,
    expected: RemoteInfo | None = None,
    expected_size: int | None = None,
) -> DownloadResult:
    """Stream a source into ``sink`` (called with each chunk, in order, each byte once),
    resuming and checking as ``open_stream`` does. Raises SourceError when the source cannot
    be fully read.
    """
    with open_stream(
        url,
        session=session,
        on_progress=on_progress,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        sleep=sleep,
        cancelled=cancelled,
        expected=expected,
        expected_size=expected_size,
    ) as stream:
        for chunk in stream.chunks():
            sink(chunk)
        return DownloadResult(
            url=url,
            final_url=stream.final_url,
            size=stream.position,
            etag=stream.etag,
            last_modified=stream.last_modified,
            resumes=stream.resumes,
        )

"""A whole download into a sink, for tests of the resumable stream (fetch/stream.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from image_creator.fetch.client import DEFAULT_TIMEOUT, HttpClient, Sleep, Timeout
from image_creator.fetch.responses import RemoteInfo
from image_creator.fetch.retry import DEFAULT_BACKOFF, DEFAULT_RETRIES, RetryPolicy
from image_creator.progress import ProgressCallback, no_progress

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
    client: HttpClient | None = None,
    on_progress: ProgressCallback = no_progress,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    timeout: Timeout = DEFAULT_TIMEOUT,
    sleep: Sleep | None = None,
    cancelled: threading.Event | None = None,
    expected: RemoteInfo | None = None,
    expected_size: int | None = None,
) -> DownloadResult:
    """Stream a source into ``sink`` (called with each chunk, in order, each byte once),
    resuming and checking as ``HttpClient.open_stream`` does, through ``client`` or one made
    with ``retries``, ``backoff``, ``timeout`` and ``sleep``. Raises SourceError when the
    source cannot be fully read.
    """
    if client is None:
        policy = RetryPolicy(retries=retries, backoff=backoff)
        with HttpClient(policy=policy, timeout=timeout, sleep=sleep) as own:
            return download(
                url,
                sink,
                client=own,
                on_progress=on_progress,
                cancelled=cancelled,
                expected=expected,
                expected_size=expected_size,
            )
    with client.open_stream(
        url,
        on_progress=on_progress,
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

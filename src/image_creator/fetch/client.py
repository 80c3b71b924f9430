"""The run's HTTP client: one session, one retry policy, one User-Agent, the timeouts.

Made once per run (``pipeline.run``) and passed down on the Context. Its session keeps
connections alive, so the check's probes and small reads of one server share a connection
(concurrent ones share the pool). Every request is watched (fetch/watch.py): each thread
attaches its own watch to the session for the request it makes.

A source is chosen once, by its URL: ``client.source(url)`` is an HTTP source or a local
file (``file://``), both with the same methods (probe, small reads, ranged reads, stream).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import requests
from urllib3.util.retry import Retry

from image_creator.__about__ import __version__
from image_creator.config.model import CONFIG_LIMIT
from image_creator.errors import SourceError
from image_creator.fetch import probe as probing
from image_creator.fetch import ranges
from image_creator.fetch.local import LocalSource, local_path
from image_creator.fetch.responses import (
    NETWORK_ERRORS,
    PERMANENT_ERRORS,
    RETRYABLE_STATUSES,
    TEXT_LIMIT,
    RemoteInfo,
    describe,
    http_error,
    raise_if_cut,
    status_text,
)
from image_creator.fetch.retry import RetryPolicy
from image_creator.fetch.source import RemoteStream, Source
from image_creator.fetch.stream import HttpStream
from image_creator.fetch.watch import Watch, WatchedAdapter
from image_creator.progress import ProgressCallback, no_progress

logger = logging.getLogger(__name__)

USER_AGENT = f"image-creator/{__version__}"
# (connect, read) seconds; read is the longest silence tolerated between two packets
DEFAULT_TIMEOUT: tuple[float, float] = (15.0, 60.0)
# connections kept alive per host: enough for the check's and the build's workers
DEFAULT_CONNECTIONS = 16

Timeout = float | tuple[float, float]
Sleep = Callable[[float], None]


class _ThreadWatchedAdapter(WatchedAdapter):
    """A WatchedAdapter shared by threads: each thread's requests go to its own watch."""

    def __init__(self, **kwargs: Any) -> None:
        self._local = threading.local()
        super().__init__(**kwargs)

    @property
    def watch(self) -> Watch | None:
        watch: Watch | None = getattr(self._local, "watch", None)
        return watch

    @watch.setter
    def watch(self, value: Watch | None) -> None:
        self._local.watch = value


class HttpClient:
    """Use it with ``with`` (or ``close`` it). ``sleep`` replaces the waits between attempts
    (tests record them); by default a wait ends early when its transfer is cut."""

    def __init__(
        self,
        *,
        policy: RetryPolicy | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        connections: int = DEFAULT_CONNECTIONS,
        sleep: Sleep | None = None,
    ) -> None:
        self.policy = policy if policy is not None else RetryPolicy()
        self.timeout = timeout
        self._sleep = sleep
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        # no retry below ours: urllib3 only follows redirects (requests does that itself)
        adapter = _ThreadWatchedAdapter(
            max_retries=Retry(total=0, read=False),
            pool_connections=connections,
            pool_maxsize=connections,
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    # sources

    def source(self, url: str) -> Source:
        """The source ``url`` names: a local file for ``file://``, else an HTTP source."""
        path = local_path(url)
        if path is not None:
            return LocalSource(url, path)
        return HttpSource(self, url)

    def probe(self, url: str) -> RemoteInfo:
        """Size and validators of a source, without downloading it (see fetch/probe.py)."""
        return self.source(url).probe()

    def read_bytes(self, url: str, limit: int = TEXT_LIMIT) -> bytes:
        """A small document's bytes; SourceError past ``limit`` bytes, or when it does not
        come in full within TEXT_DEADLINE seconds (retries included)."""
        return self.source(url).read_bytes(limit)

    def read_text(self, url: str, limit: int = TEXT_LIMIT) -> str:
        """A small text document (a checksum file), decoded as UTF-8; see ``read_bytes``."""
        return self.read_bytes(url, limit).decode("utf-8", errors="replace")

    def read_config(self, url: str) -> bytes:
        """A config document by URL (configs carry branding images: allow room)."""
        return self.read_bytes(url, CONFIG_LIMIT)

    def read_range(self, url: str, start: int, length: int) -> bytes:
        """``length`` bytes of the source from offset ``start`` (fewer at its end)."""
        return self.source(url).read_range(start, length)

    def open_stream(
        self,
        url: str,
        *,
        on_progress: ProgressCallback = no_progress,
        cancelled: threading.Event | None = None,
        expected: RemoteInfo | None = None,
        expected_size: int | None = None,
    ) -> RemoteStream:
        """A source opened for sequential reading, resumed after failures (fetch/stream.py)."""
        return self.source(url).open_stream(
            on_progress=on_progress,
            cancelled=cancelled,
            expected=expected,
            expected_size=expected_size,
        )

    # requests

    def send(
        self,
        method: str,
        url: str,
        *,
        watch: Watch,
        retries: int,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        statuses: frozenset[int] = RETRYABLE_STATUSES,
    ) -> requests.Response:
        """A streamed request (redirects followed), tried again by the policy after a
        connection failure or a status in ``statuses``, ``retries`` times at most.

        Gives the first answer whose status is not retryable, or the last one once the
        retries are spent; raises the last network error once they are spent, at once for a
        permanent one or when ``watch`` cut the transfer. Errors are the caller's to word.
        """
        failures = 0
        while True:
            watch.arm()
            try:
                with watch.attached(self.session):
                    response = self.session.request(
                        method,
                        url,
                        headers=headers,
                        params=params,
                        stream=True,
                        timeout=self.timeout,
                        allow_redirects=True,
                    )
            except PERMANENT_ERRORS:
                raise
            except NETWORK_ERRORS as exc:
                if watch.reason is not None or failures >= retries:
                    raise
                failures += 1
                reason, delay = describe(exc), self.policy.delay(failures)
            else:
                watch.register_response(response)
                if response.status_code not in statuses or failures >= retries:
                    return response
                response.close()
                failures += 1
                reason, delay = status_text(response), self.policy.delay(failures, response)
            logger.warning("%s: %s; retrying in %.1fs", url, reason, delay)
            self.pause(delay, watch)

    def get(self, url: str, *, watch: Watch, headers: dict[str, str]) -> requests.Response:
        """A GET of a probe or a small read (``quick_retries``): the answer is 2xx or 416,
        anything else raises SourceError, worded with the URL (and the watch's cut)."""
        retries = self.policy.quick_retries
        attempts = f" (after {retries + 1} attempts)" if retries else ""
        try:
            response = self.send("GET", url, watch=watch, retries=retries, headers=headers)
        except PERMANENT_ERRORS as exc:
            raise_if_cut(url, watch)
            raise SourceError(f"{url}: {describe(exc)}") from exc
        except NETWORK_ERRORS as exc:
            raise_if_cut(url, watch)
            raise SourceError(f"{url}: {describe(exc)}{attempts}") from exc
        if response.ok or response.status_code == 416:
            return response
        response.close()
        if response.status_code in RETRYABLE_STATUSES:
            raise SourceError(f"{url}: {status_text(response)}{attempts}")
        raise http_error(url, response)

    def pause(self, seconds: float, watch: Watch) -> None:
        """Wait between two attempts of ``watch``'s transfer; a cut ends the wait."""
        watch.disarm()
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            watch.wait(seconds)


class HttpSource:
    """A source served over HTTP(S), read through the run's client."""

    def __init__(self, client: HttpClient, url: str) -> None:
        self.client = client
        self.url = url

    def probe(self) -> RemoteInfo:
        return probing.probe(self.client, self.url)

    def read_bytes(self, limit: int = TEXT_LIMIT) -> bytes:
        return ranges.read_bytes(self.client, self.url, limit)

    def read_range(self, start: int, length: int) -> bytes:
        return ranges.read_range(self.client, self.url, start, length)

    def open_stream(
        self,
        *,
        on_progress: ProgressCallback = no_progress,
        cancelled: threading.Event | None = None,
        expected: RemoteInfo | None = None,
        expected_size: int | None = None,
    ) -> RemoteStream:
        return HttpStream(
            self.client,
            self.url,
            on_progress=on_progress,
            cancelled=cancelled,
            expected=expected,
            expected_size=expected_size,
        )

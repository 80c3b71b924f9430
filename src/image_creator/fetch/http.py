"""HTTP(S) and file:// sources: probing, small reads and resumable streaming downloads.

Downloads are streamed as the server sends them (``Accept-Encoding: identity`` and no
content decoding), so a digest computed on the delivered bytes is the digest of the file as
published. A dropped connection or a 5xx is retried with exponential backoff; once bytes were
delivered, a retry resumes at that offset with ``Range`` and the validators (ETag or
Last-Modified) of the first response, and fails with a clear SourceError when the server
cannot send the rest of the *same* version: delivered bytes cannot be taken back.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import requests
import requests.adapters
import urllib3.exceptions
from urllib3.util.retry import Retry

from image_creator.__about__ import __version__
from image_creator.config.model import CONFIG_LIMIT
from image_creator.errors import SourceError, os_reason
from image_creator.localfile import open_regular
from image_creator.ui.base import ProgressCallback, no_progress

logger = logging.getLogger(__name__)

USER_AGENT = f"image-creator/{__version__}"
CHUNK_SIZE = 1024 * 1024
# (connect, read) seconds; read is the longest silence tolerated between two packets
DEFAULT_TIMEOUT: tuple[float, float] = (15.0, 60.0)
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 1.0  # seconds before the first retry, doubled for each following one
MAX_BACKOFF = 60.0
TEXT_LIMIT = 64 * 1024

Timeout = float | tuple[float, float]
Sleep = Callable[[float], None]
Sink = Callable[[bytes], object]

# statuses worth another try: the server or something in between is having a bad moment
_RETRYABLE_STATUSES = frozenset(
    {408, 425, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524}
)
# errors that will not go away by retrying
_PERMANENT_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.TooManyRedirects,
    requests.exceptions.SSLError,
)
# a connection that failed or broke: retried
_NETWORK_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
# urllib3 starts messages with the connection object: "HTTPConnection(host=..., port=...): "
_CONNECTION_PREFIX = re.compile(r"^<?\w*HTTPS?Connection(?:Pool)?\([^)]*\)>?:\s*")
_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


@dataclass(frozen=True)
class RemoteInfo:
    """What a source says about itself without sending its content."""

    url: str  # after redirects
    size: int | None  # None when the server does not tell
    etag: str | None
    last_modified: datetime | None
    accepts_ranges: bool
    # RFC 3230 instance digest (``SHA-256=...``), as MirrorBrain puts on its redirects to
    # mirrors: it names the content whichever mirror serves it
    digest: str | None = None


@dataclass(frozen=True)
class DownloadResult:
    url: str  # as asked
    final_url: str  # after redirects
    size: int  # bytes delivered to the sink
    etag: str | None
    last_modified: datetime | None
    resumes: int  # how many times the transfer was resumed after a failure


# sessions -----------------------------------------------------------------


def make_session(*, connect_retries: int = 3) -> requests.Session:
    """A Session with our User-Agent that retries connection failures (not reads, not
    statuses: those are handled per request, where resuming must be decided)."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    retry = Retry(
        total=None,
        connect=connect_retries,
        read=0,
        status=0,
        other=0,
        redirect=10,
        backoff_factor=0.5,
        raise_on_status=False,
    )
    adapter = requests.adapters.HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@contextmanager
def _session_for(session: requests.Session | None) -> Iterator[requests.Session]:
    if session is not None:
        yield session
        return
    with make_session() as own:
        yield own


# helpers ------------------------------------------------------------------


def local_path(url: str) -> Path | None:
    """The local path of a ``file://`` URL, None for other schemes."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        raise SourceError(f"{url}: file:// URLs must be local (file:///path)")
    return Path(unquote(parts.path))


def _status_text(response: requests.Response) -> str:
    """``HTTP 404 Not Found``: the standard phrase, whatever the server wrote after the code."""
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = response.reason or ""
    return f"HTTP {response.status_code} {phrase}".rstrip()


def _http_error(url: str, response: requests.Response) -> SourceError:
    return SourceError(f"{url}: {_status_text(response)}")


def _describe(exc: BaseException) -> str:
    """The root cause of a requests/urllib3 error, without the connection-pool wrapping."""
    cause = exc
    for _ in range(10):
        inner = getattr(cause, "reason", None)
        if not isinstance(inner, BaseException) and cause.args:
            inner = cause.args[0]
        if not isinstance(inner, BaseException) or inner is cause:
            break
        cause = inner
    text = _CONNECTION_PREFIX.sub("", str(cause)) or type(cause).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) from Content-Range; None for what it does not give."""
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
    if not match:
        return None, None
    first, _last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(total) if total is not None and total != "*" else None,
    )


def _strong_etag(etag: str | None) -> str | None:
    return etag if etag and not etag.startswith("W/") else None


def _backoff_delay(backoff: float, failures: int) -> float:
    return float(min(backoff * 2 ** (failures - 1), MAX_BACKOFF))


def _get(
    session: requests.Session,
    url: str,
    *,
    headers: dict[str, str],
    timeout: Timeout,
    retries: int,
    backoff: float,
    sleep: Sleep,
) -> requests.Response:
    """A streamed GET, retried on connection errors and retryable statuses; the response is
    2xx or 416, anything else raises SourceError."""
    failures = 0
    while True:
        try:
            response = session.get(
                url, headers=headers, stream=True, timeout=timeout, allow_redirects=True
            )
        except _PERMANENT_ERRORS as exc:
            raise SourceError(f"{url}: {_describe(exc)}") from exc
        except _NETWORK_ERRORS as exc:
            reason = _describe(exc)
        else:
            if response.ok or response.status_code == 416:
                return response
            response.close()
            if response.status_code not in _RETRYABLE_STATUSES:
                raise _http_error(url, response)
            reason = _status_text(response)
        failures += 1
        if failures > retries:
            raise SourceError(f"{url}: {reason} (after {failures} attempts)")
        delay = _backoff_delay(backoff, failures)
        logger.warning("%s: %s; retrying in %.1fs", url, reason, delay)
        sleep(delay)


# probe and small reads ----------------------------------------------------


def probe(
    url: str,
    *,
    session: requests.Session | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: int = 2,
    backoff: float = DEFAULT_BACKOFF,
    sleep: Sleep = time.sleep,
) -> RemoteInfo:
    """Size and validators of a source, without downloading it.

    HEAD (following redirects) first; when HEAD is refused or gives no length, a GET for the
    first byte (``Range: bytes=0-0``), whose Content-Range tells the total size. A file://
    URL is looked up on disk. Raises SourceError when the source is unreachable or missing.
    """
    path = local_path(url)
    if path is not None:
        return _probe_file(url, path)
    with _session_for(session) as http:
        try:
            head = http.head(
                url,
                headers={"Accept-Encoding": "identity"},
                timeout=timeout,
                allow_redirects=True,
            )
        except (*_PERMANENT_ERRORS, requests.exceptions.ConnectionError) as exc:
            # no connection at all (or a bad URL): a GET would not do better
            raise SourceError(f"{url}: {_describe(exc)}") from exc
        except _NETWORK_ERRORS as exc:
            logger.debug("%s: HEAD failed (%s), trying GET", url, _describe(exc))
        else:
            head.close()
            size = _content_length(head)
            if head.ok and size is not None:
                return RemoteInfo(
                    url=head.url,
                    size=size,
                    etag=head.headers.get("ETag"),
                    last_modified=_parse_date(head.headers.get("Last-Modified")),
                    accepts_ranges=head.headers.get("Accept-Ranges", "").lower() == "bytes",
                    digest=_instance_digest(head),
                )
            logger.debug("%s: HEAD answered %s without a length, trying GET", url, head.status_code)
        response = _get(
            http,
            url,
            headers={"Accept-Encoding": "identity", "Range": "bytes=0-0"},
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            sleep=sleep,
        )
        with response:
            _first, total = _content_range(response)
            if response.status_code == 206:
                size, accepts_ranges = total, True
            elif response.status_code == 416:  # an empty file has no byte 0
                size, accepts_ranges = (0 if total is None else total), True
            else:
                size = _content_length(response)
                accepts_ranges = response.headers.get("Accept-Ranges", "").lower() == "bytes"
            return RemoteInfo(
                url=response.url,
                size=size,
                etag=response.headers.get("ETag"),
                last_modified=_parse_date(response.headers.get("Last-Modified")),
                accepts_ranges=accepts_ranges,
                digest=_instance_digest(response),
            )


def _instance_digest(response: requests.Response) -> str | None:
    """The ``Digest`` header of the answer or of a redirect leading to it, strongest first."""
    found: dict[str, str] = {}
    for step in (*response.history, response):
        for part in step.headers.get("Digest", "").split(","):
            algo, separator, value = part.strip().partition("=")
            if separator and value:
                found.setdefault(algo.strip().upper(), value.strip())
    for algo in ("SHA-512", "SHA-256", "SHA", "MD5"):
        if algo in found:
            return f"{algo}={found[algo]}"
    return None


def _open_local(url: str, path: Path) -> BinaryIO:
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise SourceError(f"{url}: no such file") from None
    except OSError as exc:
        raise SourceError(f"{url}: cannot read: {os_reason(exc)}") from exc


def _probe_file(url: str, path: Path) -> RemoteInfo:
    with _open_local(url, path) as file:
        stat = os.fstat(file.fileno())
    return RemoteInfo(
        url=url,
        size=stat.st_size,
        etag=None,
        last_modified=datetime.fromtimestamp(stat.st_mtime, UTC),
        accepts_ranges=True,
    )


def read_text(
    url: str,
    limit: int = TEXT_LIMIT,
    *,
    session: requests.Session | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: int = 2,
    backoff: float = DEFAULT_BACKOFF,
    sleep: Sleep = time.sleep,
) -> str:
    """A small text document (a checksum file), decoded as UTF-8; SourceError past ``limit``
    bytes, so that a mistaken URL to a large file is not downloaded."""
    data = read_bytes(
        url, limit, session=session, timeout=timeout, retries=retries, backoff=backoff, sleep=sleep
    )
    return data.decode("utf-8", errors="replace")


def read_config(url: str) -> bytes:
    """A config document by URL, as its bytes (configs carry branding images: allow room)."""
    return read_bytes(url, CONFIG_LIMIT)


def read_bytes(
    url: str,
    limit: int = TEXT_LIMIT,
    *,
    session: requests.Session | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: int = 2,
    backoff: float = DEFAULT_BACKOFF,
    sleep: Sleep = time.sleep,
) -> bytes:
    """A small document's bytes; SourceError past ``limit`` bytes."""
    path = local_path(url)
    if path is not None:
        with _open_local(url, path) as file:
            data = file.read(limit + 1)
    else:
        with _session_for(session) as http:
            response = _get(
                http,
                url,
                headers={},
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                sleep=sleep,
            )
            with response:
                if response.status_code == 416:
                    raise _http_error(url, response)
                body = bytearray()
                try:
                    for chunk in response.iter_content(chunk_size=16 * 1024):
                        body += chunk
                        if len(body) > limit:
                            break
                except _NETWORK_ERRORS as exc:
                    raise SourceError(f"{url}: {_describe(exc)}") from exc
                data = bytes(body)
    if len(data) > limit:
        raise SourceError(f"{url}: more than {limit} bytes; expected a short document")
    return data


def read_range(
    url: str,
    start: int,
    length: int,
    *,
    session: requests.Session | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: int = 2,
    backoff: float = DEFAULT_BACKOFF,
    sleep: Sleep = time.sleep,
) -> bytes:
    """``length`` bytes of the source from offset ``start`` (fewer at its end, none past it).

    Uses a Range request; a server that ignores ranges is read from the start and the bytes
    before ``start`` are skipped.
    """
    if start < 0 or length < 0:
        raise ValueError("start and length must not be negative")
    if length == 0:
        return b""
    path = local_path(url)
    if path is not None:
        with _open_local(url, path) as file:
            file.seek(start)
            return file.read(length)
    with _session_for(session) as http:
        response = _get(
            http,
            url,
            headers={"Accept-Encoding": "identity", "Range": f"bytes={start}-{start + length - 1}"},
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            sleep=sleep,
        )
        with response:
            if response.status_code == 416:
                return b""
            try:
                if response.status_code == 206:
                    first, _total = _content_range(response)
                    if first != start:
                        raise SourceError(
                            f"{url}: asked for byte {start}, got a range from {first}"
                        )
                else:
                    _skip(response, start)
                return _read_exactly(response, length)
            except _NETWORK_ERRORS as exc:
                raise SourceError(f"{url}: {_describe(exc)}") from exc


def _read_exactly(response: requests.Response, length: int) -> bytes:
    """Up to ``length`` raw bytes of the body (fewer only at its end)."""
    data = bytearray()
    while len(data) < length:
        chunk = response.raw.read(min(CHUNK_SIZE, length - len(data)), decode_content=False)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _skip(response: requests.Response, count: int) -> int:
    """Read and drop ``count`` raw body bytes; the number actually skipped (less at the end)."""
    skipped = 0
    while skipped < count:
        chunk = response.raw.read(min(CHUNK_SIZE, count - skipped), decode_content=False)
        if not chunk:
            break
        skipped += len(chunk)
    return skipped


# streams ------------------------------------------------------------------


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
        """The next bytes of the source (up to CHUNK_SIZE), b"" at its end."""
        raise NotImplementedError

    def _receive(self) -> bytes:
        chunk = self._next_chunk()
        if chunk:
            self.position += len(chunk)
            self._on_progress(len(chunk))
        return chunk

    def chunks(self) -> Iterator[bytes]:
        """The rest of the source, in chunks of up to CHUNK_SIZE bytes."""
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


class _FileStream(RemoteStream):
    def __init__(self, url: str, path: Path, on_progress: ProgressCallback) -> None:
        super().__init__(url, on_progress)
        self._file = _open_local(url, path)
        stat = path.stat()
        self.size = stat.st_size
        self.last_modified = datetime.fromtimestamp(stat.st_mtime, UTC)

    def _next_chunk(self) -> bytes:
        try:
            return self._file.read(CHUNK_SIZE)
        except OSError as exc:
            raise SourceError(f"{self.url}: cannot read: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._file.close()
        super().close()


class _HttpStream(RemoteStream):
    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None,
        on_progress: ProgressCallback,
        retries: int,
        backoff: float,
        timeout: Timeout,
        sleep: Sleep,
    ) -> None:
        super().__init__(url, on_progress)
        self._owns_session = session is None
        self._session = session if session is not None else make_session()
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._sleep = sleep
        self._failures = 0
        self._last_modified_header: str | None = None
        self._response: requests.Response | None = None
        self._at_end = False
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    # connection

    def _failed(self, reason: str) -> None:
        """Count a failure: wait before the next attempt, or give up."""
        self._drop_response()
        self._failures += 1
        if self._failures > self._retries:
            at = f" at byte {self.position}" if self.position else ""
            raise SourceError(
                f"{self.url}: {reason}{at} (gave up after {self._failures} attempts)",
                hint="the server or the network keeps failing; try again later",
            )
        delay = _backoff_delay(self._backoff, self._failures)
        logger.warning(
            "%s: %s at byte %d; retrying in %.1fs (%d/%d)",
            self.url,
            reason,
            self.position,
            delay,
            self._failures,
            self._retries,
        )
        self._sleep(delay)

    def _drop_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _request_headers(self) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if self.position:
            headers["Range"] = f"bytes={self.position}-"
            strong = _strong_etag(self.etag)
            if strong:
                headers["If-Match"] = strong
                headers["If-Range"] = strong
            elif self._last_modified_header:
                headers["If-Range"] = self._last_modified_header
        return headers

    def _connect(self) -> None:
        """Open a response that continues at ``position``, retrying as allowed."""
        while self._response is None:
            # resume where the bytes came from: another mirror would have other validators
            target = self.final_url if self.position else self.url
            try:
                response = self._session.get(
                    target,
                    headers=self._request_headers(),
                    stream=True,
                    timeout=self._timeout,
                    allow_redirects=True,
                )
            except _PERMANENT_ERRORS as exc:
                raise SourceError(f"{self.url}: {_describe(exc)}") from exc
            except _NETWORK_ERRORS as exc:
                self._failed(_describe(exc))
                continue
            status = response.status_code
            if status in (200, 206):
                try:
                    self._use(response)
                except _NETWORK_ERRORS as exc:
                    response.close()
                    self._failed(_describe(exc))
                except BaseException:
                    response.close()
                    raise
                continue
            response.close()
            if status == 412:
                raise self._changed("the server refused the resume request (HTTP 412)")
            if status == 416 and self.size is not None and self.position >= self.size:
                self._at_end = True
                return
            if status in _RETRYABLE_STATUSES:
                self._failed(_status_text(response))
                continue
            raise _http_error(self.url, response)

    def _changed(self, detail: str) -> SourceError:
        return SourceError(
            f"{self.url}: cannot resume the download at byte {self.position}: {detail}",
            hint="the file probably changed on the server during the download; start again",
        )

    def _use(self, response: requests.Response) -> None:
        """Adopt a 200/206 response, checking that it continues the same content."""
        etag = response.headers.get("ETag")
        last_modified = response.headers.get("Last-Modified")
        first, total = _content_range(response)
        size = total if response.status_code == 206 else _content_length(response)
        if not self.position:
            if response.status_code == 206 and first not in (None, 0):
                raise SourceError(f"{self.url}: server sent a range from byte {first} unasked")
            self.final_url = response.url
            self.etag = etag
            self._last_modified_header = last_modified
            self.last_modified = _parse_date(last_modified)
            self.size = size
            self._response = response
            return

        if self.etag is not None and etag is not None and etag != self.etag:
            raise self._changed(f"its ETag changed from {self.etag} to {etag}")
        if (
            self.etag is None
            and self._last_modified_header
            and last_modified
            and last_modified != self._last_modified_header
        ):
            raise self._changed("its Last-Modified date changed")
        if self.size is not None and size is not None and size != self.size:
            raise self._changed(f"its size changed from {self.size} to {size} bytes")
        if response.status_code == 206:
            if first != self.position:
                raise self._changed(f"the server answered with a range from byte {first}")
            if self.etag is None and self._last_modified_header is None:
                logger.warning(
                    "%s: resuming at byte %d without ETag or Last-Modified to check the version",
                    self.url,
                    self.position,
                )
        else:
            # ranges ignored: the whole content again; usable only if known to be the same
            if (self.etag is None or etag is None) and (
                self._last_modified_header is None or last_modified is None
            ):
                raise self._changed(
                    "the server sent the whole file again and it cannot be identified "
                    "as the same version (no ETag or Last-Modified)"
                )
            logger.warning(
                "%s: server ignores ranges; reading %d bytes again to resume",
                self.url,
                self.position,
            )
            if _skip(response, self.position) < self.position:
                raise urllib3.exceptions.ProtocolError("connection closed while skipping")
        self._response = response
        self.resumes += 1
        logger.info("%s: resumed at byte %d", self.url, self.position)

    # reading

    def _next_chunk(self) -> bytes:
        while not self._at_end:
            if self._response is None:
                self._connect()
                continue
            try:
                # read1: what has arrived, up to a chunk. A fast link fills whole chunks, and a
                # slow one never blocks a read long, so a cancelled download stops promptly.
                chunk: bytes = self._response.raw.read1(CHUNK_SIZE, decode_content=False)
            except _NETWORK_ERRORS as exc:
                self._failed(f"connection lost ({_describe(exc)})")
                continue
            if chunk:
                self._failures = 0
                return chunk
            if self.size is not None and self.position < self.size:
                self._failed(f"connection closed early ({self.size} bytes expected)")
                continue
            self._at_end = True
            self._drop_response()
        return b""

    def close(self) -> None:
        self._drop_response()
        if self._owns_session:
            self._session.close()
        super().close()


def open_stream(
    url: str,
    *,
    session: requests.Session | None = None,
    on_progress: ProgressCallback = no_progress,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    timeout: Timeout = DEFAULT_TIMEOUT,
    sleep: Sleep = time.sleep,
) -> RemoteStream:
    """Open a source (http, https or file URL) for sequential reading; use it with ``with``.

    The first request is made here, so a missing source fails at once (SourceError
    ``"URL: HTTP 404 Not Found"``). Reading resumes transparently after dropped connections
    and 5xx answers (``retries`` consecutive failures allowed, waits of ``backoff`` seconds
    doubling each time). ``on_progress`` gets the number of bytes received, as received.
    """
    path = local_path(url)
    if path is not None:
        return _FileStream(url, path, on_progress)
    return _HttpStream(
        url,
        session=session,
        on_progress=on_progress,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        sleep=sleep,
    )


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
) -> DownloadResult:
    """Stream a source into ``sink`` (called with each chunk, in order, each byte once),
    resuming as ``open_stream`` does. Raises SourceError when the source cannot be fully read.
    """
    with open_stream(
        url,
        session=session,
        on_progress=on_progress,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        sleep=sleep,
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

"""HTTP(S) and file:// sources: probing, small reads and resumable streaming downloads.

Downloads are streamed as the server sends them (``Accept-Encoding: identity`` and no
content decoding), so a digest computed on the delivered bytes is the digest of the file as
published. A dropped connection or a 5xx is retried with exponential backoff; once bytes were
delivered, a retry resumes at that offset with ``Range`` and the validators (ETag or
Last-Modified) of the first response, and fails with a clear SourceError when the server
cannot send the rest of the *same* version: delivered bytes cannot be taken back.

What arrives is held to what was announced: a download is compared with the check's probe
(its length, and its ETag or Last-Modified when it comes from the same URL) and with the
config's size, is never read past that length, and fails with both numbers when it is shorter
or longer. Every request is watched (fetch/watch.py): a cancelled run cuts it at once, a
transfer below MIN_RATE for STALL_WINDOW is cut and resumed (STALL_RETRIES times at most),
and small documents get TEXT_DEADLINE in all.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import re
import threading
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
from image_creator.config.units import CHUNK
from image_creator.errors import Interrupted, SourceError, os_reason
from image_creator.fetch import watch as watching
from image_creator.fetch.watch import Cut, Watch, WatchedAdapter
from image_creator.localfile import open_regular
from image_creator.ui.base import ProgressCallback, no_progress

logger = logging.getLogger(__name__)

USER_AGENT = f"image-creator/{__version__}"
# (connect, read) seconds; read is the longest silence tolerated between two packets
DEFAULT_TIMEOUT: tuple[float, float] = (15.0, 60.0)
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 1.0  # seconds before the first retry, doubled for each following one
MAX_BACKOFF = 60.0
TEXT_LIMIT = 64 * 1024
# Stalls (see fetch/watch.py) a download survives, each resumed after a backoff; they are
# forgiven once a connection delivers STALL_FORGIVEN bytes (a server that sends a burst and
# stalls again every time is not making its way through a large file).
STALL_RETRIES = 2
STALL_FORGIVEN = 64 * 1024 * 1024

Timeout = float | tuple[float, float]
Sleep = Callable[[float], None]
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
    adapter = WatchedAdapter(max_retries=retry)
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


def _cut_error(url: str, watch: Watch, reason: Cut) -> Exception:
    """What a transfer cut by its watch ends with."""
    if reason in (Cut.CANCELLED, Cut.CLOSED):
        return Interrupted("cancelled")
    if reason is Cut.TIMED_OUT:
        return SourceError(
            f"{url}: {watching.deadline_text(watch.deadline or 0.0)}",
            hint="the server answers too slowly; try again later",
        )
    return SourceError(
        f"{url}: {watching.stall_text()}", hint="the server answers too slowly; try again later"
    )


def _raise_if_cut(url: str, watch: Watch) -> None:
    reason = watch.reason
    if reason is not None:
        raise _cut_error(url, watch, reason)


def _adopt(watch: Watch, response: requests.Response) -> None:
    """Register the connection of a response and its socket (see Watch.register_response)."""
    watch.register_response(response)


def _get(
    session: requests.Session,
    url: str,
    *,
    headers: dict[str, str],
    timeout: Timeout,
    retries: int,
    backoff: float,
    sleep: Sleep,
    watch: Watch,
) -> requests.Response:
    """A streamed GET, retried on connection errors and retryable statuses; the response is
    2xx or 416, anything else raises SourceError. ``watch`` (attached to ``session``) may cut
    it: the error then says why."""
    failures = 0
    while True:
        _raise_if_cut(url, watch)
        watch.arm()
        try:
            response = session.get(
                url, headers=headers, stream=True, timeout=timeout, allow_redirects=True
            )
        except _PERMANENT_ERRORS as exc:
            _raise_if_cut(url, watch)
            raise SourceError(f"{url}: {_describe(exc)}") from exc
        except _NETWORK_ERRORS as exc:
            _raise_if_cut(url, watch)
            reason = _describe(exc)
        else:
            if response.ok or response.status_code == 416:
                _adopt(watch, response)
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
        watch.disarm()
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
    URL is looked up on disk. Raises SourceError when the source is unreachable or missing,
    or does not answer within TEXT_DEADLINE.
    """
    path = local_path(url)
    if path is not None:
        return _probe_file(url, path)
    with (
        _session_for(session) as http,
        Watch(deadline=watching.TEXT_DEADLINE) as watch,
        watch.attached(http),
    ):
        watch.arm()
        try:
            head = http.head(
                url,
                headers={"Accept-Encoding": "identity"},
                timeout=timeout,
                allow_redirects=True,
            )
        except (*_PERMANENT_ERRORS, requests.exceptions.ConnectionError) as exc:
            # no connection at all (or a bad URL): a GET would not do better
            _raise_if_cut(url, watch)
            raise SourceError(f"{url}: {_describe(exc)}") from exc
        except _NETWORK_ERRORS as exc:
            _raise_if_cut(url, watch)
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
            watch=watch,
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
    bytes, so that a mistaken URL to a large file is not downloaded, or past TEXT_DEADLINE."""
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
    """A small document's bytes; SourceError past ``limit`` bytes, or when it does not come
    in full within TEXT_DEADLINE seconds (retries included), however its server drips it."""
    path = local_path(url)
    if path is not None:
        with _open_local(url, path) as file:
            data = file.read(limit + 1)
    else:
        with (
            _session_for(session) as http,
            Watch(deadline=watching.TEXT_DEADLINE) as watch,
            watch.attached(http),
        ):
            response = _get(
                http,
                url,
                headers={},
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                sleep=sleep,
                watch=watch,
            )
            with response:
                if response.status_code == 416:
                    raise _http_error(url, response)
                body = bytearray()
                try:
                    # read1: what has arrived, so that the watch sees a slow server's progress
                    while chunk := response.raw.read1(16 * 1024, decode_content=True):
                        body += chunk
                        watch.received(len(chunk))
                        if len(body) > limit:
                            break
                except _NETWORK_ERRORS as exc:
                    _raise_if_cut(url, watch)
                    raise SourceError(f"{url}: {_describe(exc)}") from exc
                # a cut connection without a length ends like a complete answer
                if watch.was_cut is not None:
                    raise _cut_error(url, watch, watch.was_cut)
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
    with _session_for(session) as http, Watch() as watch, watch.attached(http):
        response = _get(
            http,
            url,
            headers={"Accept-Encoding": "identity", "Range": f"bytes={start}-{start + length - 1}"},
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            sleep=sleep,
            watch=watch,
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
                    _skip(response, start, watch)
                data = _read_exactly(response, length, watch)
            except _NETWORK_ERRORS as exc:
                _raise_if_cut(url, watch)
                raise SourceError(f"{url}: {_describe(exc)}") from exc
            if watch.was_cut is not None:
                raise _cut_error(url, watch, watch.was_cut)
            return data


def _read_exactly(response: requests.Response, length: int, watch: Watch) -> bytes:
    """Up to ``length`` raw bytes of the body (fewer only at its end)."""
    data = bytearray()
    while len(data) < length:
        chunk = response.raw.read1(min(CHUNK, length - len(data)), decode_content=False)
        if not chunk:
            break
        watch.received(len(chunk))
        data += chunk
    return bytes(data)


def _skip(response: requests.Response, count: int, watch: Watch) -> int:
    """Read and drop ``count`` raw body bytes; the number actually skipped (less at the end)."""
    skipped = 0
    while skipped < count:
        chunk = response.raw.read1(min(CHUNK, count - skipped), decode_content=False)
        if not chunk:
            break
        watch.received(len(chunk))
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


class _FileStream(RemoteStream):
    def __init__(self, url: str, path: Path, on_progress: ProgressCallback) -> None:
        super().__init__(url, on_progress)
        self._file = _open_local(url, path)
        stat = path.stat()
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
        cancelled: threading.Event | None,
        expected: RemoteInfo | None,
        expected_size: int | None,
    ) -> None:
        super().__init__(url, on_progress)
        self._owns_session = session is None
        self._session = session if session is not None else make_session()
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._sleep = sleep
        self._expected = expected
        self._expected_size = expected_size
        self._failures = 0
        self._stalls = 0
        self._last_modified_header: str | None = None
        self._response: requests.Response | None = None
        self._at_end = False
        # bytes the source has in all (announced, else known from the check or the config)
        self._limit: int | None = None
        self._response_has_length = False  # the current answer says where its body ends
        self._connection_bytes = 0  # received on the current connection
        # held while reading: a close from another thread waits for the read it woke
        self._reading = threading.Lock()
        self._watch = Watch(cancelled=cancelled)
        self._exits = contextlib.ExitStack()
        try:
            self._exits.enter_context(self._watch)
            self._exits.enter_context(self._watch.attached(self._session))
            self._connect()
        except BaseException:
            self.close()
            raise

    # connection

    def _failed(self, reason: str) -> None:
        """Count a failure: wait before the next attempt, or give up. A cut connection
        fails for the reason of its cut: cancelled, or stalled (counted apart)."""
        self._drop_response()
        cut = self._watch.reason
        if cut is not None and cut is not Cut.STALLED:
            raise _cut_error(self.url, self._watch, cut)
        at = f" at byte {self.position}" if self.position else ""
        if self._watch.take_stall():
            reason = watching.stall_text()
            self._stalls += 1
            failures, allowed = self._stalls, STALL_RETRIES
            if self._stalls > STALL_RETRIES:
                raise SourceError(
                    f"{self.url}: {reason}{at} (gave up after {self._stalls} stalls)",
                    hint="the server or the network is too slow; try again later",
                )
        else:
            self._failures += 1
            failures, allowed = self._failures, self._retries
            if self._failures > self._retries:
                raise SourceError(
                    f"{self.url}: {reason}{at} (gave up after {self._failures} attempts)",
                    hint="the server or the network keeps failing; try again later",
                )
        delay = _backoff_delay(self._backoff, failures)
        logger.warning(
            "%s: %s at byte %d; retrying in %.1fs (%d/%d)",
            self.url,
            reason,
            self.position,
            delay,
            failures,
            allowed,
        )
        self._watch.disarm()
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
            _raise_if_cut(self.url, self._watch)
            self._watch.arm()
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
                if self._watch.reason is not None:  # a TLS handshake cut by the watch
                    self._failed(_describe(exc))
                    continue
                raise SourceError(f"{self.url}: {_describe(exc)}") from exc
            except _NETWORK_ERRORS as exc:
                self._failed(_describe(exc))
                continue
            _adopt(self._watch, response)
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
            if status == 416 and self._limit is not None and self.position >= self._limit:
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

    def _check_against_plan(self, response: requests.Response, size: int | None) -> None:
        """The first answer must be the content the check saw, of the size the config says."""
        hint = "the file changed on the server since it was checked; run the build again"
        expected = self._expected
        if expected is not None:
            if expected.size is not None and size is not None and size != expected.size:
                raise SourceError(
                    f"{self.url}: the download announces {size} bytes, the check found "
                    f"{expected.size} bytes",
                    hint=hint,
                )
            # another mirror has other validators: only the same URL can be compared
            if response.url == expected.url:
                etag = response.headers.get("ETag")
                modified = _parse_date(response.headers.get("Last-Modified"))
                if expected.etag and etag:
                    if _opaque_tag(etag) != _opaque_tag(expected.etag):
                        raise SourceError(
                            f"{self.url}: its ETag is {etag} for the download, "
                            f"{expected.etag} when checked",
                            hint=hint,
                        )
                elif expected.last_modified and modified and modified != expected.last_modified:
                    raise SourceError(
                        f"{self.url}: it was last modified {modified.isoformat()} for the "
                        f"download, {expected.last_modified.isoformat()} when checked",
                        hint=hint,
                    )
        if self._expected_size is not None and size is not None and size != self._expected_size:
            raise SourceError(
                f"{self.url}: the download announces {size} bytes, "
                f"the config's size is {self._expected_size} bytes"
            )

    def _use(self, response: requests.Response) -> None:
        """Adopt a 200/206 response, checking that it continues the same content."""
        etag = response.headers.get("ETag")
        last_modified = response.headers.get("Last-Modified")
        first, total = _content_range(response)
        size = total if response.status_code == 206 else _content_length(response)
        self._response_has_length = _content_length(response) is not None
        self._connection_bytes = 0
        if not self.position:
            if response.status_code == 206 and first not in (None, 0):
                raise SourceError(f"{self.url}: server sent a range from byte {first} unasked")
            self._check_against_plan(response, size)
            self.final_url = response.url
            self.etag = etag
            self._last_modified_header = last_modified
            self.last_modified = _parse_date(last_modified)
            self._limit = _first_known(
                size,
                self._expected.size if self._expected is not None else None,
                self._expected_size,
            )
            self.size = self._limit
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
            if _skip(response, self.position, self._watch) < self.position:
                raise urllib3.exceptions.ProtocolError("connection closed while skipping")
        self._response = response
        self.resumes += 1
        logger.info("%s: resumed at byte %d", self.url, self.position)

    # reading

    def _next_chunk(self) -> bytes:
        with self._reading:
            if self._watch.was_cut is Cut.CLOSED:
                raise Interrupted("cancelled")
            return self._read_next()

    def _read_next(self) -> bytes:
        while not self._at_end:
            if self._response is None:
                self._connect()
                continue
            wanted = CHUNK
            if self._limit is not None:
                if self.position >= self._limit:
                    self._end_at_limit(self._response)
                    continue
                wanted = min(wanted, self._limit - self.position)
            try:
                # read1: what has arrived, up to a chunk: a slow link never blocks a read long
                chunk: bytes = self._response.raw.read1(wanted, decode_content=False)
            except _NETWORK_ERRORS as exc:
                self._failed(f"connection lost ({_describe(exc)})")
                continue
            if chunk:
                self._received(len(chunk))
                return chunk
            if self._watch.was_cut is not None:  # the watch cut it: no end of the content
                self._failed("connection cut")
                continue
            if self._limit is not None and self.position < self._limit:
                self._failed(f"connection closed early ({self._limit} bytes expected)")
                continue
            self._at_end = True
            self._drop_response()
        return b""

    def _received(self, count: int) -> None:
        self._failures = 0
        self._watch.received(count)
        self._connection_bytes += count
        if self._connection_bytes >= STALL_FORGIVEN:
            self._stalls = 0  # a healthy stretch: earlier stalls are forgiven

    def _end_at_limit(self, response: requests.Response) -> None:
        """All the announced bytes came. An answer without a length of its own ends where its
        server closes it: one more byte means it sends more than announced."""
        if not self._response_has_length:
            try:
                extra = response.raw.read1(1, decode_content=False)
            except _NETWORK_ERRORS:
                extra = b""
            if extra and self._watch.was_cut is None:
                self._drop_response()
                raise SourceError(
                    f"{self.url}: the server sends more than the {self._limit} bytes announced",
                    hint="the file changed on the server since it was checked, or the server "
                    "is broken",
                )
        self._at_end = True
        self._drop_response()

    def close(self) -> None:
        # from any thread: a read blocked in another one wakes up at once (a base image's
        # download is fed to xz from a thread of its own)
        self._watch.cut(Cut.CLOSED)
        # a reader in another thread wakes up now; one sleeping between attempts is not
        # waited for long
        reading = self._reading.acquire(timeout=2.0)
        try:
            self._drop_response()
        finally:
            if reading:
                self._reading.release()
        self._exits.close()
        if self._owns_session:
            self._session.close()
        super().close()


def _first_known(*values: int | None) -> int | None:
    return next((value for value in values if value is not None), None)


def _opaque_tag(etag: str) -> str:
    """An ETag without its weakness mark: a server may mark one answer weak and not another."""
    return etag.removeprefix("W/")


def open_stream(
    url: str,
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
) -> RemoteStream:
    """Open a source (http, https or file URL) for sequential reading; use it with ``with``.

    The first request is made here, so a missing source fails at once (SourceError
    ``"URL: HTTP 404 Not Found"``). Reading resumes transparently after dropped connections,
    stalls and 5xx answers (``retries`` consecutive failures allowed, STALL_RETRIES stalls,
    waits of ``backoff`` seconds doubling each time). ``on_progress`` gets the number of
    bytes received, as received.

    ``expected``: what the check's probe found; a download that announces another size, or
    (from the same URL) another ETag or Last-Modified, fails. ``expected_size``: the config's
    size of the file, likewise. The stream never reads past the first size known of these,
    and fails when the server sends fewer or more bytes. ``cancelled``: set, the transfer
    is cut within WATCH_INTERVAL and reading raises Interrupted.
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
        cancelled=cancelled,
        expected=expected,
        expected_size=expected_size,
    )

"""What an HTTP answer says, and what a failed or cut request becomes: the pieces the probe,
the small reads and the stream share.

``RemoteInfo`` is what a source says about itself; the header readers never raise on a
malformed value (it counts as not given); the error texts name the URL and the root cause.
"""

from __future__ import annotations

import contextlib
import http.client
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus

import requests
import urllib3.exceptions

from image_creator.errors import Interrupted, SourceError
from image_creator.fetch import watch as watching
from image_creator.fetch.watch import Cut, Watch
from image_creator.units import CHUNK

# what a small document (a checksum file) may weigh by default
TEXT_LIMIT = 64 * 1024
# statuses worth another try: the server or something in between is having a bad moment
RETRYABLE_STATUSES = frozenset(
    {408, 425, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524}
)
# errors that will not go away by retrying
PERMANENT_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.TooManyRedirects,
    requests.exceptions.SSLError,
)
# a connection that failed or broke: retried
NETWORK_ERRORS = (
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


# headers ------------------------------------------------------------------


def parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) from Content-Range; None for what it does not give."""
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
    if not match:
        return None, None
    first, _last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(total) if total is not None and total != "*" else None,
    )


def opaque_tag(etag: str) -> str:
    """An ETag without its weakness mark: a server may mark one answer weak and not another."""
    return etag.removeprefix("W/")


def accepts_ranges(response: requests.Response) -> bool:
    return response.headers.get("Accept-Ranges", "").lower() == "bytes"


def instance_digest(response: requests.Response) -> str | None:
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


# bodies -------------------------------------------------------------------


def read_exactly(response: requests.Response, length: int, watch: Watch) -> bytes:
    """Up to ``length`` raw bytes of the body (fewer only at its end)."""
    data = bytearray()
    while len(data) < length:
        chunk = response.raw.read1(min(CHUNK, length - len(data)), decode_content=False)
        if not chunk:
            break
        watch.received(len(chunk))
        data += chunk
    return bytes(data)


def skip(response: requests.Response, count: int, watch: Watch) -> int:
    """Read and drop ``count`` raw body bytes; the number actually skipped (less at the end)."""
    skipped = 0
    while skipped < count:
        chunk = response.raw.read1(min(CHUNK, count - skipped), decode_content=False)
        if not chunk:
            break
        watch.received(len(chunk))
        skipped += len(chunk)
    return skipped


def give_back(response: requests.Response) -> None:
    """A body read to the end of its Content-Length: let its connection serve the next
    request (read to its announced end, the answer may not know it is over yet)."""
    if response.raw.length_remaining == 0:
        with contextlib.suppress(*NETWORK_ERRORS):
            response.raw.read(decode_content=False)


# errors -------------------------------------------------------------------


def status_text(response: requests.Response) -> str:
    """``HTTP 404 Not Found``: the standard phrase, whatever the server wrote after the code."""
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = response.reason or ""
    return f"HTTP {response.status_code} {phrase}".rstrip()


def http_error(url: str, response: requests.Response) -> SourceError:
    return SourceError(f"{url}: {status_text(response)}")


def describe(exc: BaseException) -> str:
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


def cut_error(url: str, watch: Watch, reason: Cut) -> Exception:
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


def raise_if_cut(url: str, watch: Watch) -> None:
    reason = watch.reason
    if reason is not None:
        raise cut_error(url, watch, reason)

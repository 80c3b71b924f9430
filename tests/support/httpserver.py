"""A loopback HTTP server for tests: ranges, validators, a request log and fault switches.

    server.add("/a.zim", b"...")            # serve bytes (or server.add_file("/big", path))
    server.fault("/a.zim", drop_after=100)   # misbehave on purpose
    requests.get(server.url("/a.zim"))
    assert [r.status for r in server.requests] == [200]

Every response carries Content-Length. Each request is logged before its response is sent,
so a test that has received a response always finds its record in ``server.requests``.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal
from urllib.parse import urlsplit

CHUNK_SIZE = 64 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw and answered it."""

    method: str
    path: str  # without the query string
    range: str | None  # the Range header, verbatim
    status: int
    body_length: int  # body bytes the server sent (or, for drop_after, sent before dropping)
    headers: tuple[tuple[str, str], ...] = ()  # all request headers, in order

    def header(self, name: str) -> str | None:
        """A request header's value (case-insensitive name), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class Fault:
    """How a path misbehaves; see :meth:`HttpServer.fault`."""

    status: int | None = None
    slow: int | None = None
    drop_after: int | None = None
    no_range: bool = False
    no_head: bool = False
    redirect: str | None = None
    redirect_status: int = 302
    redirect_headers: tuple[tuple[str, str], ...] = ()
    times: int | None = None


@dataclass(frozen=True)
class _Resource:
    size: int
    etag: str
    last_modified: datetime
    content_type: str
    data: bytes | None = None
    file: Path | None = None

    def open(self) -> BinaryIO:
        if self.file is not None:
            return self.file.open("rb")
        return io.BytesIO(self.data or b"")


def _http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def _parse_http_date(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """The inclusive (first, last) byte of a single-range header.

    None when the header is not a single byte range we understand (the server then ignores it
    and answers 200), "unsatisfiable" when it cannot be served (416).
    """
    match = _RANGE_RE.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    first_text, last_text = match.groups()
    if first_text == "":
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and int(last_text) < first:
        return None  # invalid syntax: ignored, the whole content is sent
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


class HttpServer:
    """A threaded HTTP server on 127.0.0.1 serving registered paths. Start it with ``with``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[str, _Resource] = {}
        self._faults: dict[str, Fault] = {}
        self._log: list[RequestRecord] = []
        self._httpd = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> HttpServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},  # shutdown() waits up to one poll interval
            name="test-http-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # addresses

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + _normalize(path)

    # content

    def add(
        self,
        path: str,
        content: bytes,
        *,
        content_type: str = "application/octet-stream",
        last_modified: datetime | None = None,
    ) -> str:
        """Serve ``content`` at ``path`` (replacing what was there); return its URL."""
        resource = _Resource(
            size=len(content),
            etag=f'"{hashlib.sha256(content).hexdigest()[:32]}"',
            last_modified=last_modified or datetime.now(UTC),
            content_type=content_type,
            data=bytes(content),
        )
        with self._lock:
            self._resources[_normalize(path)] = resource
        return self.url(path)

    def add_file(
        self,
        path: str,
        file: Path,
        *,
        content_type: str = "application/octet-stream",
        last_modified: datetime | None = None,
    ) -> str:
        """Serve a file from disk at ``path``; return its URL. Its ETag is its sha256 now."""
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
        stat = file.stat()
        resource = _Resource(
            size=stat.st_size,
            etag=f'"{digest.hexdigest()[:32]}"',
            last_modified=last_modified or datetime.fromtimestamp(stat.st_mtime, UTC),
            content_type=content_type,
            file=file,
        )
        with self._lock:
            self._resources[_normalize(path)] = resource
        return self.url(path)

    def remove(self, path: str) -> None:
        with self._lock:
            self._resources.pop(_normalize(path), None)

    def etag(self, path: str) -> str:
        """The ETag served for ``path``, quotes included."""
        with self._lock:
            return self._resources[_normalize(path)].etag

    # faults

    def fault(
        self,
        path: str,
        *,
        status: int | None = None,
        slow: int | None = None,
        drop_after: int | None = None,
        no_range: bool = False,
        no_head: bool = False,
        redirect: str | None = None,
        redirect_status: int = 302,
        redirect_headers: tuple[tuple[str, str], ...] = (),
        times: int | None = None,
    ) -> None:
        """Make ``path`` misbehave (replacing its previous fault).

        status: answer this status (with a short body) instead of the content.
        slow: send the body at most this many bytes per second.
        drop_after: close the connection after this many body bytes (Content-Length promises
            the full body, so clients see a truncated response).
        no_range: ignore Range and If-Range and answer 200 with the whole body.
        no_head: answer HEAD with 405.
        redirect: answer ``redirect_status`` with Location pointing at this other path.
        redirect_headers: more headers on that redirect (a MirrorBrain ``Digest``, say).
        times: apply to that many requests only, then behave again (None: always).
        """
        new = Fault(
            status=status,
            slow=slow,
            drop_after=drop_after,
            no_range=no_range,
            no_head=no_head,
            redirect=redirect,
            redirect_status=redirect_status,
            redirect_headers=redirect_headers,
            times=times,
        )
        with self._lock:
            self._faults[_normalize(path)] = new

    def clear_faults(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(_normalize(path), None)

    # log

    @property
    def requests(self) -> tuple[RequestRecord, ...]:
        """Every request so far, oldest first."""
        with self._lock:
            return tuple(self._log)

    def requests_for(self, path: str) -> list[RequestRecord]:
        return [record for record in self.requests if record.path == _normalize(path)]

    def content_gets(self, path: str | None = None) -> list[RequestRecord]:
        """GETs answered 200 or 206 with a body (actual downloads), optionally for one path."""
        return [
            record
            for record in self.requests
            if record.method == "GET"
            and record.status in (200, 206)
            and record.body_length > 0
            and (path is None or record.path == _normalize(path))
        ]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # used by the handler

    def _lookup(self, path: str) -> tuple[_Resource | None, Fault | None]:
        with self._lock:
            fault = self._faults.get(path)
            if fault is not None and fault.times is not None:
                if fault.times <= 1:
                    del self._faults[path]
                else:
                    self._faults[path] = replace(fault, times=fault.times - 1)
            return self._resources.get(path), fault

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)


def _normalize(path: str) -> str:
    path = urlsplit(path).path or "/"
    return path if path.startswith("/") else "/" + path


@dataclass(frozen=True)
class _Plan:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    resource: _Resource | None = None
    first: int = 0
    length: int = 0  # body bytes to send
    content_length: int | None = None  # Content-Length when it is not ``length`` (304)


def _make_handler(server: HttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        owner = server

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client closing its connection mid-answer is normal (an aborted download, a
        # kept-alive connection dropped); anything else still gets its traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    owner: HttpServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests read server.requests instead

    def _serve(self, *, head: bool) -> None:
        path = _normalize(self.path)
        resource, fault = self.owner._lookup(path)
        fault = fault or Fault()
        plan = self._plan(resource, fault, head=head)
        send = 0 if head else plan.length
        if fault.drop_after is not None and not head:
            send = min(send, fault.drop_after)
        self.owner._record(
            RequestRecord(
                method=self.command,
                path=path,
                range=self.headers.get("Range"),
                status=plan.status,
                body_length=send,
                headers=tuple(self.headers.items()),
            )
        )
        self.send_response(plan.status)
        for name, value in plan.headers:
            self.send_header(name, value)
        content_length = plan.length if plan.content_length is None else plan.content_length
        self.send_header("Content-Length", str(content_length))
        self.end_headers()
        if head:
            return
        try:
            self._send_body(plan, send, fault.slow)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if send < plan.length:  # drop_after: cut the connection mid-body
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _plan(self, resource: _Resource | None, fault: Fault, *, head: bool) -> _Plan:
        if head and fault.no_head:
            return _error_plan(HTTPStatus.METHOD_NOT_ALLOWED, (("Allow", "GET"),))
        if fault.redirect is not None:
            location = self.owner.url(fault.redirect)
            return _error_plan(
                HTTPStatus(fault.redirect_status),
                (("Location", location), *fault.redirect_headers),
            )
        if fault.status is not None:
            return _error_plan(HTTPStatus(fault.status))
        if resource is None:
            return _error_plan(HTTPStatus.NOT_FOUND)

        validators = (
            ("ETag", resource.etag),
            ("Last-Modified", _http_date(resource.last_modified)),
        )
        if self._not_modified(resource):
            # a 304's Content-Length, if any, must be that of the full representation
            return _Plan(status=304, headers=validators, content_length=resource.size)
        headers: tuple[tuple[str, str], ...] = (
            *validators,
            ("Content-Type", resource.content_type),
        )
        if fault.no_range:
            return _Plan(status=200, headers=headers, resource=resource, length=resource.size)
        headers = (*headers, ("Accept-Ranges", "bytes"))

        range_header = self.headers.get("Range")
        if range_header is None or not self._if_range_holds(resource):
            return _Plan(status=200, headers=headers, resource=resource, length=resource.size)
        byte_range = parse_range(range_header, resource.size)
        if byte_range is None:
            return _Plan(status=200, headers=headers, resource=resource, length=resource.size)
        if isinstance(byte_range, str):
            return _error_plan(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                (("Content-Range", f"bytes */{resource.size}"),),
            )
        first, last = byte_range
        return _Plan(
            status=206,
            headers=(*headers, ("Content-Range", f"bytes {first}-{last}/{resource.size}")),
            resource=resource,
            first=first,
            length=last - first + 1,
        )

    def _not_modified(self, resource: _Resource) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
            return "*" in tags or resource.etag in tags
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since is not None:
            since = _parse_http_date(if_modified_since)
            return since is not None and resource.last_modified.replace(microsecond=0) <= since
        return False

    def _if_range_holds(self, resource: _Resource) -> bool:
        if_range = self.headers.get("If-Range")
        if if_range is None:
            return True
        if if_range.startswith('"'):
            return if_range == resource.etag
        since = _parse_http_date(if_range)
        return since is not None and resource.last_modified.replace(microsecond=0) <= since

    def _send_body(self, plan: _Plan, send: int, slow: int | None) -> None:
        chunk_size = CHUNK_SIZE if slow is None else max(1, slow // 20)
        if plan.resource is None:
            chunks: Iterator[bytes] = iter([plan.body[:send]])
        else:
            chunks = _read_chunks(plan.resource, plan.first, send, chunk_size)
        started = time.monotonic()
        sent = 0
        for chunk in chunks:
            self.wfile.write(chunk)
            sent += len(chunk)
            if slow is not None:
                self.wfile.flush()
                ahead = sent / slow - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        self.wfile.flush()


def _read_chunks(resource: _Resource, first: int, length: int, chunk_size: int) -> Iterator[bytes]:
    with resource.open() as handle:
        handle.seek(first)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(chunk_size, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def _error_plan(status: HTTPStatus, headers: tuple[tuple[str, str], ...] = ()) -> _Plan:
    body = f"{status.value} {status.phrase}\n".encode()
    return _Plan(
        status=status.value,
        headers=(*headers, ("Content-Type", "text/plain; charset=utf-8")),
        body=body,
        length=len(body),
    )

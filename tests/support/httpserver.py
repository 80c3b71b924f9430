"""A loopback HTTP server for tests: ranges, validators, a request log and fault switches.

    server.add("/a.zim", b"...")            # serve bytes (or server.add_file("/big", path))
    server.fault("/a.zim", drop_after=100)   # misbehave on purpose
    requests.get(server.url("/a.zim"))
    assert [r.status for r in server.requests] == [200]

Every response carries Content-Length (but ``longer_than_announced``'s). Each request is
logged before its response is sent, so a test that has received a response always finds its
record in ``server.requests``. A client that hangs up while the server stalls, drips or sends
an endless body is logged in ``server.hangups``: the proof that a transfer was cut by its
client before the fault was over.
"""

from __future__ import annotations

import hashlib
import io
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
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
    client_port: int = 0  # the client's end of the connection: one port, one connection

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
    drip: float | None = None
    stall: float | None = None
    stall_after: int = 0
    stall_ranged: bool = True
    longer_than_announced: bool = False
    short_by: int = 0
    change_after_probe: bytes | None = None
    silent: float | None = None
    corrupt: tuple[int, int] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: str | None = None


@dataclass(frozen=True)
class Hangup:
    """A client that closed its connection while the server was misbehaving on purpose."""

    path: str
    fault: str  # "silent", "stall", "drip" or "endless"
    after: float  # seconds into the fault
    left: float  # seconds the fault still had to run (inf for an endless body)


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
        self._hangups: list[Hangup] = []
        self._paused = 0.0  # seconds the slow fault held bodies back, in all
        self._httpd = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._host_rate: int | None = None
        self._host_sent = 0.0
        self._host_clock = time.monotonic()

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
        drip: float | None = None,
        stall: float | None = None,
        stall_after: int = 0,
        stall_ranged: bool = True,
        longer_than_announced: bool = False,
        short_by: int = 0,
        change_after_probe: bytes | None = None,
        silent: float | None = None,
        corrupt: tuple[int, int] | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        retry_after: str | None = None,
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
        drip: send the body one byte every ``drip`` seconds.
        stall: after the headers and ``stall_after`` body bytes, send nothing for ``stall``
            seconds (then the rest); a body no longer than ``stall_after`` does not stall, nor
            (with ``stall_ranged=False``) an answer to a Range request.
        longer_than_announced: GET answers with no Content-Length (the connection closes at
            the end of the body) and sends the content followed by filler, endlessly.
        short_by: GET announces and sends that many bytes fewer than HEAD announces.
        change_after_probe: once a HEAD was answered, serve these bytes instead (another
            ETag, a later Last-Modified), as if the file changed after a check.
        silent: answer nothing, not even a status line, for ``silent`` seconds (then as usual).
        corrupt: serve other bytes (each one inverted) in ``[first, end)`` of the content, as
            a mirror holding another file would (same length, same validators).
        headers: more headers on every answer of ``path`` (``Link: <...>; rel=duplicate``).
        retry_after: with ``status``, send this Retry-After header (seconds or an HTTP date).
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
            drip=drip,
            stall=stall,
            stall_after=stall_after,
            stall_ranged=stall_ranged,
            longer_than_announced=longer_than_announced,
            short_by=short_by,
            change_after_probe=change_after_probe,
            silent=silent,
            corrupt=corrupt,
            headers=headers,
            retry_after=retry_after,
        )
        with self._lock:
            self._faults[_normalize(path)] = new

    def clear_faults(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(_normalize(path), None)

    def cap_host(self, rate: int | None) -> None:
        """Send at most ``rate`` body bytes per second in all, whatever the number of
        connections (a mirror's uplink); None lifts the cap."""
        with self._lock:
            self._host_rate = rate
            self._host_sent = 0.0
            self._host_clock = time.monotonic()

    def _throttle(self, count: int) -> None:
        """Wait until the host cap lets ``count`` more bytes out (a shared token bucket)."""
        with self._lock:
            rate = self._host_rate
            if rate is None:
                return
            now = time.monotonic()
            # the bucket refills at ``rate``, holding at most a tenth of a second of bytes
            self._host_sent = max(0.0, self._host_sent - (now - self._host_clock) * rate)
            self._host_clock = now
            self._host_sent += count
            wait = (self._host_sent - rate / 10) / rate
        if wait > 0:
            time.sleep(wait)

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

    def connections(self) -> int:
        """How many connections the requests so far came on."""
        return len({record.client_port for record in self.requests})

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    @property
    def hangups(self) -> tuple[Hangup, ...]:
        """Clients that closed their connection during a stall, a drip or an endless body."""
        with self._lock:
            return tuple(self._hangups)

    def hangups_for(self, path: str) -> list[Hangup]:
        return [hangup for hangup in self.hangups if hangup.path == _normalize(path)]

    @property
    def paused(self) -> float:
        """Seconds the ``slow`` fault held bodies back to keep to its rate, in all."""
        with self._lock:
            return self._paused

    def _held_back(self, seconds: float) -> None:
        with self._lock:
            self._paused += seconds

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

    def _hung_up(self, hangup: Hangup) -> None:
        with self._lock:
            self._hangups.append(hangup)

    def _changed_after_probe(self, path: str, content: bytes) -> None:
        """The HEAD was answered: from now on ``content`` is served, in a later version."""
        with self._lock:
            old = self._resources.get(path)
            fault = self._faults.get(path)
            if fault is not None:
                self._faults[path] = replace(fault, change_after_probe=None)
        moment = (old.last_modified if old else datetime.now(UTC)) + timedelta(seconds=10)
        self.add(path, content, last_modified=moment)


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
        if fault.short_by and not head and plan.resource is not None:
            plan = replace(plan, length=max(0, plan.length - fault.short_by))
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
                client_port=int(self.client_address[1]),
            )
        )
        if fault.silent is not None:
            started = time.monotonic()
            if self._hangup_within(fault.silent):
                waited = time.monotonic() - started
                self.owner._hung_up(Hangup(path, "silent", waited, fault.silent - waited))
                self.close_connection = True
                return
        if head and fault.change_after_probe is not None and resource is not None:
            self.owner._changed_after_probe(path, fault.change_after_probe)
        endless = fault.longer_than_announced and not head and plan.resource is not None
        self.send_response(plan.status)
        for name, value in (*plan.headers, *fault.headers):
            self.send_header(name, value)
        if endless:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            content_length = plan.length if plan.content_length is None else plan.content_length
            self.send_header("Content-Length", str(content_length))
        self.end_headers()
        if head:
            return
        try:
            self.wfile.flush()
            if (
                fault.stall is not None
                and send > fault.stall_after
                and (fault.stall_ranged or plan.status != 206)
                and not self._stall(path, plan, fault)
            ):
                return
            if fault.drip is not None:
                self._drip(path, plan, send, fault)
                return
            self._send_body(
                plan, send, fault.slow, skip=_stalled_part(plan, fault), corrupt=fault.corrupt
            )
            if endless:
                self._send_endlessly(path)
                return
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
            extra = () if fault.retry_after is None else (("Retry-After", fault.retry_after),)
            return _error_plan(HTTPStatus(fault.status), extra)
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

    def _stall(self, path: str, plan: _Plan, fault: Fault) -> bool:
        """Send ``stall_after`` bytes, then nothing for ``stall`` seconds; False when the
        client hung up meanwhile."""
        assert fault.stall is not None
        head = _stalled_part(plan, fault)
        if head:
            self._send_body(plan, head, None)
        started = time.monotonic()
        if self._hangup_within(fault.stall):
            waited = time.monotonic() - started
            self.owner._hung_up(Hangup(path, "stall", waited, fault.stall - waited))
            self.close_connection = True
            return False
        return True

    def _drip(self, path: str, plan: _Plan, send: int, fault: Fault) -> None:
        """The body, one byte every ``drip`` seconds, until its end or the client hangs up."""
        assert fault.drip is not None
        body = b"".join(_plan_chunks(plan, send, CHUNK_SIZE))
        started = time.monotonic()
        for index in range(len(body)):
            try:
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                hung_up = True
            else:
                hung_up = self._hangup_within(fault.drip)
            if hung_up:
                waited = time.monotonic() - started
                left = (len(body) - index) * fault.drip
                self.owner._hung_up(Hangup(path, "drip", waited, left))
                self.close_connection = True
                return

    def _send_endlessly(self, path: str) -> None:
        """Filler after the body, until the client hangs up (a minute at most)."""
        started = time.monotonic()
        filler = b"\0" * CHUNK_SIZE
        while time.monotonic() - started < 60:
            try:
                self.wfile.write(filler)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                waited = time.monotonic() - started
                self.owner._hung_up(Hangup(path, "endless", waited, float("inf")))
                return

    def _hangup_within(self, seconds: float) -> bool:
        """Wait ``seconds``, watching the connection: True as soon as the client closes it."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if not readable:
                continue
            try:
                peeked = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                return True
            if not peeked:
                return True
            time.sleep(min(left, 0.05))  # the client sent something: not a hang-up
        return False

    def _send_body(
        self,
        plan: _Plan,
        send: int,
        slow: int | None,
        *,
        skip: int = 0,
        corrupt: tuple[int, int] | None = None,
    ) -> None:
        chunk_size = CHUNK_SIZE if slow is None else max(1, slow // 20)
        chunks = _plan_chunks(plan, send, chunk_size, skip=skip)
        started = time.monotonic()
        sent = 0
        offset = plan.first + skip
        for plain in chunks:
            chunk = _corrupted(plain, offset, corrupt) if plan.resource is not None else plain
            offset += len(chunk)
            self.owner._throttle(len(chunk))
            self.wfile.write(chunk)
            sent += len(chunk)
            if slow is not None:
                self.wfile.flush()
                ahead = sent / slow - (time.monotonic() - started)
                if ahead > 0:
                    self.owner._held_back(ahead)
                    time.sleep(ahead)
        self.wfile.flush()


def _corrupted(chunk: bytes, offset: int, corrupt: tuple[int, int] | None) -> bytes:
    """``chunk`` (content from ``offset``) with the bytes inside ``corrupt`` inverted."""
    if corrupt is None:
        return chunk
    first = max(corrupt[0], offset) - offset
    last = min(corrupt[1], offset + len(chunk)) - offset
    if first >= last:
        return chunk
    inverted = bytes(byte ^ 0xFF for byte in chunk[first:last])
    return chunk[:first] + inverted + chunk[last:]


def _stalled_part(plan: _Plan, fault: Fault) -> int:
    """Body bytes sent before a stall (a body no longer than that is sent without one)."""
    if fault.stall is None or plan.length <= fault.stall_after:
        return 0
    if not fault.stall_ranged and plan.status == 206:
        return 0
    return fault.stall_after


def _plan_chunks(plan: _Plan, send: int, chunk_size: int, *, skip: int = 0) -> Iterator[bytes]:
    """The first ``send`` bytes of the plan's body, but the first ``skip``."""
    if plan.resource is None:
        return iter([plan.body[skip:send]])
    return _read_chunks(plan.resource, plan.first + skip, send - skip, chunk_size)


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

"""A watch over one HTTP transfer, from a thread of its own: it cuts the transfer's connection
when the run is cancelled, when the transfer stalls, or when its deadline passes.

A worker blocked in a socket read cannot be interrupted otherwise: signals go to the main
thread, and a socket timeout only ends a complete silence (a server dripping a byte every few
seconds never trips it). Shutting the socket down from another thread wakes the blocked read
at once, with an end of file or an error; the reader then asks the watch why (``reason``) and
turns it into the right outcome: cancelled, retry after a stall, or give up.

The connections a transfer uses are registered with its watch as urllib3 hands them out
(``WatchedAdapter``), so that even a request still waiting for its answer's headers is cut.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from enum import StrEnum
from types import TracebackType
from typing import Any

import requests
import requests.adapters
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from image_creator.system import signals

# A transfer slower than MIN_RATE bytes per second over STALL_WINDOW seconds has stalled.
MIN_RATE = 1024
STALL_WINDOW = 30.0
# How long a small document (a config, a checksum file, a token, a registry manifest) may take
# in all, however its server drips it: retries and waits included.
TEXT_DEADLINE = 60.0
# How often the watch looks: a cancelled run is cut within this (and its cleanup starts).
WATCH_INTERVAL = 0.25


class Cut(StrEnum):
    """Why a watch cut its transfer."""

    CANCELLED = "cancelled"
    STALLED = "stalled"
    TIMED_OUT = "timed out"
    CLOSED = "closed"


def stall_text() -> str:
    return f"stalled (less than {MIN_RATE} bytes/s for {STALL_WINDOW:g}s)"


def deadline_text(deadline: float) -> str:
    return f"no complete answer within {deadline:g}s"


def _shut(connection: Any) -> None:
    sock = connection
    if not isinstance(sock, socket.socket):
        sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        # the plain socket's shutdown, also under TLS: SSLSocket.shutdown would drop the TLS
        # state under the feet of the thread reading it
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Watch:
    """Watches one transfer; use it with ``with``, report received bytes with ``received``.

    ``cancelled``: the run's cancel flag. ``deadline``: seconds the whole transfer may take.
    ``rate``: whether a stall (see MIN_RATE, STALL_WINDOW) cuts it. Once cut as cancelled,
    timed out or closed, every connection it gets is cut as soon as it has a socket.
    """

    def __init__(
        self,
        *,
        cancelled: threading.Event | None = None,
        deadline: float | None = None,
        rate: bool = True,
    ) -> None:
        self.deadline = deadline
        self._cancelled = cancelled
        self._ends_at = None if deadline is None else time.monotonic() + deadline
        self._rate = rate
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self._reason: Cut | None = None
        self._total = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._armed = False
        self._woken = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="transfer-watch", daemon=True)

    # lifecycle

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        self._woken.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    @contextlib.contextmanager
    def attached(self, session: requests.Session) -> Iterator[Watch]:
        """Register the connections ``session`` hands out meanwhile with this watch."""
        adapters = [a for a in session.adapters.values() if isinstance(a, WatchedAdapter)]
        for adapter in adapters:
            adapter.watch = self
        try:
            yield self
        finally:
            for adapter in adapters:
                if adapter.watch is self:
                    adapter.watch = None

    # what the transfer tells

    def register(self, connection: Any) -> None:
        with self._lock:
            if connection not in self._connections:
                self._connections.append(connection)
            final = self._reason not in (None, Cut.STALLED)
        if final:
            _shut(connection)

    def register_response(self, response: requests.Response) -> None:
        """Register the connection an answer came on, and its socket: a connection that will
        close after this answer (HTTP/1.0, ``Connection: close``) hands its socket over to
        the answer and forgets it."""
        connection = getattr(response.raw, "connection", None)
        if connection is not None:
            self.register(connection)
        # urllib3's answer wraps http.client's, whose buffered reader wraps the socket's
        reader = getattr(getattr(response.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
        if isinstance(sock, socket.socket):
            self.register(sock)

    def received(self, count: int) -> None:
        self._total += count

    def arm(self) -> None:
        """A new attempt starts: the stall clock starts afresh."""
        with self._lock:
            self._samples.clear()
            self._samples.append((time.monotonic(), self._total))
            self._armed = True

    def disarm(self) -> None:
        with self._lock:
            self._armed = False

    @property
    def reason(self) -> Cut | None:
        """Why the transfer was cut, if it was (checked first: the run may be cancelled)."""
        if (self._cancelled is not None and self._cancelled.is_set()) or signals.interrupted():
            return Cut.CANCELLED
        if self._ends_at is not None and time.monotonic() >= self._ends_at:
            return Cut.TIMED_OUT
        return self._reason

    @property
    def was_cut(self) -> Cut | None:
        """Why the watch did cut the transfer's connections, if it did."""
        return self._reason

    def take_stall(self) -> bool:
        """Whether the transfer was cut for a stall; the watch forgets it (a retry follows)."""
        with self._lock:
            if self._reason is Cut.STALLED:
                self._reason = None
                return True
        return False

    def wait(self, seconds: float) -> None:
        """Sleep between attempts; ends early when the transfer is cut for good."""
        self.disarm()
        if self._ends_at is not None:
            seconds = min(seconds, max(0.0, self._ends_at - time.monotonic()))
        self._woken.wait(seconds)

    def cut(self, reason: Cut) -> None:
        """Cut every connection of the transfer now, from any thread."""
        with self._lock:
            if self._reason is None or self._reason is Cut.STALLED:
                self._reason = reason
            self._armed = False
            connections = list(self._connections)
        if reason is not Cut.STALLED:
            self._woken.set()
        for connection in connections:
            _shut(connection)

    # the watching thread

    def _run(self) -> None:
        while not self._stopped.wait(WATCH_INTERVAL):
            reason = self._due()
            if reason is not None:
                self.cut(reason)

    def _due(self) -> Cut | None:
        reason = self.reason
        if reason is not None and reason is not Cut.STALLED:
            return reason  # again: a connection may have got its socket since
        if not self._rate:
            return None
        now = time.monotonic()
        with self._lock:
            if not self._armed:
                return None
            self._samples.append((now, self._total))
            window = STALL_WINDOW
            # keep the newest sample at least a window old, and those after it
            while len(self._samples) > 1 and now - self._samples[1][0] >= window:
                self._samples.popleft()
            started, total_then = self._samples[0]
            if now - started < window:
                return None
            if self._total - total_then >= MIN_RATE * (now - started):
                return None
        return Cut.STALLED


# urllib3 pools that tell the watch of their adapter which connection serves a request


class _Watching:
    adapter: WatchedAdapter | None = None

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        watch = self.adapter.watch if self.adapter is not None else None
        if watch is not None:
            watch.register(connection)
        return connection


class _WatchedHTTPPool(_Watching, HTTPConnectionPool):
    pass


class _WatchedHTTPSPool(_Watching, HTTPSConnectionPool):
    pass


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose connections are registered with ``watch`` while it is set."""

    watch: Watch | None = None

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        if isinstance(pool, _Watching):
            pool.adapter = self
        return pool

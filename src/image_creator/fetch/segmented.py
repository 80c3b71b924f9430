"""One file over several connections at once: Range requests written where they belong.

A file whose server answers ``Accept-Ranges: bytes`` with a known length, and that is large
enough to gain from it, is cut into up to ``max_connections`` segments. Each runs on a
connection of its own and is written with ``pwrite`` at its offset straight into the
destination, whose room was reserved first (``posix_fallocate``): no spool file, no second
copy. The way aria2 does it, a connection that has finished its segment takes the second
half of the largest segment still running, so a slow connection never makes the tail of a
download wait; a dropped connection resumes its own segment (bounded retries, backoff).

The bytes are handed to ``consume`` in file order as the contiguous written prefix grows,
read back from the page cache (``pread`` of bytes just written: a memory copy, about a tenth
of what sha256 costs), so a digest and a cache copy are complete with the last byte, without
keeping segments in memory (a slow first segment would hold the whole rest of the file).

Mirrors: segments spread over the ``sources`` still healthy, the least busy first (best
ranked on a tie). A mirror that fails, stalls or serves a bad piece (when piece hashes are
known) is dropped for the rest of the run (``MirrorHealth``); a bad piece is fetched again
from another mirror, not the whole file. Every connection is watched (fetch/watch.py): a
cancelled run cuts it, a stalled one is cut and its segment resumed or moved.

Connections are counted by a limiter shared by the whole run (``-T``): the first connection
of a file waits for a slot, the others are taken only when free.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import requests

from image_creator.errors import ChecksumMismatchError, Interrupted, SourceError
from image_creator.fetch.announced import CHANGED_HINT
from image_creator.fetch.checksums import new_hasher
from image_creator.fetch.client import DEFAULT_TIMEOUT, Sleep, Timeout
from image_creator.fetch.mirrors import MirrorHealth, PieceHashes, Source
from image_creator.fetch.positional import FileAt, RandomAccess
from image_creator.fetch.responses import NETWORK_ERRORS, content_range, describe, opaque_tag
from image_creator.fetch.retry import DEFAULT_BACKOFF, DEFAULT_RETRIES
from image_creator.fetch.watch import Cut, Watch
from image_creator.progress import ProgressCallback, no_progress
from image_creator.system import signals
from image_creator.units import CHUNK

logger = logging.getLogger(__name__)

# Up to 5 connections per file: aria2's -s5/-x5, which upstream drives, and what a mirror
# capping each connection allows before the host's own cap or the disk becomes the limit.
MAX_CONNECTIONS = 5
# A segment is at least 20 MiB (aria2's min-split-size): at the 16 MiB/s a capped mirror
# gives a connection, about a second and a quarter, so a request's round trip and slow start
# cost a few percent at most. Files under twice this size keep one connection.
MIN_SEGMENT = 20 * 1024 * 1024
# A running segment is split for an idle connection only while both halves would be at
# least this large: below it, the new request costs about what it saves.
MIN_STEAL = 4 * 1024 * 1024
# A mirror whose connections deliver less than 1/CRAWL_FACTOR of the best one's, measured
# over CRAWL_OBSERVED seconds of its connections, crawls: dropped, its segments move.
CRAWL_FACTOR = 8
CRAWL_OBSERVED = 5.0
# consecutive failures of a segment on one mirror before it is dropped: the run's policy
RETRIES = DEFAULT_RETRIES
STALLS = 2  # stalls a segment survives on one mirror
BACKOFF = DEFAULT_BACKOFF
MAX_BACKOFF = 30.0
# how often the coordinating thread looks for progress, failures and free connection slots
_TICK = 0.1

# how a request failed: worth a retry, stalled, no connection at all, or refused for good
_RETRY, _STALLED, _UNREACHABLE, _REFUSED = "retry", "stalled", "unreachable", "refused"

Consume = Callable[[bytes], None]


class ConnectionLimiter(Protocol):
    """A semaphore: ``threading.BoundedSemaphore`` is one."""

    def acquire(self, blocking: bool = ..., timeout: float | None = ...) -> bool: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """How a file came: ``connections`` at most at once, ``requests`` made, bytes per
    source URL, pieces fetched again after a bad piece hash."""

    size: int
    connections: int
    requests: int
    bytes_from: dict[str, int]
    pieces_refetched: int = 0


@dataclass(frozen=True)
class Transfer:
    """How a file came: connections at most at once (0: from the cache), bytes per URL."""

    connections: int
    bytes_from: dict[str, int] = field(default_factory=dict)


def worth_splitting(size: int | None, *, min_segment: int = MIN_SEGMENT) -> bool:
    return size is not None and size >= 2 * min_segment


def plan_segments(size: int, connections: int, min_segment: int) -> list[tuple[int, int]]:
    """``[begin, end)`` of the first segments: as many as connections allow, each at least
    ``min_segment`` (one for a small file), equal but for the last."""
    count = max(1, min(connections, size // max(1, min_segment)))
    step = max(1, -(-size // count))
    return [(begin, min(size, begin + step)) for begin in range(0, size, step)] or [(0, 0)]


@dataclass(eq=False)
class _Segment:
    begin: int
    start: int  # next byte to fetch
    end: int  # exclusive; moves down when an idle connection takes the second half
    owner: int | None = None  # the worker fetching it
    reserved: int = 0  # bytes being written at ``start`` right now
    avoid: frozenset[str] = frozenset()  # hosts that served it badly (a refetched piece)

    @property
    def left(self) -> int:
        return self.end - self.start


@dataclass(eq=False)
class _Write:
    begin: int
    end: int
    host: str


@dataclass
class _State:
    size: int
    segments: list[_Segment]  # a partition of [0, size), sorted by begin
    redo: list[_Segment] = field(default_factory=list)  # pieces fetched again
    writes: list[_Write] = field(default_factory=list)
    bytes_from: dict[str, int] = field(default_factory=dict)
    busy: dict[str, int] = field(default_factory=dict)  # connections per host now
    # bytes per host, and seconds its connections spent delivering them
    host_bytes: dict[str, int] = field(default_factory=dict)
    host_time: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    active: int = 0
    most_active: int = 0
    ranged: bool = False  # a 206 came: ranges work, more connections may start
    whole: bool = False  # the server ignored the range: one connection has it all
    error: BaseException | None = None


class _Download:
    def __init__(
        self,
        target: int | RandomAccess,
        size: int,
        sources: Sequence[Source],
        *,
        session: requests.Session,
        consume: Consume,
        pieces: PieceHashes | None,
        limiter: ConnectionLimiter | None,
        cancelled: threading.Event | None,
        on_progress: ProgressCallback,
        health: MirrorHealth,
        max_connections: int,
        min_segment: int,
        min_steal: int,
        retries: int,
        backoff: float,
        timeout: Timeout,
        sleep: Sleep | None,
    ) -> None:
        self._file = FileAt(target) if isinstance(target, int) else target
        self._size = size
        self._sources = list(sources)
        self._session = session
        self._consume = consume
        self._pieces = pieces
        self._limiter = limiter
        self._cancelled = cancelled
        self._on_progress = on_progress
        self._health = health
        self._max_connections = max(1, max_connections)
        self._min_steal = min_steal
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._sleep = sleep
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._state = _State(
            size=size,
            segments=[
                _Segment(begin, begin, end)
                for begin, end in plan_segments(size, self._max_connections, min_segment)
            ],
        )
        self._threads: list[threading.Thread] = []
        self._watches: dict[Watch, str] = {}  # the host of each running transfer
        self._refetched = 0
        self._piece_attempts: dict[int, int] = {}

    # the coordinating thread ---------------------------------------------------------------

    def run(self) -> Outcome:
        self._file.reserve(self._size)
        if not self._size:
            return Outcome(size=0, connections=0, requests=0, bytes_from={})
        self._acquire_first()
        try:
            self._start_worker()
            verified = 0
            while verified < self._size:
                self._start_more()
                done = self._wait_for_prefix(verified)
                verified = self._hand_over(verified, done)
            with self._lock:
                state = self._state
                return Outcome(
                    size=self._size,
                    connections=state.most_active,
                    requests=state.requests,
                    bytes_from=dict(state.bytes_from),
                    pieces_refetched=self._refetched,
                )
        finally:
            self._stop_workers()

    def _acquire_first(self) -> None:
        if self._limiter is None:
            return
        while not self._limiter.acquire(timeout=_TICK):
            self._raise_if_cancelled()

    def _raise_if_cancelled(self) -> None:
        if (self._cancelled is not None and self._cancelled.is_set()) or signals.interrupted():
            raise Interrupted("cancelled")

    def _start_worker(self) -> None:
        with self._lock:
            self._state.active += 1
            self._state.most_active = max(self._state.most_active, self._state.active)
            index = len(self._threads)
        thread = threading.Thread(
            target=self._work, args=(index,), name=f"segment-{index}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _drop_crawlers(self) -> None:
        """Drop a mirror far slower than the best one, and move its segments at once."""
        with self._lock:
            state = self._state
            rates = {
                host: state.host_bytes.get(host, 0) / seconds
                for host, seconds in state.host_time.items()
                if seconds >= CRAWL_OBSERVED and self._health.usable(host)
            }
        if len(rates) < 2:
            return
        best = max(rates.values())
        for host, rate in rates.items():
            if rate * CRAWL_FACTOR >= best:
                continue
            reason = (
                f"crawls ({rate / 1024:.0f} KiB/s per connection, "
                f"the best mirror {best / 1024:.0f} KiB/s)"
            )
            if self._health.drop(host, reason):
                with self._lock:
                    watches = [w for w, on in self._watches.items() if on == host]
                for watch in watches:
                    watch.cut(Cut.STALLED)  # its segment goes on elsewhere

    def _start_more(self) -> None:
        """Another connection when there is work for it and the run has a slot free."""
        self._drop_crawlers()
        while True:
            with self._lock:
                state = self._state
                if (
                    not state.ranged
                    or state.whole
                    or state.active >= self._max_connections
                    or not self._work_left()
                ):
                    return
            if self._limiter is not None and not self._limiter.acquire(blocking=False):
                return
            self._start_worker()

    def _work_left(self) -> bool:
        """Whether an idle connection would find something to fetch (lock held)."""
        state = self._state
        if any(s.owner is None and s.left > 0 for s in (*state.redo, *state.segments)):
            return True
        return any(s.left - s.reserved >= 2 * self._min_steal for s in state.segments)

    def _prefix(self) -> int:
        """Bytes written from the start without a gap, a piece being fetched again excepted
        (lock held)."""
        state = self._state
        prefix = 0
        for segment in state.segments:
            prefix = segment.start
            if segment.left > 0:
                break
        for redo in state.redo:
            if redo.left > 0:
                prefix = min(prefix, redo.begin)
        return prefix

    def _wait_for_prefix(self, verified: int) -> int:
        with self._lock:
            while True:
                if self._state.error is not None:
                    raise self._state.error
                prefix = self._prefix()
                ready = self._ready(verified, prefix)
                if ready > verified:
                    return ready
                self._changed.wait(_TICK)
                self._raise_if_cancelled()
                if self._state.active == 0 and self._state.error is None:
                    # every connection ended but the file is not complete: restart one
                    break
        self._start_more_or_one()
        return verified

    def _start_more_or_one(self) -> None:
        with self._lock:
            if self._state.active > 0 or not self._work_left():
                return
        if self._limiter is not None:
            self._acquire_first()
        self._start_worker()

    def _ready(self, verified: int, prefix: int) -> int:
        """How far the bytes can be handed over: whole pieces when pieces are checked."""
        if self._pieces is None or prefix >= self._size:
            return prefix
        length = self._pieces.length
        return max(verified, prefix // length * length)

    def _hand_over(self, verified: int, ready: int) -> int:
        """Check the pieces of ``[verified, ready)`` and hand their bytes over in order; a
        bad piece is queued again, from another mirror, and stops the hand-over there."""
        if self._pieces is None:
            self._read_back(verified, ready, self._consume)
            return ready
        length = self._pieces.length
        position = verified
        while position < ready:
            index = position // length
            end = min(position + length, self._size)
            hasher = new_hasher(self._pieces.algo)
            self._read_back(position, end, hasher.update)
            expected = self._pieces.digests[index] if index < len(self._pieces.digests) else ""
            if hasher.hexdigest() != expected.lower():
                self._bad_piece(index, position, end)
                return position
            self._read_back(position, end, self._consume)
            position = end
        return position

    def _read_back(self, begin: int, end: int, consume: Consume) -> None:
        position = begin
        while position < end:
            data = self._file.read_at(position, min(CHUNK, end - position))
            if not data:
                raise SourceError("the downloaded file shrank while it was written")
            consume(data)
            position += len(data)

    def _bad_piece(self, index: int, begin: int, end: int) -> None:
        """Queue a bad piece again. Written by one mirror, that mirror is dropped and the
        piece comes from another; written by several (a segment boundary), it comes again
        whole from one of them, which is then to blame if it is still bad."""
        with self._lock:
            writes = self._state.writes
            hosts = {w.host for w in writes if w.begin < end and w.end > begin}
            # the piece's bytes will be rewritten: forget who wrote them
            self._state.writes = [
                part
                for w in writes
                for part in (
                    _Write(w.begin, min(w.end, begin), w.host),
                    _Write(max(w.begin, end), w.end, w.host),
                )
                if part.end > part.begin
            ]
            attempts = self._piece_attempts.get(index, 0) + 1
            self._piece_attempts[index] = attempts
        blamed = hosts if len(hosts) == 1 else set()
        logger.debug("piece %d bad, written by %s (attempt %d)", index, sorted(hosts), attempts)
        for host in blamed:
            self._health.drop(host, f"piece {index} does not match the metalink's hash")
        with self._lock:
            left = [s for s in self._sources if self._health.usable(s.host)]
            if not left or attempts > len(self._sources) + 1:
                raise ChecksumMismatchError(
                    f"{self._sources[0].url}: piece {index} (bytes {begin}-{end - 1}) does not "
                    f"match its hash, and no other mirror is left to fetch it from",
                    hint="the file changed on the server or was corrupted in transit",
                )
            self._refetched += 1
            self._state.redo.append(_Segment(begin, begin, end, avoid=frozenset(blamed)))
            self._changed.notify_all()
        self._start_more_or_one()

    def _stop_workers(self) -> None:
        self._stop.set()
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.cut(Cut.CLOSED)
        for thread in self._threads:
            thread.join()

    # the workers ---------------------------------------------------------------------------

    def _work(self, index: int) -> None:
        try:
            while not self._stop.is_set():
                segment = self._take(index)
                if segment is None:
                    return
                self._fetch(index, segment)
        except BaseException as exc:  # handed to the coordinating thread
            with self._lock:
                if self._state.error is None and not self._stop.is_set():
                    self._state.error = exc
                self._stop.set()
        finally:
            with self._lock:
                self._state.active -= 1
                self._changed.notify_all()
            if self._limiter is not None:
                self._limiter.release()

    def _take(self, index: int) -> _Segment | None:
        """An unowned segment (a refetched piece first), or the second half of the largest
        running one, or None: nothing left worth a connection."""
        with self._lock:
            state = self._state
            for segment in (*state.redo, *state.segments):
                if segment.owner is None and segment.left > 0:
                    segment.owner = index
                    return segment
            if not state.ranged or state.whole:
                return None
            running = [s for s in state.segments if s.left - s.reserved >= 2 * self._min_steal]
            if not running:
                return None
            victim = max(running, key=lambda s: s.left - s.reserved)
            middle = victim.start + victim.reserved + (victim.left - victim.reserved) // 2
            taken = _Segment(middle, middle, victim.end, owner=index)
            victim.end = middle
            bisect.insort(state.segments, taken, key=lambda s: s.begin)
            logger.debug("connection %d takes bytes %d-%d", index, middle, taken.end - 1)
            return taken

    def _pick(self, segment: _Segment) -> Source:
        """The least busy healthy source (the best ranked on a tie) (lock held)."""
        usable = [
            s for s in self._sources if self._health.usable(s.host) and s.host not in segment.avoid
        ]
        if not usable and self._sources[0].host not in segment.avoid:
            usable = [self._sources[0]]  # mirrors all dropped: the file's own URL still
        if not usable:
            raise SourceError(
                f"{self._sources[0].url}: every mirror failed",
                hint="the mirrors are unreachable or serve other content; try again later",
            )
        return min(usable, key=lambda s: self._state.busy.get(s.host, 0))

    def _fetch(self, index: int, segment: _Segment) -> None:
        failures = stalls = 0
        while segment.left > 0 and not self._stop.is_set():
            with self._lock:
                source = self._pick(segment)
                self._state.busy[source.host] = self._state.busy.get(source.host, 0) + 1
                self._state.requests += 1
            try:
                outcome = self._transfer(segment, source)
            finally:
                with self._lock:
                    self._state.busy[source.host] -= 1
            if outcome is None:
                failures = stalls = 0
                continue
            reason, kind = outcome
            if not self._health.usable(source.host) and self._others(source, segment):
                failures = stalls = 0  # dropped meanwhile (a bad piece, a crawl): go elsewhere
                continue
            if kind in (_UNREACHABLE, _REFUSED) and self._others(source, segment):
                self._health.drop(source.host, reason)  # the others take over at once
                failures = stalls = 0
                continue
            if kind is _REFUSED:
                raise SourceError(f"{source.url}: {reason}")
            if kind is _STALLED:
                stalls += 1
            else:
                failures += 1
            if failures > self._retries or stalls > STALLS:
                self._give_up_on(source, segment, reason)
                failures = stalls = 0
                continue
            delay = min(self._backoff * 2 ** ((failures or stalls) - 1), MAX_BACKOFF)
            logger.warning(
                "%s: %s at byte %d; retrying in %.1fs", source.url, reason, segment.start, delay
            )
            self._pause(delay)

    def _others(self, source: Source, segment: _Segment) -> list[Source]:
        return [
            s
            for s in self._sources
            if s.host != source.host and self._health.usable(s.host) and s.host not in segment.avoid
        ]

    def _give_up_on(self, source: Source, segment: _Segment, reason: str) -> None:
        """A source that keeps failing: dropped if others remain, else the download fails."""
        if not self._others(source, segment):
            raise SourceError(
                f"{source.url}: {reason} at byte {segment.start}",
                hint="the server or the network keeps failing; try again later",
            )
        self._health.drop(source.host, reason)

    def _pause(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(left, _TICK)):
                return
            self._raise_if_cancelled()

    def _transfer(self, segment: _Segment, source: Source) -> tuple[str, str] | None:
        """One request for the rest of ``segment``: None once it is complete, else why it
        ended and what kind of failure it is (_RETRY, _STALLED, _UNREACHABLE, _REFUSED)."""
        headers = {"Accept-Encoding": "identity"}
        with self._lock:
            whole_file = segment.begin == 0 and segment.start == 0 and not self._state.ranged
            headers["Range"] = f"bytes={segment.start}-{segment.end - 1}"
        if source.etag and not source.etag.startswith("W/"):
            headers["If-Match"] = source.etag
        with Watch(cancelled=self._cancelled) as watch:
            with self._lock:
                self._watches[watch] = source.host
            try:
                watch.arm()
                try:
                    # the connection is the watch's as soon as the pool hands it out: a
                    # cancelled run cuts even a request still waiting for its answer
                    with watch.attached(self._session):
                        response = self._session.get(
                            source.url, headers=headers, stream=True, timeout=self._timeout
                        )
                except NETWORK_ERRORS as exc:
                    # no connection at all: a mirror that is down, not one having a hiccup
                    unreachable = isinstance(exc, requests.ConnectionError)
                    return self._ended(watch, describe(exc), unreachable=unreachable)
                watch.register_response(response)
                with response:
                    problem = self._check(response, segment, source, whole_file)
                    if problem is not None:
                        return problem
                    try:
                        self._receive(response, segment, source, watch)
                    except NETWORK_ERRORS as exc:
                        return self._ended(watch, f"connection lost ({exc})")
                    if segment.left > 0:
                        return self._ended(watch, "connection closed early")
                return None
            finally:
                with self._lock:
                    self._watches.pop(watch, None)

    def _ended(self, watch: Watch, reason: str, *, unreachable: bool = False) -> tuple[str, str]:
        cut = watch.reason
        if cut is not None and cut is not Cut.STALLED:
            raise Interrupted("cancelled")
        if watch.take_stall():
            return "stalled", _STALLED
        return reason, _UNREACHABLE if unreachable else _RETRY

    def _check(
        self, response: requests.Response, segment: _Segment, source: Source, whole_file: bool
    ) -> tuple[str, str] | None:
        status = response.status_code
        if status == 206:
            first, total = content_range(response)
            if first != segment.start or total != self._size:
                return (
                    f"answered bytes from {first} of {total}, asked from {segment.start} of "
                    f"{self._size}",
                    _REFUSED,
                )
            etag = response.headers.get("ETag")
            if source.etag and etag is not None and opaque_tag(etag) != opaque_tag(source.etag):
                raise SourceError(
                    f"{source.url}: its ETag changed from {source.etag} to {etag}",
                    hint=CHANGED_HINT,
                )
            with self._lock:
                self._state.ranged = True
            return None
        if status == 200:
            length = response.headers.get("Content-Length", "")
            if whole_file and length.isdigit() and int(length) == self._size:
                self._take_whole(segment)
                return None
            return "ignored the Range request", _REFUSED
        if status == 412:
            raise SourceError(
                f"{source.url}: the file changed on the server (HTTP 412 to If-Match)",
                hint="the file changed on the server since it was checked; run the build again",
            )
        refused = status in (400, 401, 403, 404, 405, 410, 416, 501)
        return f"HTTP {status}", _REFUSED if refused else _RETRY

    def _take_whole(self, segment: _Segment) -> None:
        """The server sent the whole file for the first request: it all comes on this one
        connection (no other has started: they wait for a first 206)."""
        with self._lock:
            state = self._state
            state.whole = True
            segment.end = self._size
            state.segments = [segment]
        logger.info("%s: ranges ignored, one connection", self._sources[0].url)

    def _receive(
        self, response: requests.Response, segment: _Segment, source: Source, watch: Watch
    ) -> None:
        """Write what arrives at its place; who wrote which bytes is recorded as they are
        (before the prefix moves on: a piece is checked as soon as it is complete)."""
        raw = response.raw
        written: _Write | None = None
        last = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                wanted = min(CHUNK, segment.left)
            if wanted <= 0:
                return
            chunk = raw.read1(wanted, decode_content=False)
            if not chunk:
                return
            watch.received(len(chunk))
            with self._lock:
                count = min(len(chunk), segment.left)  # the end may have moved meanwhile
                segment.reserved = count
                at = segment.start
            try:
                self._file.write_at(at, memoryview(chunk)[:count])
            finally:
                with self._lock:
                    state = self._state
                    if written is None or written not in state.writes:
                        written = _Write(segment.start, segment.start, source.host)
                        state.writes.append(written)
                    written.end += count
                    state.bytes_from[source.url] = state.bytes_from.get(source.url, 0) + count
                    now = time.monotonic()
                    host = source.host
                    state.host_bytes[host] = state.host_bytes.get(host, 0) + count
                    state.host_time[host] = state.host_time.get(host, 0.0) + now - last
                    last = now
                    segment.start += count
                    segment.reserved = 0
                    self._changed.notify_all()
            self._on_progress(count)


def fetch_segmented(
    target: int | RandomAccess,
    size: int,
    sources: Sequence[Source],
    *,
    session: requests.Session,
    consume: Consume,
    pieces: PieceHashes | None = None,
    limiter: ConnectionLimiter | None = None,
    cancelled: threading.Event | None = None,
    on_progress: ProgressCallback = no_progress,
    health: MirrorHealth | None = None,
    max_connections: int = MAX_CONNECTIONS,
    min_segment: int = MIN_SEGMENT,
    min_steal: int = MIN_STEAL,
    retries: int = RETRIES,
    backoff: float = BACKOFF,
    timeout: Timeout = DEFAULT_TIMEOUT,
    sleep: Sleep | None = None,
) -> Outcome:
    """Fetch ``size`` bytes from ``sources`` (the same file; best ranked first) into
    ``target`` (a file descriptor open for reading and writing, or any RandomAccess), over
    up to ``max_connections`` connections.

    ``consume`` gets every byte once, in file order, as the written prefix grows (a digest, a
    cache copy): when this returns, it has had the whole file. With ``pieces``, each piece is
    checked before its bytes are handed over, and fetched again elsewhere if it is bad.
    ``limiter``: the run's connection slots (the first is waited for, more are taken only
    when free). Raises SourceError when no source can deliver, Interrupted when
    ``cancelled`` is set, ChecksumMismatchError when a bad piece has nowhere else to come
    from. Nothing is left running when it returns or raises.
    """
    if not sources:
        raise ValueError("no source to fetch from")
    return _Download(
        target,
        size,
        sources,
        session=session,
        consume=consume,
        pieces=pieces,
        limiter=limiter,
        cancelled=cancelled,
        on_progress=on_progress,
        health=health or MirrorHealth(),
        max_connections=max_connections,
        min_segment=min_segment,
        min_steal=min_steal,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        sleep=sleep,
    ).run()

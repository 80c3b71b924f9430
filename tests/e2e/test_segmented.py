"""Segmented downloads (fetch/segmented.py) against real loopback servers.

No clock is asserted: what the servers saw (ranges, requests, bytes per mirror) and what was
written (bytes, sha256) are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from image_creator.digests import ChecksumAlgo
from image_creator.errors import ChecksumMismatchError, Interrupted, SourceError
from image_creator.fetch import segmented, watch
from image_creator.fetch.client import HttpClient
from image_creator.fetch.mirrors import MirrorHealth, PieceHashes, Source
from image_creator.fetch.segmented import Outcome, fetch_segmented, plan_segments
from tests.support.httpserver import HttpServer

KIB = 1024
MIB = 1024 * KIB
PAYLOAD = random.Random(12).randbytes(3 * MIB + 4321)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
PIECE = 256 * KIB
PIECES = PieceHashes(
    ChecksumAlgo.SHA256,
    PIECE,
    tuple(
        hashlib.sha256(PAYLOAD[at : at + PIECE]).hexdigest() for at in range(0, len(PAYLOAD), PIECE)
    ),
)
# small segments, so that a 3 MiB file is split as a large one would be
SMALL = {"min_segment": 512 * KIB, "min_steal": 64 * KIB}


def no_sleep(_seconds: float) -> None:
    pass


@pytest.fixture
def second_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with HttpServer() as server:
        yield server


def fetch_into(
    path: Path, sources: list[Source], **options: object
) -> tuple[Outcome, str, list[int]]:
    """Fetch into ``path``; the outcome, the sha256 of what ``consume`` got, and the sizes of
    what it got, in order."""
    digest = hashlib.sha256()
    handed: list[int] = []

    def consume(data: bytes) -> None:
        digest.update(data)
        handed.append(len(data))

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with requests.Session() as session:
            outcome = fetch_segmented(
                fd,
                len(PAYLOAD),
                sources,
                session=session,
                consume=consume,
                **options,  # type: ignore[arg-type]
            )
    finally:
        os.close(fd)
    return outcome, digest.hexdigest(), handed


def ranges_seen(server: HttpServer, path: str) -> list[tuple[int, int]]:
    found = []
    for record in server.content_gets(path):
        assert record.range is not None and record.range.startswith("bytes=")
        first, _, last = record.range.removeprefix("bytes=").partition("-")
        found.append((int(first), int(last)))
    return sorted(found)


def test_plan_segments_covers_the_file_in_equal_parts() -> None:
    assert plan_segments(100, 5, 20) == [(0, 20), (20, 40), (40, 60), (60, 80), (80, 100)]
    assert plan_segments(100, 5, 30) == [(0, 34), (34, 68), (68, 100)]
    assert plan_segments(10, 5, 20) == [(0, 10)]
    assert plan_segments(0, 5, 20) == [(0, 0)]


def test_a_capped_mirror_is_fetched_over_several_connections(
    http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    # each connection capped: the first one cannot finish before the others start
    http_server.fault("/big.zim", slow=2 * MIB)
    target = tmp_path / "big.zim"
    outcome, digest, handed = fetch_into(target, [Source(url)], max_connections=4, **SMALL)

    assert target.read_bytes() == PAYLOAD
    assert digest == PAYLOAD_SHA256  # handed over in file order, every byte once
    assert sum(handed) == len(PAYLOAD)
    assert outcome.connections == 4
    assert outcome.bytes_from == {url: len(PAYLOAD)}
    seen = ranges_seen(http_server, "/big.zim")
    assert len(seen) >= 4
    # the four planned segments were asked for, each ending where the next begins
    planned = plan_segments(len(PAYLOAD), 4, SMALL["min_segment"])
    for begin, end in planned:
        assert any(first == begin for first, _ in seen)
    assert {last for _, last in seen} >= {planned[0][1] - 1}


def test_a_slow_connection_has_its_segment_split_for_the_idle_ones(
    http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    # only the first request (segment 0) crawls; the others finish at once
    http_server.fault("/big.zim", slow=256 * KIB, times=1)
    target = tmp_path / "big.zim"
    outcome, digest, _ = fetch_into(target, [Source(url)], max_connections=3, **SMALL)

    assert target.read_bytes() == PAYLOAD
    assert digest == PAYLOAD_SHA256
    first_segment_end = plan_segments(len(PAYLOAD), 3, SMALL["min_segment"])[0][1]
    seen = ranges_seen(http_server, "/big.zim")
    stolen = [first for first, _ in seen if 0 < first < first_segment_end]
    assert stolen, f"nothing taken from the slow segment: {seen}"
    # the slow connection stopped early: it sent much less than its segment
    slow = http_server.content_gets("/big.zim")[0]
    assert slow.range == f"bytes=0-{first_segment_end - 1}"
    assert outcome.requests == len(seen)


def test_a_dropped_connection_resumes_its_own_segment(
    http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", drop_after=300 * KIB, times=3)
    target = tmp_path / "big.zim"
    outcome, digest, _ = fetch_into(target, [Source(url)], sleep=no_sleep, **SMALL)

    assert target.read_bytes() == PAYLOAD
    assert digest == PAYLOAD_SHA256
    gets = http_server.requests_for("/big.zim")
    dropped = [record for record in gets if record.body_length == 300 * KIB]
    assert len(dropped) == 3
    # each dropped range was asked again from where it broke
    seen = {record.range for record in gets}
    for record in dropped:
        assert record.range is not None
        first, _, last = record.range.removeprefix("bytes=").partition("-")
        assert f"bytes={int(first) + 300 * KIB}-{last}" in seen or any(
            r is not None and r.startswith(f"bytes={int(first) + 300 * KIB}-") for r in seen
        )
    assert outcome.requests == len(gets)


def test_a_server_that_ignores_ranges_gets_one_connection(
    http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", no_range=True)
    target = tmp_path / "big.zim"
    outcome, digest, _ = fetch_into(target, [Source(url)], **SMALL)

    assert target.read_bytes() == PAYLOAD
    assert digest == PAYLOAD_SHA256
    gets = http_server.requests_for("/big.zim")
    assert [(record.status, record.body_length) for record in gets] == [(200, len(PAYLOAD))]
    assert outcome.connections == 1


def test_a_changed_file_fails_instead_of_mixing_versions(
    http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    with pytest.raises(SourceError, match="changed"):
        fetch_into(tmp_path / "big.zim", [Source(url, etag='"another-version"')], **SMALL)


def test_two_mirrors_share_the_segments(
    http_server: HttpServer, second_server: HttpServer, tmp_path: Path
) -> None:
    first = http_server.add("/big.zim", PAYLOAD)
    second = second_server.add("/mirror/big.zim", PAYLOAD)
    for server, path in ((http_server, "/big.zim"), (second_server, "/mirror/big.zim")):
        server.fault(path, slow=2 * MIB)
    target = tmp_path / "big.zim"
    outcome, digest, _ = fetch_into(target, [Source(first), Source(second)], **SMALL)

    assert target.read_bytes() == PAYLOAD
    assert digest == PAYLOAD_SHA256
    assert set(outcome.bytes_from) == {first, second}
    assert sum(outcome.bytes_from.values()) == len(PAYLOAD)
    sent = {
        server: sum(r.body_length for r in server.content_gets())
        for server in (http_server, second_server)
    }
    assert sent[http_server] > 0 and sent[second_server] > 0


def test_a_bad_piece_is_fetched_again_from_the_other_mirror(
    http_server: HttpServer, second_server: HttpServer, tmp_path: Path
) -> None:
    good = http_server.add("/big.zim", PAYLOAD)
    bad = second_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", slow=2 * MIB)
    # the second mirror holds another file everywhere: whatever it serves is a bad piece
    second_server.fault("/big.zim", slow=2 * MIB, corrupt=(0, len(PAYLOAD)))
    health = MirrorHealth()
    target = tmp_path / "big.zim"
    outcome, digest, _ = fetch_into(
        target, [Source(good), Source(bad)], pieces=PIECES, health=health, **SMALL
    )

    assert target.read_bytes() == PAYLOAD
    assert digest == PAYLOAD_SHA256
    assert outcome.pieces_refetched >= 1
    assert set(health.dropped) == {f"127.0.0.1:{second_server.port}"}
    assert second_server.content_gets("/big.zim"), "the bad mirror was never used"


def test_a_bad_piece_with_no_other_mirror_fails(http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", corrupt=(PIECE * 3 + 10, PIECE * 3 + 11))
    with pytest.raises(ChecksumMismatchError, match="piece 3"):
        fetch_into(tmp_path / "big.zim", [Source(url)], pieces=PIECES, **SMALL)


def test_a_dead_mirror_is_dropped_and_the_others_deliver(
    http_server: HttpServer, tmp_path: Path
) -> None:
    with socket_nobody_listens_on() as dead_port:
        dead = f"http://127.0.0.1:{dead_port}/big.zim"
        url = http_server.add("/big.zim", PAYLOAD)
        health = MirrorHealth()
        target = tmp_path / "big.zim"
        outcome, digest, _ = fetch_into(
            target, [Source(dead), Source(url)], health=health, sleep=no_sleep, **SMALL
        )

    assert target.read_bytes() == PAYLOAD
    assert digest == PAYLOAD_SHA256
    assert outcome.bytes_from == {url: len(PAYLOAD)}
    assert list(health.dropped) == [f"127.0.0.1:{dead_port}"]


def test_a_cancelled_download_stops_every_connection(
    http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", slow=256 * KIB)
    cancelled = threading.Event()
    received = 0

    def progress(count: int) -> None:
        nonlocal received
        received += count
        if received > 100 * KIB:
            cancelled.set()

    before = {thread.name for thread in threading.enumerate()}
    with pytest.raises(Interrupted):
        fetch_into(tmp_path / "big.zim", [Source(url)], cancelled=cancelled, on_progress=progress)
    left = {thread.name for thread in threading.enumerate()} - before
    assert not {name for name in left if name.startswith("segment-")}
    assert received < len(PAYLOAD)


def test_a_cancelled_download_cuts_a_request_still_waiting_for_its_answer(
    http_server: HttpServer, tmp_path: Path
) -> None:
    """The server takes the request and answers nothing for ten minutes, longer than the
    client's read timeout: only the watch, told of the connection as the pool handed it out,
    can end the wait."""
    url = http_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", silent=600)
    cancelled = threading.Event()

    def cancel_once_asked() -> None:
        while not http_server.content_gets("/big.zim"):
            time.sleep(0.01)
        cancelled.set()

    canceller = threading.Thread(target=cancel_once_asked, daemon=True)
    canceller.start()
    fd = os.open(tmp_path / "big.zim", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with HttpClient(timeout=(15, 900)) as client, pytest.raises(Interrupted):
            fetch_segmented(
                fd,
                len(PAYLOAD),
                [Source(url)],
                session=client.session,
                consume=lambda data: None,
                cancelled=cancelled,
                max_connections=1,
            )
    finally:
        os.close(fd)
    canceller.join()
    # the client hung up during the silence, with most of it still to come
    hangups = http_server.hangups_for("/big.zim")
    assert [hangup.fault for hangup in hangups] == ["silent"]
    assert hangups[0].left > 500


@contextlib.contextmanager
def socket_nobody_listens_on() -> Iterator[int]:
    """A loopback port that refuses connections (bound, not listening)."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield int(bound.getsockname()[1])


class InMemory:
    """A RandomAccess other than a file descriptor (as a rootless build's sink may be)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reserved: list[int] = []

    def reserve(self, size: int) -> None:
        self.reserved.append(size)
        self.data = bytearray(size)

    def write_at(self, offset: int, data: memoryview) -> None:
        self.data[offset : offset + len(data)] = data

    def read_at(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset : offset + size])


def test_any_random_access_target_will_do(http_server: HttpServer) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", slow=2 * MIB)
    target = InMemory()
    digest = hashlib.sha256()
    with requests.Session() as session:
        outcome = fetch_segmented(
            target,
            len(PAYLOAD),
            [Source(url)],
            session=session,
            consume=digest.update,
            min_segment=SMALL["min_segment"],
            min_steal=SMALL["min_steal"],
        )
    assert target.reserved == [len(PAYLOAD)]
    assert bytes(target.data) == PAYLOAD
    assert digest.hexdigest() == PAYLOAD_SHA256
    assert outcome.connections >= 2


def test_a_stalled_connection_is_cut_and_its_segment_finished_by_others(
    http_server: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "STALL_WINDOW", 0.6)
    monkeypatch.setattr(watch, "WATCH_INTERVAL", 0.05)
    url = http_server.add("/big.zim", PAYLOAD)
    # the first connection sends 100 KiB of its segment, then nothing for a minute
    http_server.fault("/big.zim", stall=60.0, stall_after=100 * KIB, times=1)
    target = tmp_path / "big.zim"
    _, digest, _ = fetch_into(target, [Source(url)], sleep=no_sleep, **SMALL)

    assert target.read_bytes() == PAYLOAD
    assert digest == PAYLOAD_SHA256
    [hangup] = http_server.hangups_for("/big.zim")
    assert hangup.fault == "stall"
    assert hangup.left > 30  # cut long before the server would have gone on


def test_the_run_limiter_bounds_the_connections(http_server: HttpServer, tmp_path: Path) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", slow=2 * MIB)
    limiter = threading.BoundedSemaphore(2)
    outcome, digest, _ = fetch_into(
        tmp_path / "big.zim", [Source(url)], limiter=limiter, max_connections=5, **SMALL
    )
    assert digest == PAYLOAD_SHA256
    assert outcome.connections == 2
    # every slot was given back
    assert limiter.acquire(blocking=False) and limiter.acquire(blocking=False)


def test_a_crawling_mirror_is_dropped_and_its_segments_move(
    http_server: HttpServer,
    second_server: HttpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(segmented, "CRAWL_OBSERVED", 1.0)
    fast = http_server.add("/big.zim", PAYLOAD)
    slow = second_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", slow=2 * MIB)
    second_server.fault("/big.zim", slow=32 * KIB)  # 64 times slower per connection
    health = MirrorHealth()
    target = tmp_path / "big.zim"
    outcome, digest, _ = fetch_into(
        target, [Source(fast), Source(slow)], health=health, sleep=no_sleep, **SMALL
    )

    assert target.read_bytes() == PAYLOAD
    assert digest == PAYLOAD_SHA256
    [(host, reason)] = health.dropped.items()
    assert host == f"127.0.0.1:{second_server.port}"
    assert reason.startswith("crawls")
    assert outcome.bytes_from.get(slow, 0) < 512 * KIB
    # its connections were cut before they sent what they were asked for
    asked = sum(record.body_length for record in second_server.content_gets("/big.zim"))
    assert asked > outcome.bytes_from.get(slow, 0)

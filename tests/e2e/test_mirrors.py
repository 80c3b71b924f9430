"""A file with mirrors (a metalink, or Link: rel=duplicate headers), fetched the way a build
places a plain file (cache/downloads.py), against real loopback servers."""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_creator.cache.downloads import Downloads
from image_creator.digests import ChecksumAlgo
from image_creator.errors import ChecksumMismatchError
from image_creator.fetch import segmented
from image_creator.fetch.checksums import new_hasher
from image_creator.fetch.client import HttpClient
from image_creator.fetch.mirrors import MirrorHealth
from image_creator.fetch.segmented import Outcome
from tests.support.httpserver import HttpServer

KIB = 1024
MIB = 1024 * KIB
PAYLOAD = random.Random(5).randbytes(3 * MIB + 777)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
PIECE = 256 * KIB
CAP = 2 * MIB  # per connection: every connection gets its share of the file


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segmented, "MIN_SEGMENT", 512 * KIB)
    monkeypatch.setattr(segmented, "MIN_STEAL", 64 * KIB)


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with HttpServer() as server:
        yield server


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield int(bound.getsockname()[1])


def metalink(urls: list[tuple[str, int]], *, sha256: str = SHA256, pieces: bool = True) -> bytes:
    piece_hashes = "".join(
        f"<hash>{hashlib.sha256(PAYLOAD[at : at + PIECE]).hexdigest()}</hash>"
        for at in range(0, len(PAYLOAD), PIECE)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="big.zim">'
        f"<size>{len(PAYLOAD)}</size><hash type='sha-256'>{sha256}</hash>"
        + (f'<pieces length="{PIECE}" type="sha-256">{piece_hashes}</pieces>' if pieces else "")
        + "".join(f'<url priority="{pri}">{url}</url>' for url, pri in urls)
        + "</file></metalink>"
    ).encode()


def fetch(url: str, target: Path, health: MirrorHealth | None = None) -> Outcome:
    """Download as place_file does a plain file; checks the sha256 of what was handed over."""
    client = HttpClient()
    downloads = Downloads(
        client, connections=threading.BoundedSemaphore(5), mirrors=health or MirrorHealth()
    )
    hasher = new_hasher(ChecksumAlgo.SHA256)
    with client, downloads.open(url, remote=client.probe(url), segmentable=True) as fetched:
        assert fetched.segmented is not None
        fetched.segmented.into(target, hasher)
        outcome = fetched.segmented.outcome
    assert hasher.hexdigest() == SHA256
    assert target.read_bytes() == PAYLOAD
    assert outcome is not None
    return outcome


def test_a_metalink_spreads_segments_over_its_mirrors(
    http_server: HttpServer, mirror: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    other = mirror.add("/pub/big.zim", PAYLOAD)
    http_server.add("/big.zim.meta4", metalink([(other, 1)]))
    http_server.fault("/big.zim", slow=CAP)
    mirror.fault("/pub/big.zim", slow=CAP)

    outcome = fetch(url, tmp_path / "big.zim")

    assert set(outcome.bytes_from) == {url, other}
    assert sum(outcome.bytes_from.values()) == len(PAYLOAD)
    sent = sum(record.body_length for record in mirror.content_gets("/pub/big.zim"))
    assert sent >= outcome.bytes_from[other]  # a connection whose rest was taken stops early
    assert outcome.connections >= 2


def test_a_bad_piece_from_a_mirror_is_fetched_again_from_another(
    http_server: HttpServer, mirror: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    bad = mirror.add("/pub/big.zim", PAYLOAD)
    http_server.add("/big.zim.meta4", metalink([(bad, 1)]))
    http_server.fault("/big.zim", slow=CAP)
    # the mirror serves another file (same size, same validators) for bytes of every piece
    mirror.fault("/pub/big.zim", slow=CAP, corrupt=(0, len(PAYLOAD)))
    health = MirrorHealth()

    outcome = fetch(url, tmp_path / "big.zim", health)

    assert mirror.content_gets("/pub/big.zim"), "the bad mirror was never asked"
    assert outcome.pieces_refetched >= 1
    assert list(health.dropped) == [f"127.0.0.1:{mirror.port}"]
    # only pieces were fetched again, not the whole file
    assert sum(r.body_length for r in http_server.content_gets("/big.zim")) < 2 * len(PAYLOAD)


def test_a_dead_mirror_in_the_metalink_is_dropped(
    http_server: HttpServer, mirror: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    good = mirror.add("/pub/big.zim", PAYLOAD)
    with dead_port() as port:
        dead = f"http://127.0.0.1:{port}/big.zim"
        http_server.add("/big.zim.meta4", metalink([(dead, 1), (good, 2)]))
        http_server.fault("/big.zim", slow=CAP)
        mirror.fault("/pub/big.zim", slow=CAP)
        health = MirrorHealth()
        outcome = fetch(url, tmp_path / "big.zim", health)

    assert dead not in outcome.bytes_from
    assert list(health.dropped) == [f"127.0.0.1:{port}"]
    assert sum(outcome.bytes_from.values()) == len(PAYLOAD)


def test_link_duplicate_headers_name_mirrors(
    http_server: HttpServer, mirror: HttpServer, tmp_path: Path
) -> None:
    other = mirror.add("/pub/big.zim", PAYLOAD)
    url = http_server.add("/big.zim", PAYLOAD)
    http_server.fault("/big.zim", slow=CAP, headers=(("Link", f"<{other}>; rel=duplicate; pri=1"),))
    mirror.fault("/pub/big.zim", slow=CAP)

    outcome = fetch(url, tmp_path / "big.zim")

    assert set(outcome.bytes_from) == {url, other}


def test_a_file_that_does_not_match_its_metalink_fails(
    http_server: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    http_server.add("/big.zim.meta4", metalink([], sha256="0" * 64, pieces=False))
    with pytest.raises(ChecksumMismatchError, match="its metalink"):
        fetch(url, tmp_path / "big.zim")


def test_a_metalink_of_another_size_is_ignored(
    http_server: HttpServer, mirror: HttpServer, tmp_path: Path
) -> None:
    url = http_server.add("/big.zim", PAYLOAD)
    other = mirror.add("/pub/big.zim", PAYLOAD + b"more")
    document = metalink([(other, 1)]).replace(
        f"<size>{len(PAYLOAD)}</size>".encode(), f"<size>{len(PAYLOAD) + 4}</size>".encode()
    )
    http_server.add("/big.zim.meta4", document)

    outcome = fetch(url, tmp_path / "big.zim")

    assert outcome.bytes_from == {url: len(PAYLOAD)}
    assert mirror.requests == ()

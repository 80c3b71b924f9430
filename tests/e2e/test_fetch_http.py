from __future__ import annotations

import hashlib
import io
import random
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from image_creator.__about__ import __version__
from image_creator.digests import ChecksumAlgo
from image_creator.errors import ChecksumMismatchError, Interrupted, SourceError
from image_creator.fetch import stream as streams
from image_creator.fetch import watch
from image_creator.fetch.archives import extract_tar_stream
from image_creator.fetch.checksums import (
    HashingReader,
    new_hasher,
    parse_checksum_text,
    verify_digest,
)
from image_creator.fetch.client import HttpClient
from image_creator.fetch.responses import RemoteInfo
from image_creator.fetch.retry import RetryPolicy
from image_creator.fetch.source import RemoteStream
from tests.support.download import download
from tests.support.httpserver import HttpServer

PAYLOAD = random.Random(42).randbytes(3 * 1024 * 1024 + 12345)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
CHUNK = 64 * 1024
LAST_MODIFIED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def fetch(url: str, **kwargs: object) -> tuple[bytes, list[float]]:
    """Download into memory; returns the bytes and the backoff delays slept."""
    received = io.BytesIO()
    delays: list[float] = []
    download(url, received.write, sleep=delays.append, **kwargs)  # type: ignore[arg-type]
    return received.getvalue(), delays


def probe(url: str) -> RemoteInfo:
    with HttpClient() as client:
        return client.probe(url)


def read_text(url: str, limit: int = 64 * 1024) -> str:
    with HttpClient() as client:
        return client.read_text(url, limit)


def read_range(url: str, start: int, length: int) -> bytes:
    with HttpClient() as client:
        return client.read_range(url, start, length)


def open_stream(url: str, *, backoff: float = 1.0) -> RemoteStream:
    """A stream through a client of its own (closed with the client's session left to the
    garbage collector: the stream holds it)."""
    return HttpClient(policy=RetryPolicy(backoff=backoff)).open_stream(url)


@pytest.fixture
def zim_url(http_server: HttpServer) -> str:
    return http_server.add("/zim/wikipedia_fr_test.zim", PAYLOAD, last_modified=LAST_MODIFIED)


# probe --------------------------------------------------------------------


def test_probe_uses_head(http_server: HttpServer, zim_url: str) -> None:
    info = probe(zim_url)
    assert info.url == zim_url
    assert info.size == len(PAYLOAD)
    assert info.etag == http_server.etag("/zim/wikipedia_fr_test.zim")
    assert info.last_modified == LAST_MODIFIED
    assert info.accepts_ranges
    [record] = http_server.requests
    assert record.method == "HEAD"
    assert record.header("User-Agent") == f"image-creator/{__version__}"


def test_probe_follows_redirects(http_server: HttpServer, zim_url: str) -> None:
    http_server.fault("/latest.zim", redirect="/zim/wikipedia_fr_test.zim")
    info = probe(http_server.url("/latest.zim"))
    assert info.url == zim_url
    assert info.size == len(PAYLOAD)


def test_probe_falls_back_to_a_one_byte_get_without_head(
    http_server: HttpServer, zim_url: str
) -> None:
    http_server.fault("/zim/wikipedia_fr_test.zim", no_head=True)
    info = probe(zim_url)
    assert info.size == len(PAYLOAD)
    assert info.accepts_ranges
    assert info.etag == http_server.etag("/zim/wikipedia_fr_test.zim")
    assert [(r.method, r.status, r.range) for r in http_server.requests] == [
        ("HEAD", 405, None),
        ("GET", 206, "bytes=0-0"),
    ]
    assert http_server.requests[-1].body_length == 1


def test_probe_of_empty_file(http_server: HttpServer) -> None:
    url = http_server.add("/empty", b"")
    http_server.fault("/empty", no_head=True)
    assert probe(url).size == 0


@pytest.mark.parametrize(("status", "phrase"), [(404, "Not Found"), (403, "Forbidden")])
def test_probe_client_errors(http_server: HttpServer, status: int, phrase: str) -> None:
    url = http_server.url("/missing.zim")
    http_server.fault("/missing.zim", status=status)
    with pytest.raises(SourceError) as caught:
        probe(url)
    assert str(caught.value) == f"{url}: HTTP {status} {phrase}"


def test_probe_unreachable_server() -> None:
    with HttpServer() as server:
        url = server.url("/gone")
    with pytest.raises(SourceError) as caught:
        HttpClient(policy=RetryPolicy(quick_retries=0)).probe(url)
    assert str(caught.value) == f"{url}: Failed to establish a new connection: " + (
        "[Errno 111] Connection refused"
    )


def test_probe_file_url(tmp_path: Path) -> None:
    path = tmp_path / "some file.img"
    path.write_bytes(PAYLOAD)
    info = probe(path.as_uri())
    assert info.size == len(PAYLOAD)
    assert info.url == path.as_uri()
    with pytest.raises(SourceError, match="no such file"):
        probe((tmp_path / "nope").as_uri())


# download -----------------------------------------------------------------


def test_download_streams_exact_bytes(http_server: HttpServer, zim_url: str) -> None:
    received = io.BytesIO()
    progress: list[int] = []
    result = download(zim_url, received.write, on_progress=progress.append)
    assert hashlib.sha256(received.getvalue()).hexdigest() == PAYLOAD_SHA256
    assert result.size == sum(progress) == len(PAYLOAD)
    assert max(progress) <= 1024 * 1024
    assert result.resumes == 0
    assert result.etag == http_server.etag("/zim/wikipedia_fr_test.zim")
    assert result.last_modified == LAST_MODIFIED
    [record] = http_server.requests
    assert record.header("Accept-Encoding") == "identity"
    assert record.range is None


def test_download_resumes_after_a_dropped_connection(http_server: HttpServer, zim_url: str) -> None:
    path = "/zim/wikipedia_fr_test.zim"
    http_server.fault(path, drop_after=1_500_000, times=2)
    data, delays = fetch(zim_url, backoff=0.5)
    assert hashlib.sha256(data).hexdigest() == PAYLOAD_SHA256
    assert delays == [0.5, 0.5]  # progress was made each time: the count restarts
    gets = http_server.requests_for(path)
    assert [(r.range, r.body_length) for r in gets] == [
        (None, 1_500_000),
        ("bytes=1500000-", 1_500_000),
        ("bytes=3000000-", len(PAYLOAD) - 3_000_000),
    ]
    etag = http_server.etag(path)
    assert all(r.header("If-Range") == etag for r in gets[1:])
    assert all(r.header("If-Match") == etag for r in gets[1:])


def test_download_retries_5xx_with_exponential_backoff(
    http_server: HttpServer, zim_url: str
) -> None:
    http_server.fault("/zim/wikipedia_fr_test.zim", status=503, times=3)
    data, delays = fetch(zim_url, backoff=1.0)
    assert data == PAYLOAD
    assert delays == [1.0, 2.0, 4.0]
    assert [r.status for r in http_server.requests] == [503, 503, 503, 200]


def test_download_gives_up_after_retries(http_server: HttpServer, zim_url: str) -> None:
    http_server.fault("/zim/wikipedia_fr_test.zim", status=500)
    with pytest.raises(SourceError) as caught:
        fetch(zim_url, retries=2, backoff=0)
    assert str(caught.value).startswith(f"{zim_url}: HTTP 500 Internal Server Error")
    assert "3 attempts" in str(caught.value)
    assert len(http_server.requests) == 3


@pytest.mark.parametrize(("status", "phrase"), [(404, "Not Found"), (403, "Forbidden")])
def test_download_client_errors_fail_at_once(
    http_server: HttpServer, status: int, phrase: str
) -> None:
    url = http_server.url("/missing.zim")
    http_server.fault("/missing.zim", status=status)
    sink = io.BytesIO()
    with pytest.raises(SourceError) as caught:
        download(url, sink.write, backoff=0)
    assert str(caught.value) == f"{url}: HTTP {status} {phrase}"
    assert len(http_server.requests) == 1
    assert sink.getvalue() == b""


def test_download_refuses_to_resume_a_changed_file(http_server: HttpServer, zim_url: str) -> None:
    path = "/zim/wikipedia_fr_test.zim"
    http_server.fault(path, drop_after=1_000_000, times=1)
    changed = False

    def change_once(_nbytes: int) -> None:
        nonlocal changed
        if not changed:
            http_server.add(path, b"a newer version " * 300_000)
            changed = True

    received = io.BytesIO()
    with pytest.raises(SourceError) as caught:
        download(zim_url, received.write, on_progress=change_once, backoff=0)
    assert str(caught.value).startswith(f"{zim_url}: cannot resume the download at byte 1000000")
    assert "ETag changed" in str(caught.value)
    assert received.getvalue() == PAYLOAD[:1_000_000]


def test_download_resumes_when_the_server_ignores_ranges(
    http_server: HttpServer, zim_url: str
) -> None:
    path = "/zim/wikipedia_fr_test.zim"
    http_server.fault(path, drop_after=2_000_000, times=1)

    def stop_honouring_ranges(_nbytes: int) -> None:
        http_server.fault(path, no_range=True)

    received = io.BytesIO()
    result = download(zim_url, received.write, on_progress=stop_honouring_ranges, backoff=0)
    assert hashlib.sha256(received.getvalue()).hexdigest() == PAYLOAD_SHA256
    assert result.resumes == 1
    assert [r.status for r in http_server.requests_for(path)] == [200, 200]


def test_download_follows_redirects_and_resumes_at_the_final_url(
    http_server: HttpServer, zim_url: str
) -> None:
    http_server.fault("/mirror-me.zim", redirect="/zim/wikipedia_fr_test.zim")
    http_server.fault("/zim/wikipedia_fr_test.zim", drop_after=1_000_000, times=1)
    received = io.BytesIO()
    result = download(http_server.url("/mirror-me.zim"), received.write, backoff=0)
    assert received.getvalue() == PAYLOAD
    assert result.final_url == zim_url
    assert [r.path for r in http_server.requests] == [
        "/mirror-me.zim",
        "/zim/wikipedia_fr_test.zim",
        "/zim/wikipedia_fr_test.zim",
    ]


def test_download_retries_after_a_read_timeout(http_server: HttpServer) -> None:
    url = http_server.add("/stalls", PAYLOAD[:1000])
    http_server.fault("/stalls", slow=2, times=1)  # a byte every half second, once
    data, delays = fetch(url, timeout=(5.0, 0.1), backoff=0.25)
    assert data == PAYLOAD[:1000]
    assert delays == [0.25]
    # the retry resumes after what had arrived: nothing, or the first slow byte
    first, second = (record.range for record in http_server.requests)
    assert first is None
    assert second in (None, "bytes=1-")


def test_download_gives_up_when_every_attempt_drops_at_once(
    http_server: HttpServer, zim_url: str
) -> None:
    http_server.fault("/zim/wikipedia_fr_test.zim", drop_after=0)
    with pytest.raises(SourceError) as caught:
        fetch(zim_url, retries=3, backoff=0)
    assert str(caught.value).startswith(f"{zim_url}: connection ")
    assert "gave up after 4 attempts" in str(caught.value)
    assert len(http_server.requests) == 4


def test_download_then_verify_a_wrong_checksum(http_server: HttpServer, zim_url: str) -> None:
    hasher = new_hasher(ChecksumAlgo.MD5)
    download(zim_url, hasher.update)
    assert hasher.hexdigest() == hashlib.md5(PAYLOAD).hexdigest()
    with pytest.raises(ChecksumMismatchError) as caught:
        verify_digest(hasher, "0" * 32, source=zim_url)
    assert zim_url in str(caught.value)
    assert hashlib.md5(PAYLOAD).hexdigest() in str(caught.value)


def test_download_file_url(tmp_path: Path) -> None:
    path = tmp_path / "base.img"
    path.write_bytes(PAYLOAD)
    received = io.BytesIO()
    result = download(path.as_uri(), received.write)
    assert received.getvalue() == PAYLOAD
    assert result.size == len(PAYLOAD)
    with pytest.raises(SourceError, match="no such file"):
        download((tmp_path / "missing.img").as_uri(), received.write)


# streams into the extractor -----------------------------------------------


def make_tar_gz() -> tuple[bytes, dict[str, bytes]]:
    rng = random.Random(7)
    files = {f"site/page{index}.html": rng.randbytes(300_000) for index in range(10)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue(), files


def test_stream_into_tar_extractor_survives_drops(http_server: HttpServer, tmp_path: Path) -> None:
    archive, files = make_tar_gz()
    url = http_server.add("/site.tar.gz", archive)
    http_server.fault("/site.tar.gz", drop_after=700_000, times=3)
    hasher = new_hasher(ChecksumAlgo.SHA256)
    with open_stream(url, backoff=0) as stream:
        written = extract_tar_stream(
            HashingReader(stream, hasher),
            tmp_path / "dest",
            compression="gz",
            source=url,
        )
        assert stream.resumes == 3
    verify_digest(hasher, hashlib.sha256(archive).hexdigest(), source=url)
    assert written.bytes_written == 3_000_000
    for name, content in files.items():
        assert (tmp_path / "dest" / name).read_bytes() == content


def test_open_stream_reads_like_a_file(http_server: HttpServer, zim_url: str) -> None:
    http_server.fault("/zim/wikipedia_fr_test.zim", drop_after=100_000, times=1)
    with open_stream(zim_url, backoff=0) as stream:
        assert stream.size == len(PAYLOAD)
        head = stream.read(10)
        rest = stream.read()
    assert head + rest == PAYLOAD


def test_open_stream_404_fails_on_open(http_server: HttpServer) -> None:
    url = http_server.url("/nothing")
    with pytest.raises(SourceError, match=r"HTTP 404 Not Found$"):
        open_stream(url)


# small reads --------------------------------------------------------------


def test_read_text_of_a_checksum_url(http_server: HttpServer) -> None:
    url = http_server.add(
        "/zim/wikipedia_fr_test.zim.sha256",
        f"{PAYLOAD_SHA256}  wikipedia_fr_test.zim\n".encode(),
        content_type="text/plain",
    )
    text = read_text(url)
    assert parse_checksum_text(text, algo=ChecksumAlgo.SHA256, source=url) == PAYLOAD_SHA256


def test_read_text_refuses_large_bodies(http_server: HttpServer, zim_url: str) -> None:
    with pytest.raises(SourceError, match="more than 1024 bytes"):
        read_text(zim_url, limit=1024)


def test_read_text_404(http_server: HttpServer) -> None:
    url = http_server.url("/x.md5")
    with pytest.raises(SourceError, match=r"HTTP 404 Not Found$"):
        read_text(url)


def test_read_range(http_server: HttpServer, zim_url: str) -> None:
    assert read_range(zim_url, 1000, 5000) == PAYLOAD[1000:6000]
    assert http_server.requests[-1].range == "bytes=1000-5999"
    assert http_server.requests[-1].body_length == 5000
    assert read_range(zim_url, len(PAYLOAD) - 10, 100) == PAYLOAD[-10:]
    assert read_range(zim_url, len(PAYLOAD) + 10, 100) == b""


def test_read_range_without_range_support(http_server: HttpServer, zim_url: str) -> None:
    http_server.fault("/zim/wikipedia_fr_test.zim", no_range=True)
    assert read_range(zim_url, 2_000_000, 100) == PAYLOAD[2_000_000:2_000_100]


def test_read_range_file_url(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert read_range(path.as_uri(), 10, 20) == PAYLOAD[10:30]


# what arrives is what was announced ---------------------------------------------------------


def test_a_get_shorter_than_the_probe_fails_with_both_sizes(
    http_server: HttpServer, zim_url: str
) -> None:
    info = probe(zim_url)
    http_server.fault("/zim/wikipedia_fr_test.zim", short_by=1000)
    received = io.BytesIO()
    with pytest.raises(SourceError) as caught:
        download(zim_url, received.write, expected=info, backoff=0)
    assert str(caught.value) == (
        f"{zim_url}: the download announces {len(PAYLOAD) - 1000} bytes, "
        f"the check found {len(PAYLOAD)} bytes"
    )
    assert received.getvalue() == b""


def test_a_file_changed_after_the_probe_is_refused(http_server: HttpServer, zim_url: str) -> None:
    changed = bytes(reversed(PAYLOAD))  # same length, other content
    http_server.fault("/zim/wikipedia_fr_test.zim", change_after_probe=changed)
    info = probe(zim_url)
    with pytest.raises(SourceError) as caught:
        download(zim_url, io.BytesIO().write, expected=info, backoff=0)
    assert str(caught.value).startswith(f"{zim_url}: its ETag is ")
    assert f"{info.etag} when checked" in str(caught.value)


def test_a_changed_date_is_refused_without_etags(http_server: HttpServer, zim_url: str) -> None:
    info = probe(zim_url)
    http_server.add("/zim/wikipedia_fr_test.zim", PAYLOAD, last_modified=datetime.now(UTC))
    without_etag = replace(info, etag=None)
    with pytest.raises(SourceError, match=r"last modified .* when checked"):
        download(zim_url, io.BytesIO().write, expected=without_etag, backoff=0)


def test_an_endless_body_stops_at_the_announced_size(http_server: HttpServer, zim_url: str) -> None:
    info = probe(zim_url)
    http_server.fault("/zim/wikipedia_fr_test.zim", longer_than_announced=True)
    received = io.BytesIO()
    with pytest.raises(SourceError) as caught:
        download(zim_url, received.write, expected=info, backoff=0)
    assert str(caught.value) == (
        f"{zim_url}: the server sends more than the {len(PAYLOAD)} bytes announced"
    )
    assert received.getvalue() == PAYLOAD  # not a byte more was read
    wait_for(lambda: bool(http_server.hangups_for("/zim/wikipedia_fr_test.zim")))
    [hangup] = http_server.hangups_for("/zim/wikipedia_fr_test.zim")
    assert hangup.fault == "endless"


def test_a_body_without_length_shorter_than_the_probe_fails(
    http_server: HttpServer, zim_url: str
) -> None:
    info = probe(zim_url)
    http_server.fault("/zim/wikipedia_fr_test.zim", longer_than_announced=True, short_by=5000)
    with pytest.raises(SourceError) as caught:
        download(zim_url, io.BytesIO().write, expected=replace(info, size=len(PAYLOAD) + 10**6))
    assert "the download announces" not in str(caught.value)  # it announced nothing


def test_the_configs_size_is_held_to(http_server: HttpServer, zim_url: str) -> None:
    with pytest.raises(SourceError) as caught:
        download(zim_url, io.BytesIO().write, expected_size=len(PAYLOAD) - 1)
    assert str(caught.value) == (
        f"{zim_url}: the download announces {len(PAYLOAD)} bytes, "
        f"the config's size is {len(PAYLOAD) - 1} bytes"
    )


def test_a_resume_is_checked_with_if_range(http_server: HttpServer, zim_url: str) -> None:
    info = probe(zim_url)
    http_server.fault("/zim/wikipedia_fr_test.zim", drop_after=1_000_000, times=1)
    data, _ = fetch(zim_url, expected=info, backoff=0)
    assert data == PAYLOAD
    resumed = http_server.requests_for("/zim/wikipedia_fr_test.zim")[-1]
    assert resumed.range == "bytes=1000000-"
    assert resumed.header("If-Range") == info.etag


# no unbounded waits -------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stall and deadline constants lowered at the seam, so that a test takes seconds."""
    monkeypatch.setattr(watch, "STALL_WINDOW", 0.6)
    monkeypatch.setattr(watch, "WATCH_INTERVAL", 0.05)
    monkeypatch.setattr(watch, "TEXT_DEADLINE", 1.5)


def test_a_dripping_download_ends_after_its_stalls(
    quick_watch: None, http_server: HttpServer, zim_url: str
) -> None:
    http_server.fault("/zim/wikipedia_fr_test.zim", drip=0.2)
    with pytest.raises(SourceError) as caught:
        fetch(zim_url, backoff=0)
    message = str(caught.value)
    assert message.startswith(f"{zim_url}: stalled (less than 1024 bytes/s for 0.6s)")
    assert message.endswith(f"(gave up after {streams.STALL_RETRIES + 1} stalls)")
    gets = http_server.requests_for("/zim/wikipedia_fr_test.zim")
    assert len(gets) == streams.STALL_RETRIES + 1
    assert all(record.range and record.range.startswith("bytes=") for record in gets[1:])
    wait_for(lambda: len(http_server.hangups_for("/zim/wikipedia_fr_test.zim")) == len(gets))


def test_a_stall_after_the_headers_is_resumed(
    quick_watch: None, http_server: HttpServer, zim_url: str
) -> None:
    http_server.fault("/zim/wikipedia_fr_test.zim", stall=30, stall_after=100_000, times=1)
    data, delays = fetch(zim_url, backoff=0.1)
    assert data == PAYLOAD
    assert delays == [0.1]
    [_first, second] = http_server.requests_for("/zim/wikipedia_fr_test.zim")
    assert second.range == "bytes=100000-"
    [hangup] = http_server.hangups_for("/zim/wikipedia_fr_test.zim")
    assert (hangup.fault, hangup.left > 20) == ("stall", True)


def test_a_server_stalled_for_good_is_given_up(
    quick_watch: None, http_server: HttpServer, zim_url: str
) -> None:
    http_server.fault("/zim/wikipedia_fr_test.zim", stall=30)
    with pytest.raises(SourceError, match=r"stalled .* \(gave up after 3 stalls\)$"):
        fetch(zim_url, backoff=0)


def test_a_dripping_text_gets_its_deadline(
    quick_watch: None, monkeypatch: pytest.MonkeyPatch, http_server: HttpServer
) -> None:
    monkeypatch.setattr(watch, "MIN_RATE", 1)  # not a stall: only the deadline can end it
    url = http_server.add("/x.sha256", f"{PAYLOAD_SHA256}  x\n".encode())
    http_server.fault("/x.sha256", drip=0.1)
    with pytest.raises(SourceError) as caught:
        read_text(url)
    assert str(caught.value) == f"{url}: no complete answer within 1.5s"
    wait_for(lambda: bool(http_server.hangups_for("/x.sha256")))


def test_a_silent_server_gets_the_probe_deadline(
    quick_watch: None, monkeypatch: pytest.MonkeyPatch, http_server: HttpServer, zim_url: str
) -> None:
    monkeypatch.setattr(watch, "STALL_WINDOW", 60.0)  # silence is a stall: only the deadline
    http_server.fault("/zim/wikipedia_fr_test.zim", silent=30)
    with pytest.raises(SourceError) as caught:
        probe(zim_url)
    assert str(caught.value) == f"{zim_url}: no complete answer within 1.5s"
    wait_for(lambda: bool(http_server.hangups_for("/zim/wikipedia_fr_test.zim")))


# cancellation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"stall": 30, "stall_after": 200_000}, id="stalled-body"),
        pytest.param({"silent": 30}, id="no-headers-yet"),
    ],
)
def test_cancelling_cuts_a_blocked_transfer(
    fault: dict[str, Any], http_server: HttpServer, zim_url: str
) -> None:
    """The run is cancelled while the worker is blocked in a socket read: the watch cuts the
    connection, the worker gets Interrupted, and the server sees its client hang up."""
    cancelled = threading.Event()
    http_server.fault("/zim/wikipedia_fr_test.zim", **fault)
    timer = threading.Timer(0.5, cancelled.set)
    timer.start()
    try:
        with pytest.raises(Interrupted):
            fetch(zim_url, cancelled=cancelled)
    finally:
        timer.cancel()
    wait_for(lambda: bool(http_server.hangups_for("/zim/wikipedia_fr_test.zim")))
    [hangup] = http_server.hangups_for("/zim/wikipedia_fr_test.zim")
    assert hangup.left > 20  # cut, not waited out


def test_closing_a_stream_wakes_its_reader(http_server: HttpServer, zim_url: str) -> None:
    """The base image's download is read by xz's feeder thread: closing the stream from the
    main thread must wake it."""
    http_server.fault("/zim/wikipedia_fr_test.zim", stall=30, stall_after=200_000)
    failures: list[BaseException] = []
    stream = open_stream(zim_url)

    def read_all() -> None:
        try:
            while stream.read(CHUNK):
                pass
        except BaseException as exc:
            failures.append(exc)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    wait_for(lambda: stream.position >= 200_000)
    stream.close()
    reader.join(5)
    assert not reader.is_alive()
    assert [type(failure) for failure in failures] == [Interrupted]

"""The run's HTTP client: its User-Agent, its one retry policy (Retry-After honoured and
bounded), its connections kept for the next request, its local sources."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from image_creator.__about__ import __version__
from image_creator.errors import SourceError
from image_creator.fetch import oci
from image_creator.fetch.client import HttpClient
from image_creator.fetch.local import LocalSource
from image_creator.fetch.retry import MAX_RETRY_AFTER, RetryPolicy
from tests.support.download import download
from tests.support.httpserver import HttpServer
from tests.support.oci_layout import ARM64
from tests.support.registry import ImageSpec, Registry

USER_AGENT = f"image-creator/{__version__}"
CONTENT = b"0123456789abcdef" * 4096
SUMS = b"d41d8cd98f00b204e9800998ecf8427e  base.img\n"


def recording_client(**policy: float) -> tuple[HttpClient, list[float]]:
    """A client whose waits between attempts are recorded instead of waited."""
    delays: list[float] = []
    return HttpClient(policy=RetryPolicy(**policy), sleep=delays.append), delays  # type: ignore[arg-type]


# Retry-After --------------------------------------------------------------------------------


def test_a_503_with_retry_after_is_waited_for_and_then_read(http_server: HttpServer) -> None:
    """Really waited (no recording): the answer after the wait is the document."""
    url = http_server.add("/base.img.md5", SUMS)
    http_server.fault("/base.img.md5", status=503, retry_after="1", times=1)
    with HttpClient(policy=RetryPolicy(backoff=30.0)) as client:
        assert client.read_bytes(url) == SUMS
    assert [record.status for record in http_server.requests] == [503, 200]


def test_retry_after_replaces_the_backoff(http_server: HttpServer) -> None:
    url = http_server.add("/base.img.md5", SUMS)
    http_server.fault("/base.img.md5", status=503, retry_after="7", times=2)
    client, delays = recording_client(backoff=0.25)
    assert client.read_text(url) == SUMS.decode()
    assert delays == [7.0, 7.0]


def test_a_retry_after_date_is_waited_until(http_server: HttpServer) -> None:
    url = http_server.add("/base.img.md5", SUMS)
    moment = datetime.now(UTC) + timedelta(seconds=30)
    http_server.fault(
        "/base.img.md5", status=429, retry_after=format_datetime(moment, usegmt=True), times=1
    )
    client, delays = recording_client(backoff=0.25)
    assert client.read_bytes(url) == SUMS
    [delay] = delays
    assert 20.0 < delay <= 30.0


@pytest.mark.parametrize("asked", ["86400", "Fri, 31 Dec 2100 23:59:59 GMT"])
def test_a_429_asking_too_long_a_wait_is_bounded(http_server: HttpServer, asked: str) -> None:
    url = http_server.add("/base.img.md5", SUMS)
    http_server.fault("/base.img.md5", status=429, retry_after=asked, times=1)
    client, delays = recording_client()
    assert client.read_bytes(url) == SUMS
    assert delays == [MAX_RETRY_AFTER]
    bounded, delays = recording_client(max_retry_after=5.0)
    http_server.fault("/base.img.md5", status=429, retry_after=asked, times=1)
    assert bounded.read_bytes(url) == SUMS
    assert delays == [5.0]


def test_retry_after_on_a_500_is_not_a_reason_to_wait(http_server: HttpServer) -> None:
    url = http_server.add("/base.img.md5", SUMS)
    http_server.fault("/base.img.md5", status=500, retry_after="60", times=1)
    client, delays = recording_client(backoff=0.5)
    assert client.read_bytes(url) == SUMS
    assert delays == [0.5]


def test_a_download_honours_retry_after_too(http_server: HttpServer) -> None:
    url = http_server.add("/a.zim", CONTENT)
    http_server.fault("/a.zim", status=503, retry_after="3", times=2)
    received = io.BytesIO()
    delays: list[float] = []
    download(url, received.write, backoff=0.25, sleep=delays.append)
    assert received.getvalue() == CONTENT
    assert delays == [3.0, 3.0]


def test_small_reads_give_up_after_the_quick_retries(http_server: HttpServer) -> None:
    url = http_server.url("/busy")
    http_server.fault("/busy", status=503, retry_after="1")
    client, delays = recording_client(quick_retries=2)
    with pytest.raises(SourceError) as caught:
        client.read_bytes(url)
    assert str(caught.value) == f"{url}: HTTP 503 Service Unavailable (after 3 attempts)"
    assert delays == [1.0, 1.0]
    assert len(http_server.requests) == 3


# one session --------------------------------------------------------------------------------


def test_every_request_carries_the_user_agent_and_shares_a_connection(
    http_server: HttpServer,
) -> None:
    url = http_server.add("/a.zim", CONTENT)
    sums = http_server.add("/a.zim.md5", SUMS)
    with HttpClient() as client:
        assert client.probe(url).size == len(CONTENT)
        assert client.read_bytes(sums) == SUMS
        assert client.read_range(url, 10, 20) == CONTENT[10:30]
        with client.open_stream(url) as stream:
            assert stream.read() == CONTENT
        assert client.probe(url).size == len(CONTENT)
    assert len(http_server.requests) == 5
    assert {record.header("User-Agent") for record in http_server.requests} == {USER_AGENT}
    assert http_server.connections() == 1


def test_a_finished_stream_leaves_its_connection_to_the_next_transfer(
    http_server: HttpServer,
) -> None:
    """A stream read to its last byte gives its connection back at once: closing the stream
    later must not cut that connection under the transfer that took it meanwhile."""
    url = http_server.add("/a.zim", CONTENT)
    slow_url = http_server.add("/slow.md5", SUMS * 400)  # 17600 bytes at 8000 bytes/s
    http_server.fault("/slow.md5", slow=8000)
    results: list[bytes | BaseException] = []
    with HttpClient() as client:
        stream = client.open_stream(url)
        received = b""
        while len(received) < len(CONTENT):  # never asks past the last byte
            received += stream.read(len(CONTENT) - len(received))

        def read_slowly() -> None:
            try:
                results.append(client.read_bytes(slow_url, 64 * 1024))
            except BaseException as exc:
                results.append(exc)

        reader = threading.Thread(target=read_slowly)
        reader.start()
        wait_for(lambda: len(http_server.requests_for("/slow.md5")) == 1)
        stream.close()
        reader.join(30)
    assert received == CONTENT
    assert results == [SUMS * 400]
    assert http_server.connections() == 1


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_file_url_is_a_local_source(tmp_path: Path) -> None:
    path = tmp_path / "some file.img"
    path.write_bytes(CONTENT)
    with HttpClient() as client:
        source = client.source(path.as_uri())
        assert isinstance(source, LocalSource)
        assert source.probe().size == len(CONTENT)
        assert source.read_range(5, 10) == CONTENT[5:15]
        with source.open_stream() as stream:
            assert stream.read() == CONTENT
        with pytest.raises(SourceError, match="more than 100 bytes"):
            client.read_bytes(path.as_uri(), 100)


# the registry -------------------------------------------------------------------------------


@pytest.mark.registry
def test_the_registry_sees_the_user_agent(registry_env: Registry, tmp_path: Path) -> None:
    pushed = registry_env.push(ImageSpec("test/user-agent", "1.0", platforms=(ARM64,)))
    with HttpClient() as client:
        oci.inspect_image(pushed.ref, client)
        oci.export_image(pushed.ref, tmp_path / "image.tar", client=client, build_dir=tmp_path)
    pulls = [
        agent
        for request, agent in registry_env.access_log("/v2/test/user-agent/")
        if request.startswith("GET ")
    ]
    assert len(pulls) >= 4  # the index, the manifest, the config, a layer (twice: its end)
    assert set(pulls) == {USER_AGENT}

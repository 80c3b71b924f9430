"""The loopback HTTP server fixture behaves like a real server, and misbehaves on demand."""

from __future__ import annotations

import hashlib
import http.client
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tests.support.httpserver import HttpServer, parse_range

CONTENT = bytes(range(256)) * 40  # 10240 bytes, every offset recognizable


@pytest.fixture
def served(http_server: HttpServer) -> HttpServer:
    http_server.add("/a.zim", CONTENT)
    return http_server


def test_get_whole_content_with_validators(served: HttpServer) -> None:
    response = requests.get(served.url("/a.zim"), timeout=5)
    assert response.status_code == 200
    assert response.content == CONTENT
    assert response.headers["Content-Length"] == str(len(CONTENT))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == f'"{hashlib.sha256(CONTENT).hexdigest()[:32]}"'
    assert response.headers["ETag"] == served.etag("/a.zim")
    assert "GMT" in response.headers["Last-Modified"]
    assert served.requests[0].method == "GET"
    assert served.requests[0].path == "/a.zim"
    assert served.requests[0].range is None
    assert served.requests[0].status == 200
    assert served.requests[0].body_length == len(CONTENT)


def test_add_file_serves_from_disk(http_server: HttpServer, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(CONTENT * 30)
    url = http_server.add_file("/big", big)
    assert requests.get(url, timeout=5).content == CONTENT * 30
    ranged = requests.get(url, headers={"Range": "bytes=300000-"}, timeout=5)
    assert ranged.status_code == 206
    assert ranged.content == (CONTENT * 30)[300000:]


def test_head_sends_headers_without_body(served: HttpServer) -> None:
    response = requests.head(served.url("/a.zim"), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(CONTENT))
    assert response.content == b""
    assert served.requests[-1].method == "HEAD"
    assert served.content_gets() == []


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=10000-", 10000, len(CONTENT) - 1),
        ("bytes=-40", len(CONTENT) - 40, len(CONTENT) - 1),
        ("bytes=10200-99999", 10200, len(CONTENT) - 1),  # end clamped to the size
    ],
)
def test_single_ranges(served: HttpServer, header: str, first: int, last: int) -> None:
    response = requests.get(served.url("/a.zim"), headers={"Range": header}, timeout=5)
    assert response.status_code == 206
    assert response.content == CONTENT[first : last + 1]
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(CONTENT)}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert served.requests[-1].range == header
    assert served.requests[-1].status == 206


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=99999-100000", "bytes=-0"])
def test_unsatisfiable_range_is_416(served: HttpServer, header: str) -> None:
    response = requests.get(served.url("/a.zim"), headers={"Range": header}, timeout=5)
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(CONTENT)}"
    assert served.content_gets() == []


def test_multiple_ranges_are_ignored(served: HttpServer) -> None:
    response = requests.get(served.url("/a.zim"), headers={"Range": "bytes=0-1,5-6"}, timeout=5)
    assert response.status_code == 200
    assert response.content == CONTENT


def test_parse_range() -> None:
    assert parse_range("bytes=5-", 10) == (5, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("bytes=9-3", 10) is None
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=-", 10) is None
    assert parse_range("bytes=0-", 0) == "unsatisfiable"


def test_if_none_match_gives_304(served: HttpServer) -> None:
    etag = requests.get(served.url("/a.zim"), timeout=5).headers["ETag"]
    cached = requests.get(served.url("/a.zim"), headers={"If-None-Match": etag}, timeout=5)
    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["ETag"] == etag
    stale = requests.get(served.url("/a.zim"), headers={"If-None-Match": '"other"'}, timeout=5)
    assert stale.status_code == 200
    assert [record.status for record in served.requests] == [200, 304, 200]
    assert len(served.content_gets("/a.zim")) == 2


def test_etag_changes_with_content(served: HttpServer) -> None:
    before = served.etag("/a.zim")
    served.add("/a.zim", b"new content")
    response = requests.get(served.url("/a.zim"), headers={"If-None-Match": before}, timeout=5)
    assert response.status_code == 200
    assert response.content == b"new content"
    assert response.headers["ETag"] != before


def test_if_modified_since(http_server: HttpServer) -> None:
    modified = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    url = http_server.add("/dated", b"x", last_modified=modified)
    response = requests.get(url, timeout=5)
    assert response.headers["Last-Modified"] == "Wed, 01 May 2024 12:00:00 GMT"
    later = {"If-Modified-Since": "Thu, 02 May 2024 00:00:00 GMT"}
    earlier = {"If-Modified-Since": "Tue, 30 Apr 2024 00:00:00 GMT"}
    assert requests.get(url, headers=later, timeout=5).status_code == 304
    assert requests.get(url, headers=earlier, timeout=5).status_code == 200


def test_if_range_mismatch_sends_everything(served: HttpServer) -> None:
    etag = served.etag("/a.zim")
    headers = {"Range": "bytes=100-", "If-Range": etag}
    assert requests.get(served.url("/a.zim"), headers=headers, timeout=5).status_code == 206
    headers["If-Range"] = '"stale"'
    response = requests.get(served.url("/a.zim"), headers=headers, timeout=5)
    assert response.status_code == 200
    assert response.content == CONTENT


def test_unknown_path_is_404(http_server: HttpServer) -> None:
    response = requests.get(http_server.url("/missing"), timeout=5)
    assert response.status_code == 404
    assert http_server.requests[0].status == 404
    assert http_server.content_gets() == []


@pytest.mark.parametrize("status", [404, 500])
def test_fault_status(served: HttpServer, status: int) -> None:
    served.fault("/a.zim", status=status)
    assert requests.get(served.url("/a.zim"), timeout=5).status_code == status
    assert requests.head(served.url("/a.zim"), timeout=5).status_code == status
    assert served.content_gets() == []


def test_fault_times_then_recovers(served: HttpServer) -> None:
    served.fault("/a.zim", status=500, times=2)
    statuses = [requests.get(served.url("/a.zim"), timeout=5).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]


def test_fault_no_head(served: HttpServer) -> None:
    served.fault("/a.zim", no_head=True)
    head = requests.head(served.url("/a.zim"), timeout=5)
    assert head.status_code == 405
    assert head.headers["Allow"] == "GET"
    assert requests.get(served.url("/a.zim"), timeout=5).content == CONTENT


def test_fault_no_range(served: HttpServer) -> None:
    served.fault("/a.zim", no_range=True)
    response = requests.get(served.url("/a.zim"), headers={"Range": "bytes=0-9"}, timeout=5)
    assert response.status_code == 200
    assert response.content == CONTENT
    assert "Accept-Ranges" not in response.headers
    assert served.requests[-1].range == "bytes=0-9"


def test_fault_redirect(served: HttpServer) -> None:
    served.fault("/old.zim", redirect="/a.zim")
    response = requests.get(served.url("/old.zim"), timeout=5)
    assert response.content == CONTENT
    assert [(r.path, r.status) for r in served.requests] == [("/old.zim", 302), ("/a.zim", 200)]
    assert response.history[0].headers["Location"] == served.url("/a.zim")


def test_fault_drop_after_truncates(served: HttpServer) -> None:
    served.fault("/a.zim", drop_after=1000)
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    connection.request("GET", "/a.zim")
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Length") == str(len(CONTENT))
    with pytest.raises(http.client.IncompleteRead) as caught:
        response.read()
    assert caught.value.partial == CONTENT[:1000]
    connection.close()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(served.url("/a.zim"), timeout=5)
    assert served.requests[-1].body_length == 1000


def test_resume_after_drop(served: HttpServer) -> None:
    served.fault("/a.zim", drop_after=4000, times=1)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(served.url("/a.zim"), timeout=5)
    rest = requests.get(served.url("/a.zim"), headers={"Range": "bytes=4000-"}, timeout=5)
    assert rest.status_code == 206
    assert CONTENT[:4000] + rest.content == CONTENT
    assert [r.body_length for r in served.content_gets("/a.zim")] == [4000, len(CONTENT) - 4000]


def test_fault_slow_throttles(served: HttpServer) -> None:
    served.fault("/a.zim", slow=20_000)  # 10240 bytes at 20 kB/s: about 0.5 s
    response = requests.get(served.url("/a.zim"), timeout=5)
    assert response.content == CONTENT
    # throttled: the server held the body back (what it did, not how long the test took)
    assert served.paused > 0


def test_clear_faults_and_log(served: HttpServer) -> None:
    served.fault("/a.zim", status=500)
    requests.get(served.url("/a.zim"), timeout=5)
    served.clear_faults()
    served.clear_log()
    assert requests.get(served.url("/a.zim"), timeout=5).status_code == 200
    assert len(served.requests) == 1


def test_log_keeps_request_headers(served: HttpServer) -> None:
    requests.get(served.url("/a.zim?x=1"), headers={"User-Agent": "probe/1"}, timeout=5)
    record = served.requests[0]
    assert record.path == "/a.zim"
    assert record.header("user-agent") == "probe/1"


def test_keep_alive_session_reuses_connection(served: HttpServer) -> None:
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(served.url("/a.zim"), timeout=5).content == CONTENT
    assert len(served.content_gets()) == 3


def test_a_status_fault_can_ask_to_retry_after(served: HttpServer) -> None:
    served.fault("/a.zim", status=503, retry_after="7", times=1)
    busy = requests.get(served.url("/a.zim"), timeout=5)
    assert (busy.status_code, busy.headers["Retry-After"]) == (503, "7")
    assert "Retry-After" not in requests.get(served.url("/a.zim"), timeout=5).headers


def test_connections_are_counted(served: HttpServer) -> None:
    with requests.Session() as session:
        for _ in range(3):
            session.get(served.url("/a.zim"), timeout=5)
    requests.get(served.url("/a.zim"), timeout=5)
    assert served.connections() == 2

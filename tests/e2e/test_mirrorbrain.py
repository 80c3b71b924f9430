"""MirrorBrain answers with a redirect to a mirror carrying the file's Digest: that digest,
not the mirror's ETag, tells whether a cached copy is still current."""

from __future__ import annotations

import base64
import hashlib

from image_creator.cache.downloads import version_of
from image_creator.fetch.client import HttpClient
from tests.support.httpserver import HttpServer

CONTENT = b"zim" * 1000


def digest_header(content: bytes) -> str:
    return "SHA-256=" + base64.b64encode(hashlib.sha256(content).digest()).decode()


def test_version_comes_from_the_redirect_digest(http_server: HttpServer) -> None:
    http_server.add("/mirror1/wiki.zim", CONTENT)
    http_server.add("/mirror2/wiki.zim", CONTENT + b"\n")  # another mirror, another ETag
    header = ("Digest", f"MD5=abc, {digest_header(CONTENT)}")
    http_server.fault("/zim/wiki.zim", redirect="/mirror1/wiki.zim", redirect_headers=(header,))
    first = HttpClient().probe(http_server.url("/zim/wiki.zim"))
    http_server.fault("/zim/wiki.zim", redirect="/mirror2/wiki.zim", redirect_headers=(header,))
    second = HttpClient().probe(http_server.url("/zim/wiki.zim"))

    assert first.digest == digest_header(CONTENT)
    assert first.etag != second.etag
    assert version_of(first) == version_of(second) == f"digest:{digest_header(CONTENT)}"


def test_without_a_digest_the_etag_is_the_version(http_server: HttpServer) -> None:
    url = http_server.add("/plain.zim", CONTENT)
    info = HttpClient().probe(url)
    assert info.digest is None
    assert version_of(info) == f"etag:{http_server.etag('/plain.zim')}"

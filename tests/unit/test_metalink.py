"""Metalink v4 and RFC 6249 Link parsing (fetch/metalink.py): what is kept, what is refused."""

from __future__ import annotations

import pytest

from image_creator.fetch.metalink import (
    MetalinkError,
    Mirror,
    described_by,
    duplicates,
    parse_metalink,
)

SHA256 = "a" * 64
SHA1 = "b" * 40


def document(body: str, *, prolog: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"{prolog}"
        f'<metalink xmlns="urn:ietf:params:xml:ns:metalink">{body}</metalink>'
    ).encode()


FILE = f"""
<file name="wiki.zim">
  <size>1048576</size>
  <hash type="sha-256">{SHA256.upper()}</hash>
  <hash type="md5">not-hex</hash>
  <pieces length="262144" type="sha-1">
    <hash>{SHA1}</hash><hash>{SHA1}</hash><hash>{SHA1}</hash><hash>{SHA1}</hash>
  </pieces>
  <url location="de" priority="2">http://b.example/wiki.zim</url>
  <url priority="1">https://a.example/wiki.zim</url>
  <url>/relative/wiki.zim</url>
  <url priority="1">ftp://ftp.example/wiki.zim</url>
  <metaurl mediatype="torrent">http://t.example/wiki.torrent</metaurl>
</file>
"""


def test_a_metalink_gives_size_hashes_pieces_and_ranked_mirrors() -> None:
    found = parse_metalink(document(FILE), base_url="http://origin.example/zim/wiki.zim.meta4")
    assert found.name == "wiki.zim"
    assert found.size == 1048576
    assert found.hashes == {"sha-256": SHA256}
    assert found.strongest_hash() == ("sha-256", SHA256)
    assert found.pieces is not None
    assert (found.pieces.algo, found.pieces.length, len(found.pieces.digests)) == (
        "sha-1",
        262144,
        4,
    )
    assert found.mirrors == (
        Mirror("https://a.example/wiki.zim", 1),
        Mirror("http://b.example/wiki.zim", 2, "de"),
        Mirror("http://origin.example/relative/wiki.zim"),
    )


def test_the_file_is_chosen_by_name_among_several() -> None:
    other = '<file name="other.zim"><url>http://x.example/other.zim</url></file>'
    found = parse_metalink(document(other + FILE), base_url="http://o.example/", name="wiki.zim")
    assert found.name == "wiki.zim"
    with pytest.raises(MetalinkError, match="lists 2 files"):
        parse_metalink(document(other + FILE), base_url="http://o.example/", name="nope.zim")


@pytest.mark.parametrize(
    ("prolog", "body", "reason"),
    [
        (
            '<!DOCTYPE metalink [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>',
            "<file name='x'><size>&b;</size></file>",
            "document type declaration",
        ),
        (
            '<!DOCTYPE metalink SYSTEM "http://evil.example/x.dtd">',
            "<file name='x'/>",
            "document type declaration",
        ),
        ("", "<file name='x'><size>&undeclared;</size></file>", "not a metalink"),
        ("", "<file name='x'>", "not a metalink"),
    ],
)
def test_dtds_entities_and_broken_documents_are_refused(
    prolog: str, body: str, reason: str
) -> None:
    with pytest.raises(MetalinkError, match=reason):
        parse_metalink(document(body, prolog=prolog), base_url="http://o.example/")


def test_a_metalink_v3_or_other_xml_is_refused() -> None:
    with pytest.raises(MetalinkError, match="not a metalink v4"):
        parse_metalink(b'<metalink version="3.0"><files/></metalink>', base_url="http://o/")


def test_link_headers_name_duplicates_and_the_metalink() -> None:
    headers = [
        "<http://b.example/f.zim>; rel=duplicate; pri=2; geo=de, "
        '<http://a.example/f.zim>; rel="duplicate"; pri=1',
        '<f.zim.meta4>; rel=describedby; type="application/metalink4+xml", '
        "<ftp://c.example/f.zim>; rel=duplicate; pri=1",
    ]
    base = "http://origin.example/zim/f.zim"
    assert duplicates(headers, base_url=base) == [
        Mirror("http://a.example/f.zim", 1),
        Mirror("http://b.example/f.zim", 2, "de"),
    ]
    assert described_by(headers, base_url=base) == "http://origin.example/zim/f.zim.meta4"
    assert (
        described_by(["<x.torrent>; rel=describedby; type=application/x-bittorrent"], base_url=base)
        is None
    )

"""Expanded sizes read from real archives served over HTTP, with ranged reads only."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import random
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from image_creator.config.model import Via
from image_creator.errors import SourceError
from image_creator.fetch.archive_probe import MAX_INDEX_BYTES, ArchiveFacts, inspect_archive
from image_creator.fetch.client import HttpClient
from tests.support.archives import tar_bytes, zip_bytes
from tests.support.httpserver import HttpServer
from tests.support.requirements import require_tools

MIB = 2**20
# compressible, and not too regular: text-like content
TEXT = b"".join(b"line %d of a compressible page\n" % number for number in range(40_000))
NOISE = random.Random(7).randbytes(300_000)
TREE = {
    "index.html": b"<h1>offline</h1>\n",
    "docs/about.txt": TEXT,
    "docs/deep/nested/noise.bin": NOISE,
}


def probe(server: HttpServer, path: str, data: bytes, via: Via) -> ArchiveFacts:
    url = server.add(path, data)
    facts = inspect_archive(HttpClient().source(url), via, len(data))
    assert_ranged_reads_only(server, path, len(data))
    return facts


def assert_ranged_reads_only(server: HttpServer, path: str, size: int) -> None:
    """Every GET asked for a range and got a 206: the archive was never downloaded."""
    reads = server.requests_for(path)
    assert reads
    for record in reads:
        assert record.method == "GET", record
        assert record.range is not None and record.status == 206, record
    # the first read takes the last 64 KiB: all of a small archive
    assert sum(record.body_length for record in reads) < max(size, 64 * 1024 + 1)


# zip -----------------------------------------------------------------------


def test_zip_sizes_and_entries_come_from_its_central_directory(http_server: HttpServer) -> None:
    data = zip_bytes(TREE)
    facts = probe(http_server, "/site.zip", data, Via.ZIP)
    assert facts.expanded == sum(map(len, TREE.values()))
    # 3 files; docs, docs/deep, docs/deep/nested implied (no entry of their own)
    assert facts.entries == 6
    assert facts.note is None
    assert facts.expanded > len(data)


def test_zip_with_explicit_folders_counts_each_once(http_server: HttpServer) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("site/", b"")
        archive.writestr("site/img/", b"")
        archive.writestr("site/img/a.svg", b"<svg/>")
        archive.writestr("./site/b.txt", b"b")
    facts = probe(http_server, "/folders.zip", buffer.getvalue(), Via.ZIP)
    assert (facts.expanded, facts.entries) == (7, 4)


def test_zip_with_a_long_comment(http_server: HttpServer) -> None:
    """The end record is searched for through a 64 KiB comment (a second, short read)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in TREE.items():
            archive.writestr(name, content)
        archive.comment = b"PK\x05\x06 looks like an end record, is not " + b"c" * 65_497
    data = buffer.getvalue()
    assert len(archive.comment) == 65_535
    facts = probe(http_server, "/comment.zip", data, Via.ZIP)
    assert (facts.expanded, facts.entries) == (sum(map(len, TREE.values())), 6)
    assert len(http_server.requests_for("/comment.zip")) == 2


def test_zip64_with_more_than_65535_entries(http_server: HttpServer, tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for number in range(70_000):
            archive.writestr(f"d{number % 7}/{number}", b"x" if number % 2 else b"")
    with zipfile.ZipFile(path) as archive:
        assert len(archive.infolist()) == 70_000
    url = http_server.add_file("/many.zip", path)
    facts = inspect_archive(HttpClient().source(url), Via.ZIP, path.stat().st_size)
    assert (facts.expanded, facts.entries) == (35_000, 70_000 + 7)
    assert_ranged_reads_only(http_server, "/many.zip", path.stat().st_size)
    # the ZIP64 end record says how many: the 16-bit field cannot
    data = path.read_bytes()
    assert b"PK\x06\x06" in data[-200:]


def write_sparse_zip64(path: Path, name: bytes, size: int) -> None:
    """A stored member of ``size`` zero bytes (a hole: nothing written), ZIP64 throughout.

    Its CRC field is left at 0 (computing it takes seconds): the probe reads the structure
    only, as does zipfile's infolist, which the test uses to agree on it.
    """
    crc = 0
    zip64_extra = struct.pack("<2H2Q", 0x0001, 16, size, size)
    local = struct.pack(
        "<4s5H3L2H", b"PK\x03\x04", 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
        len(name), len(zip64_extra),
    )  # fmt: skip
    with path.open("wb") as output:
        output.write(local + name + zip64_extra)
        output.seek(size, os.SEEK_CUR)
        directory_at = output.tell()
        central_extra = struct.pack("<2H3Q", 0x0001, 24, size, size, 0)
        central = struct.pack(
            "<4s6H3L5HLL", b"PK\x01\x02", 45, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
            len(name), len(central_extra), 0, 0, 0, 0, 0xFFFFFFFF,
        )  # fmt: skip
        output.write(central + name + central_extra)
        directory_size = output.tell() - directory_at
        record_at = output.tell()
        output.write(
            struct.pack(
                "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, directory_size, directory_at
            )
        )
        output.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, record_at, 1))
        output.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def test_zip64_member_over_4_gib(tmp_path: Path) -> None:
    path = tmp_path / "big.zip"
    size = 2**32 + 12_345
    write_sparse_zip64(path, b"big/disk.img", size)
    with zipfile.ZipFile(path) as archive:
        [info] = archive.infolist()
        assert (info.filename, info.file_size) == ("big/disk.img", size)
    # read in place (file://): the test server would hash its 4 GiB to make an ETag
    facts = inspect_archive(HttpClient().source(path.as_uri()), Via.ZIP, path.stat().st_size)
    assert (facts.expanded, facts.entries) == (size, 2)


def test_not_a_zip_is_a_source_error(http_server: HttpServer) -> None:
    url = http_server.add("/fake.zip", b"<html>not found</html>" * 100)
    with pytest.raises(SourceError, match=r"/fake\.zip: not a valid archive: no zip end"):
        inspect_archive(HttpClient().source(url), Via.ZIP, 2200)


def test_huge_central_directory_is_not_read(http_server: HttpServer) -> None:
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 9, 9, MAX_INDEX_BYTES + 1, 10, 0)
    url = http_server.add("/huge.zip", bytes(100) + end)
    facts = inspect_archive(HttpClient().source(url), Via.ZIP, 100 + len(end))
    assert (facts.expanded, facts.entries) == (None, None)
    assert facts.note is not None and "not read" in facts.note


# gzip ----------------------------------------------------------------------


def test_gztar_size_is_the_tar_size_from_isize(http_server: HttpServer) -> None:
    data = tar_bytes(TREE, "gz")
    facts = probe(http_server, "/site.tar.gz", data, Via.GZTAR)
    assert facts.expanded == len(gzip.decompress(data))
    assert facts.expanded > sum(map(len, TREE.values()))  # headers and padding: an upper bound
    assert (facts.entries, facts.note) == (None, None)
    [read] = http_server.requests_for("/site.tar.gz")
    assert (read.range, read.body_length) == (f"bytes={len(data) - 4}-{len(data) - 1}", 4)


def test_gzip_isize_below_its_own_size_is_unknown(http_server: HttpServer) -> None:
    # the last member of a multi-member gzip: ISIZE tells only its own size
    data = gzip.compress(tar_bytes({"noise.bin": NOISE})) + gzip.compress(b"tail" * 10)
    facts = probe(http_server, "/multi.tar.gz", data, Via.GZTAR)
    assert facts.expanded is None
    assert facts.note is not None and "size unknown" in facts.note


def test_gzip_over_4_gib_is_unknown_without_reading(http_server: HttpServer) -> None:
    url = http_server.url("/huge.tar.gz")
    facts = inspect_archive(HttpClient().source(url), Via.GZTAR, 2**32 + 1)
    assert facts == ArchiveFacts(
        None, None, "gzip ISIZE is mod 2^32: archive over 4 GiB, size unknown"
    )
    assert http_server.requests == ()


# xz ------------------------------------------------------------------------


def xz(data: bytes, *options: str) -> bytes:
    require_tools("xz")
    return subprocess.run(
        ["xz", "-c", *options], input=data, capture_output=True, check=True
    ).stdout


def xz_blocks(data: bytes, folder: Path) -> int:
    """How many blocks ``xz --list`` finds (it reads files only)."""
    path = folder / "listed.xz"
    path.write_bytes(data)
    listing = subprocess.run(
        ["xz", "--robot", "--list", str(path)], capture_output=True, check=True, text=True
    ).stdout
    [totals] = [line.split("\t") for line in listing.splitlines() if line.startswith("totals")]
    return int(totals[2])


@pytest.fixture(scope="module")
def big_tar() -> bytes:
    return tar_bytes({**TREE, "more.txt": TEXT * 4})


def test_xztar_with_several_blocks(http_server: HttpServer, big_tar: bytes, tmp_path: Path) -> None:
    data = xz(big_tar, "-T2", "--block-size=256KiB")
    assert lzma.decompress(data) == big_tar
    assert xz_blocks(data, tmp_path) == -(-len(big_tar) // (256 * 1024)) > 3
    facts = probe(http_server, "/site.tar.xz", data, Via.XZTAR)
    assert (facts.expanded, facts.entries, facts.note) == (len(big_tar), None, None)


def test_xztar_of_concatenated_streams_with_padding(
    http_server: HttpServer, big_tar: bytes, tmp_path: Path
) -> None:
    half = len(big_tar) // 2
    data = xz(big_tar[:half], "--block-size=128KiB") + bytes(8) + xz(big_tar[half:]) + bytes(4)
    subprocess.run(["xz", "-t"], input=data, check=True)  # valid for xz itself
    assert xz_blocks(data, tmp_path) > 2
    facts = probe(http_server, "/two.tar.xz", data, Via.XZTAR)
    assert facts.expanded == len(big_tar)


def test_not_an_xz_is_a_source_error(http_server: HttpServer) -> None:
    url = http_server.add("/fake.tar.xz", b"<html>not found</html>" * 10)
    with pytest.raises(SourceError, match=r"/fake\.tar\.xz: not a valid archive: no xz stream"):
        inspect_archive(HttpClient().source(url), Via.XZTAR, 220)


# the others ----------------------------------------------------------------


def test_tar_is_its_own_size_and_bztar_unknown_without_any_read(http_server: HttpServer) -> None:
    url = http_server.url("/site.tar")
    assert inspect_archive(HttpClient().source(url), Via.TAR, 10_240) == ArchiveFacts(10_240, None)
    facts = inspect_archive(HttpClient().source(http_server.url("/site.tar.bz2")), Via.BZTAR, 5000)
    assert (facts.expanded, facts.entries) == (None, None)
    assert facts.note == "bzip2 does not record the expanded size"
    assert http_server.requests == ()


def test_server_without_ranges_is_not_read(http_server: HttpServer) -> None:
    url = http_server.add("/site.zip", zip_bytes(TREE))
    facts = inspect_archive(HttpClient().source(url), Via.ZIP, 1000, accepts_ranges=False)
    assert facts.expanded is None
    assert facts.note == "the server does not offer ranged reads"
    assert http_server.requests == ()


def test_local_archives_are_read_in_place(tmp_path: Path) -> None:
    path = tmp_path / "site.tar.gz"
    path.write_bytes(tar_bytes(TREE, "gz"))
    facts = inspect_archive(HttpClient().source(path.as_uri()), Via.GZTAR, path.stat().st_size)
    assert facts.expanded == len(gzip.decompress(path.read_bytes()))


def test_tar_members_are_not_counted(http_server: HttpServer) -> None:
    """Only zip lists its members; a tar's are counted as they come, at build time."""
    data = tar_bytes(TREE, "xz")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert len(archive.getmembers()) == 3
    assert probe(http_server, "/site.txz", data, Via.XZTAR).entries is None

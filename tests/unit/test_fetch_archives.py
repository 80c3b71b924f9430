from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_creator.digests import ChecksumAlgo
from image_creator.errors import SourceError
from image_creator.fetch.archives import TarCompression, extract_tar_stream, extract_zip
from image_creator.fetch.checksums import HashingReader, new_hasher

MTIME = 1_700_000_000


class OneWayStream:
    """A read-only, non-seekable stream, like a download."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)
        self.name = "http://example.org/archive"

    def read(self, size: int = -1, /) -> bytes:
        return self._buffer.read(size)


@dataclass
class Member:
    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(data)
    if compression == "bz2":
        return bz2.compress(data)
    if compression == "xz":
        return lzma.compress(data)
    assert compression == ""
    return data


def build_tar(members: list[Member], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.mode = member.mode
            info.mtime = MTIME
            info.linkname = member.linkname
            if member.kind == tarfile.REGTYPE:
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return compress(buffer.getvalue(), compression)


def tree(root: Path) -> dict[str, str]:
    """Every path below root: file content, link target or 'dir'."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = path.read_text()
    return found


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[Path]:
    """The extraction directory; the test fails if anything appears next to it."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret")
    before = tree(tmp_path)
    yield tmp_path / "dest"
    after = {key: value for key, value in tree(tmp_path).items() if not key.startswith("dest")}
    assert after == before, "something was written outside dest"


GOOD_MEMBERS = [
    Member("./", kind=tarfile.DIRTYPE, mode=0o755),
    Member("./docs/", kind=tarfile.DIRTYPE, mode=0o750),
    Member("./docs/readme.txt", b"read me\n"),
    Member("./docs/run.sh", b"#!/bin/sh\n", mode=0o4755),
    Member("./nested/deeper/file.txt", b"implicit parents\n", mode=0o666),
    Member("./docs/latest", kind=tarfile.SYMTYPE, linkname="readme.txt"),
    Member("./top-link", kind=tarfile.SYMTYPE, linkname="nested/deeper"),
    Member("./docs/hard", kind=tarfile.LNKTYPE, linkname="./docs/readme.txt"),
    Member("./via-link/", kind=tarfile.DIRTYPE),
    Member("./top-link/through.txt", b"through an inner link\n"),
]
GOOD_TREE = {
    "docs": "dir",
    "docs/hard": "read me\n",
    "docs/latest": "-> readme.txt",
    "docs/readme.txt": "read me\n",
    "docs/run.sh": "#!/bin/sh\n",
    "nested": "dir",
    "nested/deeper": "dir",
    "nested/deeper/file.txt": "implicit parents\n",
    "nested/deeper/through.txt": "through an inner link\n",
    "top-link": "-> nested/deeper",
    "via-link": "dir",
}
GOOD_SIZE = sum(len(m.data) for m in GOOD_MEMBERS)


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_tar_stream_extracts_exact_content(dest: Path, compression: TarCompression) -> None:
    archive = build_tar(GOOD_MEMBERS, compression)
    progress: list[int] = []
    written = extract_tar_stream(
        OneWayStream(archive),
        dest,
        compression=compression,
        on_progress=progress.append,
    )
    assert tree(dest) == GOOD_TREE
    assert written.bytes_written == sum(progress) == GOOD_SIZE
    # readme, run.sh, file.txt, through.txt, two symlinks, one hard link
    assert written.files_created == 7
    assert written.directories_created == 4  # docs, nested, nested/deeper, via-link
    assert written.junk_skipped == 0
    readme = dest / "docs" / "readme.txt"
    assert readme.stat().st_ino == (dest / "docs" / "hard").stat().st_ino
    assert readme.stat().st_mtime == MTIME
    assert (dest / "docs").stat().st_mtime == MTIME
    assert stat.S_IMODE((dest / "docs").stat().st_mode) == 0o750
    assert stat.S_IMODE(readme.stat().st_mode) == 0o644
    # setuid dropped, executable kept; group/other write dropped
    assert stat.S_IMODE((dest / "docs" / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "nested/deeper/file.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_tar_stream_is_read_to_its_end_so_the_digest_covers_the_file(
    dest: Path, compression: TarCompression
) -> None:
    # a big blocking factor (tar -b 256) leaves a lot of padding after the end marker
    plain = build_tar([Member("a.txt", b"a" * 100)]) + b"\0" * 256 * 512
    archive = compress(plain, compression)
    hasher = new_hasher(ChecksumAlgo.SHA256)
    stream = HashingReader(OneWayStream(archive), hasher)
    extract_tar_stream(stream, dest, compression=compression)
    assert stream.bytes_read == len(archive)
    assert hasher.hexdigest() == hashlib.sha256(archive).hexdigest()
    assert tree(dest) == {"a.txt": "a" * 100}


def test_multistream_bz2_tar(dest: Path) -> None:
    """pbzip2 and lbzip2 write several bz2 streams one after the other."""
    plain = build_tar([Member("big.txt", b"x" * 50_000), Member("small.txt", b"y")])
    half = len(plain) // 2
    archive = bz2.compress(plain[:half]) + bz2.compress(plain[half:])
    extract_tar_stream(OneWayStream(archive), dest, compression="bz2")
    assert tree(dest) == {"big.txt": "x" * 50_000, "small.txt": "y"}


def test_tar_expands_as_far_as_its_members_go(dest: Path) -> None:
    """No cap from the archive's own size: a compressible tar.gz expands in full."""
    archive = build_tar([Member("one", b"1" * 600_000), Member("two", b"2" * 400_000)], "gz")
    assert len(archive) < 10_000
    result = extract_tar_stream(OneWayStream(archive), dest, compression="gz")
    assert result.bytes_written == 1_000_000
    assert tree(dest) == {"one": "1" * 600_000, "two": "2" * 400_000}


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([Member("../evil", b"evil")], "'..' in path refused"),
        ([Member("docs/../../evil", b"evil")], "'..' in path refused"),
        ([Member("/abs/evil", b"evil")], "absolute path refused"),
        (
            [Member("up", kind=tarfile.SYMTYPE, linkname="../outside"), Member("up/evil", b"x")],
            "symlink target '../outside' is outside the destination",
        ),
        (
            [Member("abs", kind=tarfile.SYMTYPE, linkname="/etc"), Member("abs/evil", b"x")],
            "absolute symlink target '/etc' refused",
        ),
        (
            [Member("evil", kind=tarfile.LNKTYPE, linkname="../outside/secret")],
            "'..' in path refused",
        ),
        (
            [Member("evil", kind=tarfile.LNKTYPE, linkname="/etc/passwd")],
            "absolute path refused",
        ),
        ([Member("null", kind=tarfile.CHRTYPE)], "device node refused"),
        ([Member("sda", kind=tarfile.BLKTYPE)], "device node refused"),
        ([Member("pipe", kind=tarfile.FIFOTYPE)], "fifo refused"),
    ],
)
def test_tar_unsafe_members_are_refused(dest: Path, members: list[Member], reason: str) -> None:
    archive = build_tar([Member("fine.txt", b"fine"), *members])
    with pytest.raises(SourceError) as caught:
        extract_tar_stream(OneWayStream(archive), dest, compression="", source="http://h/a.tar")
    message = str(caught.value)
    assert message.startswith("http://h/a.tar: member ")
    assert reason in message
    assert not any(name in tree(dest) for name in ("evil", "abs/evil", "up/evil"))
    assert (dest / "fine.txt").read_text() == "fine"
    assert (Path(dest).parent / "outside" / "secret").read_text() == "secret"


def test_tar_link_chain_that_later_escapes_is_refused(dest: Path) -> None:
    """Each link points inside when created; together they lead out: `s/evil` is refused."""
    archive = build_tar(
        [
            Member("s", kind=tarfile.SYMTYPE, linkname="d/.."),  # dest, while d is a directory
            Member("d", kind=tarfile.SYMTYPE, linkname="."),  # now s is dest/..
            Member("s/outside/evil", b"evil"),
        ]
    )
    with pytest.raises(SourceError, match="'s/outside/evil': path goes through a link"):
        extract_tar_stream(OneWayStream(archive), dest, compression="")


@pytest.mark.parametrize("compression", ["", "zip"])
def test_links_that_lead_out_only_once_all_is_in_are_refused(
    dest: Path, tmp_path_factory: pytest.TempPathFactory, compression: str
) -> None:
    """`a -> b/..` is inside while `b` is missing; `b -> .` then makes `a` the destination's
    parent. No member writes through them, so only a check of the final tree catches it."""
    members = [
        Member("a", kind=tarfile.SYMTYPE, linkname="b/.."),
        Member("b", kind=tarfile.SYMTYPE, linkname="."),
    ]
    with pytest.raises(SourceError) as caught:
        if compression == "zip":
            archive = tmp_path_factory.mktemp("zip") / "links.zip"
            with zipfile.ZipFile(archive, "w") as handle:
                for member in members:
                    info = zipfile.ZipInfo(member.name)
                    info.create_system = 3
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                    handle.writestr(info, member.linkname)
            extract_zip(archive, dest, source="http://h/links.zip")
        else:
            extract_tar_stream(
                OneWayStream(build_tar(members)), dest, compression="", source="http://h/l.tar"
            )
    assert "member 'a': symlink target 'b/..' leads outside the destination" in str(caught.value)


def test_tar_hardlink_to_a_file_not_from_the_archive_is_refused(dest: Path) -> None:
    dest.mkdir()
    (dest / "preexisting").write_text("not yours")
    archive = build_tar([Member("steal", kind=tarfile.LNKTYPE, linkname="preexisting")])
    with pytest.raises(SourceError, match="not a file extracted from this archive"):
        extract_tar_stream(OneWayStream(archive), dest, compression="")


def test_tar_member_replaces_a_symlink_instead_of_writing_through_it(dest: Path) -> None:
    archive = build_tar(
        [
            Member("target.txt", b"original"),
            Member("link", kind=tarfile.SYMTYPE, linkname="target.txt"),
            Member("link", b"replaced"),
        ]
    )
    extract_tar_stream(OneWayStream(archive), dest, compression="")
    assert tree(dest) == {"link": "replaced", "target.txt": "original"}


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_truncated_tar_is_a_source_error(dest: Path, compression: TarCompression) -> None:
    archive = build_tar([Member("big", os.urandom(200_000))], compression)
    with pytest.raises(SourceError, match="invalid or truncated archive"):
        extract_tar_stream(
            OneWayStream(archive[: len(archive) // 2]),
            dest,
            compression=compression,
        )


def test_not_a_tar_is_a_source_error(dest: Path) -> None:
    with pytest.raises(SourceError, match="invalid or truncated archive"):
        extract_tar_stream(OneWayStream(b"<html>404</html>"), dest, compression="gz")


# zip -----------------------------------------------------------------------


def zip_entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def windows_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
    info.create_system = 0  # MS-DOS: no Unix mode recorded
    info.external_attr = 0x20  # the DOS "archive" attribute
    return info


def build_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def test_zip_extracts_exact_content(dest: Path) -> None:
    progress: list[int] = []
    archive = build_zip(
        dest.parent / "a.zip",
        [
            (zip_entry("site/", stat.S_IFDIR | 0o755), b""),
            (zip_entry("site/index.html", stat.S_IFREG | 0o644), b"<h1>hi</h1>"),
            (zip_entry("site/tool", stat.S_IFREG | 0o6755), b"#!/bin/sh\n"),
            (zip_entry("site/home.html", stat.S_IFLNK | 0o777), b"index.html"),
            (windows_entry("no-unix-mode.txt"), b"windows"),
        ],
    )
    try:
        written = extract_zip(archive, dest, on_progress=progress.append)
    finally:
        archive.unlink()
    assert tree(dest) == {
        "no-unix-mode.txt": "windows",
        "site": "dir",
        "site/home.html": "-> index.html",
        "site/index.html": "<h1>hi</h1>",
        "site/tool": "#!/bin/sh\n",
    }
    assert written.bytes_written == sum(progress) == len("<h1>hi</h1>#!/bin/sh\nwindows")
    assert (written.files_created, written.directories_created) == (4, 1)
    assert stat.S_IMODE((dest / "site" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "no-unix-mode.txt").stat().st_mode) == 0o644
    zip_time = time.mktime((2024, 1, 2, 3, 4, 6, 0, 0, -1))
    assert (dest / "site" / "index.html").stat().st_mtime == zip_time
    assert (dest / "site").stat().st_mtime == zip_time


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([("../evil", b"evil")], "'..' in path refused"),
        ([("/abs/evil", b"evil")], "absolute path refused"),
        ([(zip_entry("up", stat.S_IFLNK | 0o777), b"../outside")], "is outside the destination"),
        ([(zip_entry("null", stat.S_IFCHR | 0o666), b"")], "device node refused"),
        ([(zip_entry("pipe", stat.S_IFIFO | 0o666), b"")], "fifo or socket refused"),
    ],
)
def test_zip_unsafe_members_are_refused(
    dest: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], reason: str
) -> None:
    archive = build_zip(dest.parent / "bad.zip", [("fine.txt", b"fine"), *entries])
    try:
        with pytest.raises(SourceError) as caught:
            extract_zip(archive, dest, source="http://h/bad.zip")
    finally:
        archive.unlink()
    assert str(caught.value).startswith("http://h/bad.zip: member ")
    assert reason in str(caught.value)
    assert tree(dest) == {"fine.txt": "fine"}


def test_zip_absolute_name_is_refused_even_if_zipfile_would_strip_it(dest: Path) -> None:
    archive = dest.parent / "abs.zip"
    with zipfile.ZipFile(archive, "w") as output:
        info = zipfile.ZipInfo("placeholder")
        output.writestr(info, b"evil")
    # zipfile normalises names on write; patch the stored name to a real absolute path
    raw = archive.read_bytes().replace(b"placeholder", b"/tmp/evil__")
    archive.write_bytes(raw)
    try:
        with pytest.raises(SourceError, match="absolute path refused"):
            extract_zip(archive, dest)
    finally:
        archive.unlink()
    assert tree(dest) == {}


def test_zip_member_longer_than_its_recorded_size_is_refused(dest: Path) -> None:
    archive = dest.parent / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as output:
        output.writestr("fine.txt", b"fine")
        output.writestr("liar.bin", b"A" * 1000)
    raw = bytearray(archive.read_bytes())
    # say 10 bytes where there are 1000, in the local header and in the central directory
    # (sizes at +22 and +24 of each); the data and its CRC stay those of the 1000 bytes
    local = raw.index(b"PK\x03\x04" + bytes(raw[4:6]), raw.index(b"A" * 1000) - 60)
    central = raw.rindex(b"PK\x01\x02")
    for offset in (local + 22, central + 24):
        assert int.from_bytes(raw[offset : offset + 4], "little") == 1000
        raw[offset : offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    try:
        assert zipfile.ZipFile(archive).getinfo("liar.bin").file_size == 10
        with pytest.raises(SourceError) as caught:
            extract_zip(archive, dest, source="http://h/liar.zip")
    finally:
        archive.unlink()
    assert str(caught.value).startswith("http://h/liar.zip: member 'liar.bin': ")
    assert not (dest / "liar.bin").exists() or (dest / "liar.bin").stat().st_size <= 10


# junk ----------------------------------------------------------------------

JUNK = {
    "__MACOSX/": b"",
    "__MACOSX/site/": b"",
    "__MACOSX/site/._index.html": b"\x00\x05\x16\x07resource fork",
    "site/.DS_Store": b"\x00\x00\x00\x01Bud1",
    "site/._index.html": b"\x00\x05\x16\x07",
    "site/Thumbs.db": b"thumbs",
    "site/img/THUMBS.DB": b"thumbs",
    "site/Desktop.ini": b"[.ShellClassInfo]",
}
KEPT = {
    "site/index.html": b"<h1>hi</h1>",
    "site/img/logo.svg": b"<svg/>",
    "site/._folder/kept.txt": b"a folder named ._x is no AppleDouble file",
    "site/notes.ds_store.txt": b"only the exact names are junk",
}
JUNK_KINDS = (".DS_Store", "._*", "Thumbs.db", "__MACOSX", "desktop.ini")


def test_zip_junk_is_skipped_and_counted(dest: Path) -> None:
    archive = dest.parent / "junk.zip"
    with zipfile.ZipFile(archive, "w") as output:
        for name, data in {**JUNK, **KEPT}.items():
            output.writestr(name, data)
    try:
        result = extract_zip(archive, dest)
    finally:
        archive.unlink()
    files = {key: value for key, value in tree(dest).items() if value != "dir"}
    assert files == {name: data.decode() for name, data in KEPT.items()}
    assert result.junk_skipped == len(JUNK)
    assert result.junk_kinds == JUNK_KINDS
    assert result.bytes_written == sum(map(len, KEPT.values()))


def test_tar_junk_is_skipped_and_counted(dest: Path) -> None:
    members = [
        Member(name, kind=tarfile.DIRTYPE) if name.endswith("/") else Member(name, data)
        for name, data in {**JUNK, **KEPT}.items()
    ]
    # a hard link to a skipped member is skipped with it
    members.append(Member("site/ds-link", kind=tarfile.LNKTYPE, linkname="site/.DS_Store"))
    archive = build_tar(members, "gz")
    hasher = new_hasher(ChecksumAlgo.SHA256)
    stream = HashingReader(OneWayStream(archive), hasher)
    result = extract_tar_stream(stream, dest, compression="gz")
    files = {key: value for key, value in tree(dest).items() if value != "dir"}
    assert files == {name: data.decode() for name, data in KEPT.items()}
    assert result.junk_skipped == len(JUNK)
    assert result.junk_kinds == JUNK_KINDS
    # skipped content is still read: the digest covers the whole archive
    assert hasher.hexdigest() == hashlib.sha256(archive).hexdigest()


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_huge_extended_header_is_refused_before_it_is_read(dest: Path, kind: bytes) -> None:
    """A long-name or PAX header claiming megabytes would be read whole into memory (and its
    name end up in the error line); a small archive can claim a gigabyte this way."""
    claimed = 8 * 1024 * 1024
    header = tarfile.TarInfo("././@LongLink")
    header.type = kind
    header.size = claimed
    raw = header.tobuf(format=tarfile.GNU_FORMAT)[:512]
    body = b"a" * claimed + build_tar([Member("real.txt", b"real")])
    archive = gzip.compress(raw + body)
    assert len(archive) < 100_000
    with pytest.raises(SourceError) as caught:
        extract_tar_stream(OneWayStream(archive), dest, compression="gz", source="http://h/x.tgz")
    message = str(caught.value)
    assert f"a {claimed}-byte extended header (at most 1048576 accepted)" in message
    assert len(message) < 500
    assert not (dest / "real.txt").exists()

"""Archives whose `size` is their download size (as generated configs give it), end to end.

`--check` reads what each archive expands to from the archive itself (ranged reads) and says
where every planned size comes from; a build extracts them in full, skips junk members, and
an archive that expands past the data partition's room ends with one clear error, leaving
nothing behind (tests/support/leaks.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import DEFAULT_DATA_FILES, BaseImageLayout, make_base_image
from image_creator.report import SCHEMA_PATH
from image_creator.ui.console import ConsoleReporter
from image_creator.units import format_size
from tests.support.archives import tar_bytes, zip_bytes
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage, tree_digests
from tests.support.leaks import assert_no_leaks, clean_leftovers
from tests.support.requirements import require_root, require_tools

MIB = 2**20
PAGE = b"".join(b"<p>paragraph %d of an offline page</p>\n" % n for n in range(20_000))
SITE = {
    "index.html": b"<h1>offline</h1>\n",
    "pages/long.html": PAGE,
    "pages/more/other.html": PAGE[::-1],
    "img/noise.bin": random.Random(11).randbytes(100_000),
}
SITE_BYTES = sum(map(len, SITE.values()))
JUNK = {
    "__MACOSX/._index.html": b"\x00\x05\x16\x07fork",
    ".DS_Store": b"\x00\x00\x00\x01Bud1",
    "pages/._long.html": b"\x00\x05\x16\x07",
    "img/Thumbs.db": b"thumbs",
    "desktop.ini": b"[.ShellClassInfo]",
}
ZIP = zip_bytes({**SITE, **JUNK})
GZTAR = tar_bytes({**SITE, **JUNK}, "gz")


@dataclass(frozen=True)
class Outcome:
    code: int
    printed: list[str]  # the reporter's lines
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Outcome:
    stream = io.StringIO()
    code = main(list(argv), reporter=ConsoleReporter(stream, interactive=False))
    return Outcome(code, stream.getvalue().splitlines(), capsys.readouterr().err)


def write_config(folder: Path, config: Mapping[str, Any]) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> BaseImageLayout:
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz")
    return make_base_image(tmp_path_factory.mktemp("base") / "base.img", xz=True)


@pytest.fixture
def served(http_server: HttpServer, base_image: BaseImageLayout) -> HttpServer:
    assert base_image.xz_path is not None
    http_server.add_file("/base.img.xz", base_image.xz_path)
    http_server.add("/site.zip", ZIP)
    http_server.add("/site.tar.gz", GZTAR)
    return http_server


def archive_entries(server: HttpServer) -> list[dict[str, Any]]:
    """The archives with `size` = their own bytes, as offspot-config's ConfigBuilder gives."""
    return [
        {"url": server.url("/site.zip"), "to": "/data/site-zip", "via": "zip", "size": len(ZIP)},
        {
            "url": server.url("/site.tar.gz"),
            "to": "/data/site-gztar",
            "via": "gztar",
            "size": len(GZTAR),
        },
    ]


# --check -------------------------------------------------------------------


def test_check_tells_both_sizes_and_where_each_comes_from(
    served: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "base": served.url("/base.img.xz"),
        "files": [
            *archive_entries(served),
            {
                "url": served.url("/site.tar.gz"),
                "to": "/data/roomy",
                "via": "gztar",
                "size": 10 * MIB,
            },
            {"to": "/data/conf/message.txt", "content": "hello\n"},
        ],
    }
    report = tmp_path / "report.json"
    outcome = run(capsys, "--check", "--report", str(report), str(write_config(tmp_path, config)))
    assert outcome.code == 0, outcome.stderr

    zip_expanded = SITE_BYTES + sum(map(len, JUNK.values()))  # the central directory's sum
    tar_expanded = len(gzip.decompress(GZTAR))  # gzip's ISIZE: the tar's size
    zip_url, tar_url = served.url("/site.zip"), served.url("/site.tar.gz")
    assert (
        f"    /data/site-zip <- {zip_url}: {format_size(len(ZIP))} zip, "
        f"{format_size(zip_expanded)} expanded (size from archive)"
    ) in outcome.printed
    assert (
        f"    /data/site-gztar <- {tar_url}: {format_size(len(GZTAR))} gztar, "
        f"{format_size(tar_expanded)} expanded (size from archive)"
    ) in outcome.printed
    assert (
        f"    /data/roomy <- {tar_url}: {format_size(len(GZTAR))} gztar, "
        f"{format_size(10 * MIB)} expanded (size from declared)"
    ) in outcome.printed
    warnings = [line for line in outcome.printed if line.startswith("  ! files[")]
    assert warnings == [
        f"  ! files[0].size: {format_size(len(ZIP))} ({len(ZIP)} bytes) is less than {zip_url} "
        f"expands to, {format_size(zip_expanded)} ({zip_expanded} bytes); "
        "the archive's size is used",
        f"  ! files[1].size: {format_size(len(GZTAR))} ({len(GZTAR)} bytes) is less than "
        f"{tar_url} expands to, {format_size(tar_expanded)} ({tar_expanded} bytes); "
        "the archive's size is used",
    ]

    # ranged reads of the archives' ends only
    for path, data in (("/site.zip", ZIP), ("/site.tar.gz", GZTAR)):
        for record in served.requests_for(path):
            assert record.method == "HEAD" or (record.range and record.status == 206), record
        assert sum(record.body_length for record in served.requests_for(path)) < len(data)

    document = json.loads(report.read_text())
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
    files = {item["to"]: item for item in document["files"]}
    assert {to: (item["size_from"], item["planned_size"]) for to, item in files.items()} == {
        "/data/site-zip": ("archive", zip_expanded),
        "/data/site-gztar": ("archive", tar_expanded),
        "/data/roomy": ("declared", 10 * MIB),
        "/data/conf/message.txt": ("content", 6),
    }
    assert files["/data/roomy"]["archive_size"] == tar_expanded
    assert files["/data/site-zip"]["junk_skipped"] is None  # not built


# builds (root) -------------------------------------------------------------


@pytest.fixture
def output(tmp_path: Path) -> Iterator[Path]:
    require_root()
    require_tools("losetup", "e2fsck", "resize2fs", "debugfs")
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "hotspot.img"
    yield path
    clean_leftovers(path)


@pytest.mark.root
def test_compressible_archives_sized_by_their_download_size_extract_in_full(
    served: HttpServer, output: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {"base": served.url("/base.img.xz"), "files": archive_entries(served)}
    report = tmp_path / "report.json"
    outcome = run(capsys, "--report", str(report), str(write_config(tmp_path, config)), str(output))
    assert outcome.code == 0, outcome.stderr

    found = tree_digests(BuiltImage.open(output).dump_data(tmp_path / "dump"))
    expected = {
        f"{site}/{name}": sha256(data)
        for site in ("site-zip", "site-gztar")
        for name, data in SITE.items()
    }
    expected.update({name: sha256(data) for name, data in DEFAULT_DATA_FILES.items()})
    assert found == expected  # every byte, and no junk
    kinds = ".DS_Store, ._*, Thumbs.db, __MACOSX, desktop.ini"
    for to in ("/data/site-zip", "/data/site-gztar"):
        assert f"    {to}: skipped {len(JUNK)} junk entries ({kinds})" in outcome.printed
    document = json.loads(report.read_text())
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
    for item in document["files"]:
        assert (item["bytes_written"], item["junk_skipped"]) == (SITE_BYTES, len(JUNK))
    assert [path.name for path in output.parent.iterdir()] == [output.name]


def zip_bomb(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fine.txt", b"fine\n")
        with archive.open("zeros.bin", "w") as member:
            chunk = bytes(MIB)
            for _ in range(size // MIB):
                member.write(chunk)
    return buffer.getvalue()


def gz_bomb_with_a_small_isize(size: int) -> bytes:
    """A tar.gz of ``size`` zero bytes in two gzip members: ISIZE tells only the second's."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, length in (("zeros.bin", size), ("tail.bin", 512 * 1024)):
            info = tarfile.TarInfo(name)
            info.size = length
            tar.addfile(info, io.BytesIO(bytes(length)))
    plain = raw.getvalue()
    cut = size + 512  # the first member: up to the end of zeros.bin
    return gzip.compress(plain[:cut], mtime=0) + gzip.compress(plain[cut:], mtime=0)


@pytest.mark.root
@pytest.mark.parametrize("kind", ["zip", "gztar"])
def test_archive_bomb_ends_with_no_room_on_the_data_partition(
    kind: str,
    served: HttpServer,
    output: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if kind == "zip":
        bomb = zip_bomb(160 * MIB)
        # a server without ranges: the central directory is not read at check time
        url = served.add("/bomb.zip", bomb)
        served.fault("/bomb.zip", no_range=True)
    else:
        bomb = gz_bomb_with_a_small_isize(160 * MIB)
        url = served.add("/bomb.tar.gz", bomb)
    entry = {"url": url, "to": "/data/bomb", "via": kind, "size": len(bomb)}
    config = write_config(tmp_path, {"base": served.url("/base.img.xz"), "files": [entry]})

    outcome = run(capsys, str(config), str(output))

    assert outcome.code == 1, outcome.stderr
    [error] = outcome.errors
    assert error.startswith(f"error: no room on the data partition for /data/bomb ({url}): ")
    if kind == "zip":  # refused from its central directory, before writing
        assert f": the archive expands to {160 * MIB + 5} bytes, " in error
    else:  # streamed until the partition is full
        assert error.endswith(": No space left on device")
    assert "Traceback" not in outcome.stderr
    assert "==> Writing files" in outcome.printed
    assert not output.exists()
    assert_no_leaks(output)


@pytest.mark.root
@pytest.mark.parametrize("kind", ["zip", "gztar"])
def test_archive_of_more_files_than_free_inodes(
    kind: str,
    served: HttpServer,
    output: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = {f"many/{number}": b"" for number in range(60_000)}
    if kind == "zip":  # refused from its central directory, before writing
        url = served.add("/many.zip", zip_bytes(names))
        served.fault("/many.zip", no_range=True)  # not counted at check time
    else:  # tar members are not counted at check time: streamed until no inode is left
        url = served.add("/many.tar.gz", tar_bytes(names, "gz"))
    entry = {"url": url, "to": "/data/many", "via": kind}
    config = write_config(tmp_path, {"base": served.url("/base.img.xz"), "files": [entry]})

    outcome = run(capsys, str(config), str(output))

    assert outcome.code == 1, outcome.stderr
    [error] = outcome.errors
    found = re.fullmatch(
        r"error: out of inodes on the data partition: /data/many needs more than (\d+) inodes "
        r"\((\d+) free\)",
        error,
    )
    assert found is not None, error
    assert 0 < int(found[1]) <= int(found[2]) < 60_000
    assert not output.exists()
    assert_no_leaks(output)

"""The two backends build the same image: mounted (loop device, root) and rootless (libext2fs
on the image file).

One config with every kind of entry (plain files with and without checksum, zip and tar
archives holding folders with modes, executables, symbolic and hard links, inline content,
OCI images from the local registry, the config copies, offspot.yaml) is built by both, and
again rootless from a warm cache. The images are compared from the outside: partition
table and size, e2fsck, superblock fields and every backup superblock (the trap of
``resize2fs IMAGE?offset=`` that e2fsck does not see), the tree entry by entry (read
through a read-only loop mount), and offspot.yaml byte for byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import stat
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import DEFAULT_DATA_FILES, make_base_image
from image_creator.report import SCHEMA_PATH
from image_creator.system.partitions import read_partition_table
from image_creator.system.run import run
from image_creator.ui.base import NullReporter
from tests.support.fs_tree import (
    Entry,
    backup_superblocks,
    mounted_read_only,
    read_tree,
    superblock,
)
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage
from tests.support.registry import Registry
from tests.support.requirements import require_root, require_tools

# it chooses each backend itself: nothing to add under --backend rootless
pytestmark = [pytest.mark.root, pytest.mark.mounted_only]

OUTPUT_SIZE = 320 * 2**20
ZIM = b"ZIM\x04" + bytes(range(256)) * 6000
T_DIR, T_FILE, T_LINK = 1_600_000_000, 1_650_000_000, 1_690_000_000
# superblock fields that tell the filesystem's shape (counts of free blocks follow where
# each backend happened to allocate, the times when it ran)
SHAPE_FIELDS = (
    "Filesystem volume name",
    "Filesystem UUID",
    "Filesystem magic number",
    "Filesystem revision #",
    "Filesystem features",
    "Filesystem flags",
    "Filesystem state",
    "Errors behavior",
    "Inode count",
    "Block count",
    "Reserved block count",
    "Free inodes",
    "First block",
    "Block size",
    "Fragment size",
    "Group descriptor size",
    "Reserved GDT blocks",
    "Blocks per group",
    "Inodes per group",
    "Inode blocks per group",
    "Inode size",
    "Journal inode",
    "Journal backup",
)


def sha(data: bytes, algo: str = "sha256") -> str:
    return hashlib.new(algo, data).hexdigest()


def rich_tar(compression: str) -> bytes:
    """Folders with their own modes and times, an executable, a symbolic and a hard link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}" if compression else "w") as tar:  # type: ignore[call-overload]

        def add(name: str, kind: bytes, *, data: bytes = b"", mode: int, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            info.mtime = T_DIR if kind == tarfile.DIRTYPE else T_FILE
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("site", tarfile.DIRTYPE, mode=0o750)
        add("site/index.html", tarfile.REGTYPE, data=b"<h1>offline</h1>\n", mode=0o644)
        add("site/run.sh", tarfile.REGTYPE, data=b"#!/bin/sh\necho hi\n", mode=0o755)
        add("site/deep/er/data.bin", tarfile.REGTYPE, data=bytes(range(256)) * 300, mode=0o600)
        add("site/home.html", tarfile.SYMTYPE, mode=0o777, link="index.html")
        add("site/copy.html", tarfile.LNKTYPE, mode=0o644, link="site/index.html")
        add("site/deep/up", tarfile.SYMTYPE, mode=0o777, link="../run.sh")
    return buffer.getvalue()


def rich_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, data: bytes, mode: int) -> None:
            info = zipfile.ZipInfo(name, date_time=(2023, 5, 6, 7, 8, 10))
            info.create_system = 3
            info.external_attr = mode << 16
            archive.writestr(info, data)

        add("book/", b"", stat.S_IFDIR | 0o755)
        add("book/chapter1.txt", b"once upon a time\n" * 100, stat.S_IFREG | 0o644)
        add("book/tools/make.sh", b"#!/bin/sh\n", stat.S_IFREG | 0o755)
        add("book/latest.txt", b"chapter1.txt", stat.S_IFLNK | 0o777)
    return buffer.getvalue()


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz", "debugfs")
    path = tmp_path / "base" / "base.img"
    make_base_image(path, xz=True)
    return path


def _config(http_server: HttpServer, registry_env: Registry, base_xz: bytes) -> dict[str, Any]:
    http_server.add("/base/base.img.xz", base_xz)
    http_server.add("/zim/content.zim", ZIM)
    http_server.add("/zim/plain.bin", ZIM[:7000])
    http_server.add("/sites/site.tar.gz", rich_tar("gz"))
    http_server.add("/sites/site.tar", rich_tar(""))
    http_server.add("/sites/book.zip", rich_zip())
    return {
        "base": {
            "source": http_server.url("/base/base.img.xz"),
            "checksum": {"algo": "sha-256", "value": sha(base_xz)},
        },
        "output": {"size": OUTPUT_SIZE},
        "oci_images": [registry_env["test/hello:1.0"].ref],
        "files": [
            {
                "url": http_server.url("/zim/content.zim"),
                "to": "/data/contents/zims/content.zim",
                "checksum": {"algo": "sha-256", "value": sha(ZIM)},
            },
            {"url": http_server.url("/zim/plain.bin"), "to": "/data/contents/plain.bin"},
            {
                "url": http_server.url("/sites/site.tar.gz"),
                "to": "/data/contents/gz",
                "via": "gztar",
            },
            {"url": http_server.url("/sites/site.tar"), "to": "/data/contents/tar", "via": "tar"},
            {"url": http_server.url("/sites/book.zip"), "to": "/data/contents/zip", "via": "zip"},
            # written first, then replaced by the tar's member: the tar merges into a folder
            {"url": http_server.url("/zim/plain.bin"), "to": "/data/contents/tar/site/index.html"},
            # extracted once the archive around it is in place
            {
                "url": http_server.url("/sites/site.tar"),
                "to": "/data/contents/gz/site/nested",
                "via": "tar",
            },
            {"to": "/data/conf/message.txt", "content": "hello world\n"},
        ],
        "write_config": True,
        "offspot": {"timezone": "Africa/Bamako", "ap": {"ssid": "Kiwix Offspot"}},
    }


def _build(config: Path, output: Path, *options: str) -> dict[str, Any]:
    report = output.with_suffix(".json")
    argv = [*options, "--report", str(report), str(config), str(output)]
    assert main(argv, reporter=NullReporter()) == 0
    document: dict[str, Any] = json.loads(report.read_text())
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
    return document


ARCHIVED = ("contents/gz/", "contents/tar/", "contents/zip/")
# the folders whose time an archive records (the others are made as members arrive)
# (not "contents/tar/site", made by a file entry before its archive merged into it, nor
# "contents/gz/site", where another archive was extracted: the build wrote into them)
TIMED_FOLDERS = {"contents/gz/site/nested/site", "contents/zip/book"}


def _written_since(tree: dict[str, Entry], start_ns: int) -> set[str]:
    """The entries whose mtime is the build's (a folder the build wrote into, a file it
    wrote without a time of its own)."""
    return {path for path, entry in tree.items() if entry.mtime_ns >= start_ns}


def _comparable(tree: dict[str, Entry]) -> dict[str, Entry]:
    """The tree with the times of the build's own writing blanked: folders it made or wrote
    into, files it downloaded or wrote. Archive members and the base's files keep theirs."""
    kept = {}
    for path, entry in tree.items():
        if entry.kind == "folder":
            keeps_time = path in TIMED_FOLDERS
        else:
            keeps_time = path.startswith(ARCHIVED) or path in DEFAULT_DATA_FILES
        comparable = entry if keeps_time else dataclasses.replace(entry, mtime_ns=0)
        if path.startswith("images/"):
            # an export's tar records when its members were written: compared member by member
            comparable = dataclasses.replace(comparable, sha256=None)
        kept[path] = comparable
    return kept


def _members(tar_path: Path) -> dict[str, tuple[int, str]]:
    """name -> (mode, sha256) of every member of a tar."""
    found = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            content = tar.extractfile(member) if member.isfile() else None
            data = content.read() if content is not None else member.linkname.encode()
            found[member.name] = (member.mode, sha(data))
    return found


def test_both_backends_build_the_same_image(
    base_image: Path, http_server: HttpServer, registry_env: Registry, tmp_path: Path
) -> None:
    require_root()
    require_tools("losetup", "mount", "e2fsck", "resize2fs", "dumpe2fs", "mcopy", "sfdisk")
    base_xz = base_image.with_name("base.img.xz").read_bytes()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_config(http_server, registry_env, base_xz)))
    out = tmp_path / "out"
    out.mkdir()
    start_ns = time.time_ns() - 2 * 10**9  # ext4 times are the kernel's coarse clock
    builds = {
        "mounted": _build(config_path, out / "mounted.img", "--cache-dir", str(tmp_path / "c1")),
        "rootless": _build(
            config_path, out / "rootless.img", "--rootless", "--cache-dir", str(tmp_path / "c2")
        ),
        # the same cache again: every download and the OCI image from the cache
        "rootless-cached": _build(
            config_path, out / "cached.img", "--rootless", "--cache-dir", str(tmp_path / "c2")
        ),
    }
    assert builds["mounted"]["backend"] == {
        "name": "mounted",
        "reason": "running as root with loop devices",
    }
    assert builds["rootless"]["backend"] == {"name": "rootless", "reason": "asked with --rootless"}
    assert all(item["from_cache"] for item in builds["rootless-cached"]["files"] if item["source"])
    assert builds["rootless-cached"]["oci_images"][0]["from_cache"] is True

    images = {
        "mounted": out / "mounted.img",
        "rootless": out / "rootless.img",
        "rootless-cached": out / "cached.img",
    }
    reference = images["mounted"]
    tables = {
        name: json.loads(run(["sfdisk", "--json", image]).stdout) for name, image in images.items()
    }
    for table in tables.values():  # the same table but for the file's name
        table["partitiontable"].pop("device")
        for partition in table["partitiontable"]["partitions"]:
            partition.pop("node")
    trees, shapes, exports = {}, {}, {}
    for name, image in images.items():
        assert image.stat().st_size == reference.stat().st_size == OUTPUT_SIZE, name
        assert tables[name] == tables["mounted"], name
        built = BuiltImage.open(image)
        built.fsck_data()  # raises unless clean
        device = built.data_device()
        primary = superblock(device)
        shapes[name] = {key: primary.get(key) for key in SHAPE_FIELDS}
        block_size = primary["Block size"]
        backups = backup_superblocks(device)
        assert backups, name
        for block in backups:
            # each backup readable and describing the same filesystem (a truncated tail of
            # the partition reads back as zeros: dumpe2fs fails on a bad magic number)
            copy = superblock(device, "-o", f"superblock={block}", "-o", f"blocksize={block_size}")
            assert copy["Block count"] == primary["Block count"], (name, block)
            assert copy["Filesystem UUID"] == primary["Filesystem UUID"], (name, block)
        data = read_partition_table(image).partition(3)
        assert data is not None
        with mounted_read_only(image, data) as root:
            trees[name] = read_tree(root)
            exports[name] = {tar.name: _members(tar) for tar in (root / "images").iterdir()}
        assert built.boot_file("offspot.yaml") == BuiltImage.open(reference).boot_file(
            "offspot.yaml"
        ), name

    assert shapes["rootless"] == shapes["mounted"]
    assert shapes["rootless-cached"] == shapes["mounted"]
    mounted = trees["mounted"]
    # the reference is what it should be before anything is compared with it
    assert mounted["contents/zims/content.zim"].sha256 == sha(ZIM)
    assert mounted["contents/gz/site/copy.html"].links == 2
    assert mounted["contents/gz/site/home.html"].target == "index.html"
    assert mounted["contents/gz/site"].mode == 0o750
    assert mounted["contents/gz/site/run.sh"].mode == 0o755
    assert mounted["contents/gz/site/run.sh"].mtime_ns == T_FILE * 10**9
    assert mounted["contents/zip/book/latest.txt"].target == "chapter1.txt"
    assert mounted["contents/tar/site/index.html"] == mounted["contents/gz/site/index.html"]
    assert mounted["contents/gz/site/nested/site/run.sh"].mode == 0o755
    assert mounted["image.yaml"].links == 2
    assert mounted["image.yaml"].sha256 == sha(config_path.read_bytes())
    assert len(exports["mounted"]) == 1
    for name in ("rootless", "rootless-cached"):
        # the same entries carry the time of the build: written, or written into
        assert _written_since(trees[name], start_ns) == _written_since(mounted, start_ns), name
        assert exports[name] == exports["mounted"], name
        assert sorted(trees[name]) == sorted(mounted), name
        expected, found = _comparable(mounted), _comparable(trees[name])
        differences = [
            f"{path}: {field.name} {getattr(expected[path], field.name)!r} "
            f"!= {getattr(found[path], field.name)!r}"
            for path in expected
            for field in dataclasses.fields(Entry)
            if getattr(expected[path], field.name) != getattr(found[path], field.name)
        ]
        assert differences == [], name

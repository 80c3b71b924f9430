"""The demo base image is a real offspot-like disk image, checked with the real tools."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from image_creator.config.loader import load_config
from image_creator.config.model import Download, Inline
from image_creator.demo import (
    DEFAULT_BOOT_FILES,
    DEFAULT_DATA_FILES,
    DEFAULT_ROOT_FILES,
    DEMO_ARCHIVE_FILES,
    DEMO_TEXT,
    MIB,
    BaseImageLayout,
    make_base_image,
    read_layout,
)
from image_creator.system.run import run
from tests.support.requirements import require_tools

TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mtype", "mke2fs", "debugfs", "e2fsck", "xz")


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools(*TOOLS)


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> BaseImageLayout:
    require_tools(*TOOLS)
    return make_base_image(tmp_path_factory.mktemp("base") / "base.img", xz=True)


def ext4_cat(layout_path: Path, offset: int, path: str) -> bytes:
    # e2fsprogs' unix io manager reads "FILE?offset=BYTES": no loop device needed
    result = subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{layout_path}?offset={offset}"],
        capture_output=True,
        check=True,
    )
    return result.stdout


def fat_cat(image: Path, offset: int, path: str) -> bytes:
    result = subprocess.run(
        ["mtype", "-i", f"{image}@@{offset}", f"::{path}"], capture_output=True, check=True
    )
    return result.stdout


def test_partition_table(base_image: BaseImageLayout) -> None:
    table = json.loads(run(["sfdisk", "--json", base_image.path]).stdout)["partitiontable"]
    assert table["label"] == "dos"
    assert table["id"] == "0x6f66660a" == base_image.disk_id
    sectors = [
        (p["start"], p["size"], p["type"], p.get("bootable", False)) for p in table["partitions"]
    ]
    assert sectors == [
        (2048, 64 * 2048, "c", True),
        (2048 + 64 * 2048, 48 * 2048, "83", False),
        (2048 + 112 * 2048, 16 * 2048, "83", False),
    ]
    assert base_image.size == base_image.path.stat().st_size == 129 * MIB
    assert base_image.data.end_bytes == base_image.size
    assert [p.start_bytes for p in base_image.partitions] == [1 * MIB, 65 * MIB, 113 * MIB]
    assert all(p.start_bytes % MIB == 0 and p.size_bytes % MIB == 0 for p in base_image.partitions)
    assert read_layout(base_image.path).partitions == base_image.partitions


def test_boot_partition_is_fat32_with_defaults(base_image: BaseImageLayout, tmp_path: Path) -> None:
    with base_image.path.open("rb") as image:
        image.seek(base_image.boot.start_bytes)
        boot = image.read(base_image.boot.size_bytes)
    assert boot[82:90] == b"FAT32   "  # the FAT32 boot sector's file system type
    assert boot[510:512] == b"\x55\xaa"
    for name, content in DEFAULT_BOOT_FILES.items():
        assert fat_cat(base_image.path, base_image.boot.start_bytes, name) == content
    assert b"root=PARTUUID=6f66660a-02 " in DEFAULT_BOOT_FILES["cmdline.txt"]
    # fsck.fat takes no offset: check a copy of the partition
    require_tools("fsck.fat")
    partition = tmp_path / "boot.img"
    partition.write_bytes(boot)
    run(["fsck.fat", "-n", partition])


def test_root_and_data_are_clean_ext4(base_image: BaseImageLayout) -> None:
    for partition in (base_image.root, base_image.data):
        run(["e2fsck", "-fn", f"{base_image.path}?offset={partition.start_bytes}"])
    for name, content in DEFAULT_ROOT_FILES.items():
        assert ext4_cat(base_image.path, base_image.root.start_bytes, f"/{name}") == content
    readme = ext4_cat(base_image.path, base_image.data.start_bytes, "/contents/readme.txt")
    assert readme == DEFAULT_DATA_FILES["contents/readme.txt"]
    stats = run(
        ["dumpe2fs", "-h", f"{base_image.path}?offset={base_image.data.start_bytes}"]
    ).stdout
    assert "Filesystem volume name:   data" in stats
    assert "Block size:               4096" in stats
    assert "Block count:              4096" in stats  # 16 MiB: the filesystem fills it


def test_xz_decompresses_to_the_same_image(base_image: BaseImageLayout) -> None:
    assert base_image.xz_path == base_image.path.with_name("base.img.xz")
    decompressor = lzma.LZMADecompressor()
    original = hashlib.sha256()
    decompressed = hashlib.sha256()
    with base_image.path.open("rb") as image, base_image.xz_path.open("rb") as packed:
        while chunk := packed.read(MIB):
            decompressed.update(decompressor.decompress(chunk))
        while chunk := image.read(MIB):
            original.update(chunk)
    assert decompressor.eof
    assert decompressed.hexdigest() == original.hexdigest()


def test_no_leftovers_next_to_the_image(base_image: BaseImageLayout) -> None:
    assert sorted(p.name for p in base_image.path.parent.iterdir()) == ["base.img", "base.img.xz"]


def test_custom_files_and_sizes(tmp_path: Path) -> None:
    layout = make_base_image(
        tmp_path / "custom.img",
        boot_files={**DEFAULT_BOOT_FILES, "overlays/demo.dtbo": b"\x00dtbo"},
        root_files={"etc/hostname": b"custom\n"},
        data_files={"contents/zims/a.zim": b"ZIM", "conf/keep.txt": b"keep me\n"},
        boot_mib=40,
        root_mib=24,
        data_mib=8,
    )
    assert layout.xz_path is None
    assert not (tmp_path / "custom.img.xz").exists()
    assert [p.size_bytes for p in layout.partitions] == [40 * MIB, 24 * MIB, 8 * MIB]
    assert layout.size == 73 * MIB
    assert fat_cat(layout.path, layout.boot.start_bytes, "overlays/demo.dtbo") == b"\x00dtbo"
    assert (
        fat_cat(layout.path, layout.boot.start_bytes, "config.txt")
        == DEFAULT_BOOT_FILES["config.txt"]
    )
    assert ext4_cat(layout.path, layout.root.start_bytes, "/etc/hostname") == b"custom\n"
    assert ext4_cat(layout.path, layout.data.start_bytes, "/contents/zims/a.zim") == b"ZIM"
    assert ext4_cat(layout.path, layout.data.start_bytes, "/conf/keep.txt") == b"keep me\n"


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "a/../../b"])
def test_file_names_must_stay_inside_the_partition(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        make_base_image(tmp_path / "bad.img", data_files={name: b"x"})
    assert not (tmp_path / "bad.img").exists()


def test_boot_partition_too_small_for_fat32(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boot_mib"):
        make_base_image(tmp_path / "small.img", boot_mib=32)


def _local_path(source: str) -> Path:
    """A config source that must be local: an absolute path or a file:// URL."""
    parts = urlsplit(source)
    assert parts.scheme in ("", "file"), source
    assert Path(parts.path).is_absolute(), source
    return Path(parts.path)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``python -m image_creator.demo OUTDIR`` wrote (run once, as a user would)."""
    require_tools(*TOOLS)
    outdir = tmp_path_factory.mktemp("demo") / "out"
    result = subprocess.run(
        [sys.executable, "-m", "image_creator.demo", str(outdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(outdir / "demo.yaml")
    return outdir


def _archive_members(path: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            if handle is not None:
                members[member.name] = handle.read()
    return members


def test_demo_main_writes_a_local_config(demo_dir: Path) -> None:
    outdir = demo_dir
    config = yaml.safe_load((outdir / "demo.yaml").read_text())
    base = _local_path(config["base"]["source"])
    assert base == outdir / "base.img.xz"
    assert base.is_file()
    assert (
        config["base"]["root_size"] == read_layout(outdir / "base.img").root.size_bytes == 48 * MIB
    )
    assert "oci_images" not in config
    sources = [
        config["base"]["source"],
        *(entry["url"] for entry in config["files"] if "url" in entry),
    ]
    assert {urlsplit(source).scheme for source in sources} == {"", "file"}  # both forms
    assert config["write_config"] is True
    assert config["offspot"]["timezone"] == "Africa/Bamako"
    assert config["offspot"]["ap"]["ssid"]

    files = config["files"]
    assert all(entry["to"].startswith("/data/") for entry in files)
    by_via = {entry.get("via"): entry for entry in files if "url" in entry}
    assert set(by_via) == {"direct", "gztar", "zip"}
    direct = by_via["direct"]
    assert _local_path(direct["url"]).read_bytes() == DEMO_TEXT
    assert direct["checksum"] == {
        "algo": "sha-256",
        "value": hashlib.sha256(DEMO_TEXT).hexdigest(),
    }
    assert _archive_members(_local_path(by_via["gztar"]["url"])) == dict(DEMO_ARCHIVE_FILES)
    zipped = io.BytesIO(_local_path(by_via["zip"]["url"]).read_bytes())
    with zipfile.ZipFile(zipped) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == dict(DEMO_ARCHIVE_FILES)
    assert any("content" in entry and "url" not in entry for entry in files)


def test_demo_config_loads_with_the_project_loader(demo_dir: Path) -> None:
    loaded = load_config(str(demo_dir / "demo.yaml"), read_url=lambda url: b"")
    assert loaded.warnings == ()
    assert len(loaded.config.files) == 4
    assert loaded.config.base.root_size == 48 * MIB
    assert loaded.config.oci_images == ()
    assert loaded.config.base.url == (demo_dir / "base.img.xz").as_uri()
    assert [entry.origin for entry in loaded.config.files[:3]] == [
        Download((demo_dir / name).as_uri()) for name in ("hello.txt", "site.tar.gz", "site.zip")
    ]
    assert isinstance(loaded.config.files[3].origin, Inline)

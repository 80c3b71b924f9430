"""`auto` sizes built for real: every shape fits, e2fsck is clean, and little is left free.

Each base is served .xz-compressed, so --check can only give an upper bound and the build
measures the base's data filesystem itself. Free space is read from the built image's data
superblock (no mount). ``FIGURES`` collects, per shape, our size next to offspot-config's
minimum (printed with ``-s``; the README quotes them).
"""

from __future__ import annotations

import base64
import io
import json
import random
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import OFFICIAL_DATA_MKFS, make_base_image
from image_creator.sizing import AUTO_ALIGNMENT
from image_creator.system.ext4_geometry import (
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    Ext4Geometry,
    parse_superblock,
)
from image_creator.ui.base import NullReporter
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage
from tests.support.oci_layout import ARM64
from tests.support.registry import ImageSpec, Registry
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

MIB = 2**20
TIGHT = 0.05  # at most this share of the data filesystem's blocks is left free
FIGURES: dict[str, dict[str, int | float]] = {}
# one inode per block: the blocks, not the inodes, bind for tiny files
DENSE_DATA_MKFS = ("-m", "1", "-N", "32768")


def tiny_files(count: int) -> dict[str, bytes]:
    return {f"d{index % 40:02d}/file-{index:05d}.txt": b"%d\n" % index for index in range(count)}


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def serve_base(server: HttpServer, tmp_path: Path, **options: Any) -> dict[str, Any]:
    """A base image served as .xz; its config mapping, with rootfs_size as the ordering
    service gives it (the whole base image)."""
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz")
    layout = make_base_image(tmp_path / "base" / "base.img", xz=True, **options)
    assert layout.xz_path is not None
    url = server.add_file("/base/base.img.xz", layout.xz_path)
    return {"source": url, "rootfs_size": layout.size}


def data_geometry(image: Path) -> Ext4Geometry:
    offset = BuiltImage.open(image).offset(3)
    with image.open("rb") as file:
        file.seek(offset + SUPERBLOCK_OFFSET)
        return parse_superblock(file.read(SUPERBLOCK_SIZE))


def build(tmp_path: Path, config: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    require_root()
    require_tools("losetup", "e2fsck", "resize2fs", "tune2fs", "debugfs")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    output, report = tmp_path / "out.img", tmp_path / "report.json"
    argv = ["--report", str(report), str(config_path), str(output)]
    assert main(argv, reporter=NullReporter()) == 0
    return output, json.loads(report.read_text())


def check_planned(tmp_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    config_path = tmp_path / "check.yaml"
    config_path.write_text(yaml.safe_dump(config))
    report = tmp_path / "check.json"
    argv = ["--check", "--report", str(report), str(config_path)]
    assert main(argv, reporter=NullReporter()) == 0
    sizes: dict[str, Any] = json.loads(report.read_text())["sizes"]
    return sizes


def assert_tight(
    name: str,
    output: Path,
    report: dict[str, Any],
    *,
    load_room: int = 0,
    spooled: int = 0,
    near_offspot_config: bool = True,
) -> None:
    """Fits (the build succeeded), clean, sized exactly, little free; figures recorded.

    Room that is planned to be free is not counted as waste: ``load_room`` (the OCI images
    once loaded, for the device) and ``spooled`` (a zip's copy, held during the build only).
    """
    BuiltImage.open(output).fsck_data()
    sizes = report["sizes"]
    assert sizes["exact"] is True
    assert output.stat().st_size == sizes["output"] == sizes["minimum"]
    assert sizes["output"] % AUTO_ALIGNMENT == 0
    data = data_geometry(output)
    left = data.free_blocks - (load_room + spooled) // data.block_size
    FIGURES[name] = {
        "ours": sizes["output"],
        "offspot_config": sizes["offspot_config_minimum"],
        "data_blocks": data.block_count,
        "free_share": round(data.free_blocks / data.block_count, 4),
        "unplanned_free_share": round(left / data.block_count, 4),
        "free_inodes": data.free_inodes,
    }
    print(name, FIGURES[name])
    assert left < TIGHT * data.block_count, (name, left, data.block_count)
    if near_offspot_config:
        assert sizes["output"] <= sizes["offspot_config_minimum"] + 64 * MIB


def test_thousands_of_tiny_files(http_server: HttpServer, tmp_path: Path) -> None:
    files = tiny_files(20_000)
    base = serve_base(http_server, tmp_path, data_mib=24, data_mkfs=DENSE_DATA_MKFS)
    archive = zip_of(files)
    url = http_server.add("/site.zip", archive)
    config = {"base": base, "files": [{"url": url, "to": "/data/contents/site", "via": "zip"}]}

    planned = check_planned(tmp_path, config)
    output, report = build(tmp_path, config)

    assert planned["exact"] is False
    assert planned["output"] >= report["sizes"]["output"]  # the check's bound holds
    assert report["sizes"]["inodes"] >= len(files)
    # offspot-config counts bytes only: 20,000 files of a few bytes are 20,000 blocks to us
    assert_tight(
        "20,000 tiny files (zip)",
        output,
        report,
        spooled=len(archive),
        near_offspot_config=False,
    )
    tree = BuiltImage.open(output).dump_data(tmp_path / "dump")
    found = {
        path.relative_to(tree / "contents/site").as_posix(): path.read_bytes()
        for path in (tree / "contents/site").rglob("*")
        if path.is_file()
    }
    assert found == files


def test_a_few_large_files(http_server: HttpServer, tmp_path: Path) -> None:
    base = serve_base(http_server, tmp_path, data_mib=128, data_mkfs=OFFICIAL_DATA_MKFS)
    entries = []
    for index, size in enumerate((100 * MIB, 150 * MIB, 250 * MIB)):
        content = tmp_path / f"large-{index}.zim"
        with content.open("wb") as file:  # sparse on the server's side, written in full
            file.truncate(size)
        url = http_server.add_file(f"/zim/large-{index}.zim", content)
        entries.append({"url": url, "to": f"/data/contents/zims/large-{index}.zim"})
    config = {"base": base, "files": entries}

    output, report = build(tmp_path, config)

    assert_tight("3 large files (500 MiB)", output, report)
    written = {item["to"]: item["bytes_written"] for item in report["files"]}
    assert written == {
        "/data/contents/zims/large-0.zim": 100 * MIB,
        "/data/contents/zims/large-1.zim": 150 * MIB,
        "/data/contents/zims/large-2.zim": 250 * MIB,
    }


@pytest.mark.registry
def test_oci_images(http_server: HttpServer, registry_env: Registry, tmp_path: Path) -> None:
    bulky = registry_env.push(
        ImageSpec(
            "test/bulky",
            "1.0",
            platforms=(ARM64,),
            # compressible (base64 text): a gzip layer larger than its content is misread by
            # the registry size inspection (reported separately)
            layers=[{"data.txt": base64.b64encode(random.Random(8).randbytes(48 * MIB))}],
        )
    )
    base = serve_base(http_server, tmp_path, data_mkfs=OFFICIAL_DATA_MKFS)
    config = {"base": base, "oci_images": [bulky.ref, registry_env["test/hello:1.0"].ref]}

    output, report = build(tmp_path, config)

    # what the images take once loaded stays free for the device: not counted as waste
    load_room = sum(image["planned_fullsize"] for image in report["oci_images"])
    assert_tight("OCI images (64 MiB layer + hello)", output, report, load_room=load_room)
    for image in report["oci_images"]:
        assert image["size"] <= image["planned_filesize"]


def test_many_small_files_on_a_largefile_base_grow_for_inodes(
    http_server: HttpServer, tmp_path: Path
) -> None:
    count = 3000
    # a full 128 MiB group, as on the official base: 128 inodes, one per MiB
    base = serve_base(http_server, tmp_path, data_mib=128, data_mkfs=OFFICIAL_DATA_MKFS)
    url = http_server.add("/site.zip", zip_of(tiny_files(count)))
    config = {"base": base, "files": [{"url": url, "to": "/data/site", "via": "zip"}]}

    output, report = build(tmp_path, config)

    BuiltImage.open(output).fsck_data()
    data = data_geometry(output)
    # one inode per MiB: 3000 files need about 3 GiB, whatever their bytes
    assert data.inode_count >= count
    assert count * MIB < output.stat().st_size < (count + 256) * MIB
    # and no more: one group fewer would not hold them
    assert data.free_inodes < data.inodes_per_group + 64
    assert report["sizes"]["output"] == output.stat().st_size
    FIGURES["3000 tiny files, largefile base"] = {
        "ours": report["sizes"]["output"],
        "offspot_config": report["sizes"]["offspot_config_minimum"],
        "free_inodes": data.free_inodes,
    }
    print(FIGURES)


def test_explicit_size_too_small_for_the_real_filesystem_fails_at_build(
    http_server: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = serve_base(http_server, tmp_path, data_mkfs=OFFICIAL_DATA_MKFS)
    content = tmp_path / "big.zim"
    with content.open("wb") as file:
        file.truncate(64 * MIB)
    url = http_server.add_file("/big.zim", content)
    config: dict[str, Any] = {"base": base, "files": [{"url": url, "to": "/data/big.zim"}]}
    exact = check_planned(tmp_path, config)
    assert exact["exact"] is False  # an upper bound: the base is compressed
    # the smallest size the build finds, less one alignment step: the check lets it through
    # (it cannot see the base's data filesystem), the build refuses it
    _, report = build(tmp_path, config)
    too_small = report["sizes"]["minimum"] - AUTO_ALIGNMENT
    config["output"] = {"size": too_small}
    check_planned(tmp_path, config)
    config_path = tmp_path / "small.yaml"
    config_path.write_text(yaml.safe_dump(config))
    target = tmp_path / "small.img"
    assert main([str(config_path), str(target)], reporter=NullReporter()) == 3
    err = capsys.readouterr().err
    assert "output.size: " in err and f"({too_small} bytes) is too small" in err
    assert not target.exists()

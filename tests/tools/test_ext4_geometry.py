"""The growth model against the real tools: mke2fs makes a filesystem in a sparse file,
resize2fs grows it, and the model must predict the block count, the metadata, the reserved
blocks and the inodes the real filesystem ends up with."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from image_creator.content_needs import ContentNeeds
from image_creator.sizing import AUTO_ALIGNMENT, smallest_image
from image_creator.system.ext4 import check_filesystem, resize_filesystem
from image_creator.system.ext4_geometry import (
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    Ext4Geometry,
    grown,
    parse_superblock,
)
from image_creator.system.run import run
from tests.support.requirements import require_tools

MIB = 2**20
GIB = 2**30
LARGEFILE = ("-T", "largefile", "-m", "1")  # the official base's data filesystem

FORMATS = {
    "official-256M": (256 * MIB, LARGEFILE),
    "official-16M": (16 * MIB, LARGEFILE),
    "defaults-16M": (16 * MIB, ()),
    "dense-64M": (64 * MIB, ("-N", "5000", "-m", "3")),
}
SIZES = (
    300 * MIB,
    GIB,
    4 * GIB + 40 * 4096,  # a last group too small to keep: resize2fs cuts it off
    4 * GIB + 4 * MIB,
    16 * GIB,
    64 * GIB,  # past what the 16 MiB bases reserved descriptors for: resize_inode dropped
)


def make_filesystem(path: Path, size: int, options: tuple[str, ...]) -> Path:
    with path.open("wb") as file:
        file.truncate(size)
    run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-F", *options, path])
    return path


def geometry(path: Path) -> Ext4Geometry:
    with path.open("rb") as file:
        file.seek(SUPERBLOCK_OFFSET)
        return parse_superblock(file.read(SUPERBLOCK_SIZE))


def dumpe2fs(path: Path) -> dict[str, str]:
    fields = {}
    for line in run(["dumpe2fs", "-h", path]).stdout.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields[key.strip()] = value.strip()
    return fields


@pytest.mark.parametrize("name", FORMATS)
def test_superblock_reads_like_dumpe2fs(tmp_path: Path, name: str) -> None:
    require_tools("mke2fs", "dumpe2fs")
    size, options = FORMATS[name]
    image = make_filesystem(tmp_path / "fs.img", size, options)
    read = geometry(image)
    fields = dumpe2fs(image)
    assert read.block_size == int(fields["Block size"])
    assert read.block_count == int(fields["Block count"])
    assert read.free_blocks == int(fields["Free blocks"])
    assert read.reserved_blocks == int(fields["Reserved block count"])
    assert read.inode_count == int(fields["Inode count"])
    assert read.free_inodes == int(fields["Free inodes"])
    assert read.inodes_per_group == int(fields["Inodes per group"])
    assert read.inode_blocks_per_group == int(fields["Inode blocks per group"])
    assert read.reserved_gdt_blocks == int(fields.get("Reserved GDT blocks", "0"))
    assert read.resize_inode == ("resize_inode" in fields["Filesystem features"].split())
    assert read.measured


@pytest.mark.parametrize("name", FORMATS)
def test_growth_model_matches_resize2fs(tmp_path: Path, name: str) -> None:
    require_tools("mke2fs", "e2fsck", "resize2fs", "tune2fs", "dumpe2fs")
    size, options = FORMATS[name]
    base = make_filesystem(tmp_path / "base.img", size, options)
    before = geometry(base)
    for target in SIZES:
        image = tmp_path / "grown.img"
        shutil.copyfile(base, image)
        with image.open("r+b") as file:
            file.truncate(target)
        check_filesystem(image, fix=True)
        resize_filesystem(image)
        check_filesystem(image, fix=False)

        real, model = geometry(image), grown(before, target)

        assert model.block_count == real.block_count, target
        assert model.inode_count == real.inode_count, target
        assert model.used_inodes == real.used_inodes, target
        assert model.reserved_blocks == real.reserved_blocks, target
        # dropping resize_inode frees one more block (its indirect block) than the model says
        slack = 1 if model.drops_resize_inode else 0
        assert 0 <= model.used_blocks - real.used_blocks <= slack, target
        assert model.drops_resize_inode == (before.resize_inode and not real.resize_inode)
    assert grown(before, 4 * GIB + 40 * 4096).block_count == 4 * GIB // 4096


@pytest.mark.parametrize("name", FORMATS)
def test_smallest_image_is_the_smallest_that_fits(tmp_path: Path, name: str) -> None:
    require_tools("mke2fs")
    size, options = FORMATS[name]
    before = geometry(make_filesystem(tmp_path / "base.img", size, options))
    before_data = 8 * MIB
    for blocks, inodes in ((0, 0), (50_000, 10), (2_000_000, 100), (1000, 3000)):
        needs = ContentNeeds(blocks=blocks, inodes=inodes, load_room_blocks=0)
        floor = before_data + size
        image, _ = smallest_image(before, needs, before_data=before_data, floor=floor)
        assert image % AUTO_ALIGNMENT == 0
        fs = grown(before, image - before_data)
        assert fs.available_blocks >= blocks and fs.free_inodes >= inodes
        smaller = grown(before, image - AUTO_ALIGNMENT - before_data)
        assert (
            image - AUTO_ALIGNMENT < floor
            or smaller.available_blocks < blocks
            or smaller.free_inodes < inodes
        ), (blocks, inodes)

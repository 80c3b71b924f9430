"""Growing a small ext4 filesystem far past what its reserved descriptors allow."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from image_creator.system.ext4 import check_filesystem, filesystem_size, resize_filesystem
from image_creator.system.run import run
from tests.support.requirements import require_tools

MIB = 2**20


def features(path: Path) -> list[str]:
    for line in run(["dumpe2fs", "-h", path]).stdout.splitlines():
        if line.startswith("Filesystem features:"):
            return line.split(":", 1)[1].split()
    raise AssertionError("no features line")


@pytest.mark.parametrize(
    ("grown", "keeps_resize_inode"),
    [(64 * MIB, True), (32 * 2**30, False)],
)
def test_small_filesystem_grows(tmp_path: Path, grown: int, keeps_resize_inode: bool) -> None:
    require_tools("mke2fs", "e2fsck", "resize2fs", "tune2fs", "dumpe2fs", "debugfs")
    tree = tmp_path / "tree"
    (tree / "contents").mkdir(parents=True)
    (tree / "contents" / "kept.txt").write_bytes(b"kept\n" * 1000)
    image = tmp_path / "data.img"
    with image.open("wb") as file:
        file.truncate(16 * MIB)
    run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-F", "-d", tree, image])
    with image.open("r+b") as file:
        file.truncate(grown)  # sparse: 32 GiB cost nothing here
    check_filesystem(image, fix=True)

    resize_filesystem(image)

    assert filesystem_size(image) == grown
    assert ("resize_inode" in features(image)) is keeps_resize_inode
    check_filesystem(image, fix=False)
    content = subprocess.run(
        ["debugfs", "-R", "cat /contents/kept.txt", str(image)],
        capture_output=True,
        check=True,
    ).stdout
    assert content == b"kept\n" * 1000

"""Fetching the base image: .xz decompressed (by xz, or in Python without it), checksum
verified, written sparse."""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path

import pytest

from image_creator.cache.downloads import Downloads
from image_creator.checks.sources import inspect_base
from image_creator.config.model import BaseImage, Checksum
from image_creator.demo import make_base_image
from image_creator.digests import ChecksumAlgo
from image_creator.errors import ChecksumMismatchError, SourceError
from image_creator.fetch.client import HttpClient
from image_creator.progress import no_progress
from image_creator.steps import fetch_base_image as base_image
from image_creator.steps.fetch_base_image import fetch_base_image
from tests.support.requirements import require_tools

MIB = 2**20


@pytest.fixture
def image(tmp_path: Path) -> bytes:
    rng = random.Random(7)
    data = b"".join(rng.randbytes(MIB) if index % 4 == 0 else bytes(MIB) for index in range(12))
    (tmp_path / "base.img").write_bytes(data)
    return data


def compress(tmp_path: Path) -> Path:
    require_tools("xz")
    # several blocks, as `xz -T0` makes them: what lets xz decompress on several cores
    subprocess.run(
        ["xz", "-k", "-1", "-T2", "--block-size=2MiB", str(tmp_path / "base.img")], check=True
    )
    return tmp_path / "base.img.xz"


def fetch(tmp_path: Path, url: str, checksum: Checksum | None = None) -> Path:
    source = inspect_base(BaseImage(url=url, root_size=4 * MIB, checksum=checksum), HttpClient())
    target = tmp_path / "out.img"
    target.write_bytes(b"")
    fetched = fetch_base_image(source, target, Downloads(HttpClient()), on_progress=no_progress)
    assert fetched.image_size == target.stat().st_size
    assert not fetched.from_cache
    return target


@pytest.mark.parametrize("with_xz_tool", [True, False])
def test_xz_image_is_decompressed_verified_and_sparse(
    tmp_path: Path, image: bytes, with_xz_tool: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed = compress(tmp_path)
    if not with_xz_tool:  # a host without xz: the tool's absence cannot be had for real here
        monkeypatch.setattr(base_image, "which", lambda binary: None)
    digest = hashlib.sha256(compressed.read_bytes()).hexdigest()
    target = fetch(tmp_path, compressed.as_uri(), Checksum(algo=ChecksumAlgo.SHA256, value=digest))
    assert target.read_bytes() == image
    assert target.stat().st_blocks * 512 <= 3 * MIB + 64 * 1024  # 3 of 12 MiB hold data


@pytest.mark.parametrize("with_xz_tool", [True, False])
def test_corrupt_xz_is_a_source_error(
    tmp_path: Path, image: bytes, with_xz_tool: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed = compress(tmp_path)
    if not with_xz_tool:
        monkeypatch.setattr(base_image, "which", lambda binary: None)
    data = bytearray(compressed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    compressed.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"corrupt \.xz data") as caught:
        fetch(tmp_path, compressed.as_uri())
    assert str(caught.value).startswith(compressed.as_uri())


def test_wrong_checksum(tmp_path: Path, image: bytes) -> None:
    compressed = compress(tmp_path)
    with pytest.raises(ChecksumMismatchError, match="sha-256 checksum mismatch"):
        fetch(tmp_path, compressed.as_uri(), Checksum(algo=ChecksumAlgo.SHA256, value="0" * 64))


@pytest.mark.parametrize("with_xz_tool", [True, False])
def test_a_base_image_that_goes_on_past_its_partitions_is_stopped(
    tmp_path: Path, with_xz_tool: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small .xz that expands far past the partition table's end (a decompression bomb):
    refused once the partitions' end plus slack is passed, not written to the host's end."""
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz")
    layout = make_base_image(tmp_path / "real.img", data_mib=8, root_mib=8, boot_mib=34)
    bomb = tmp_path / "base.img"
    with bomb.open("wb") as file:
        file.write(layout.path.read_bytes())
        file.truncate(layout.size + 160 * MIB)  # zeros: they compress to almost nothing
    subprocess.run(["xz", "-k", "-0", "-T2", str(bomb)], check=True)
    compressed = bomb.with_name("base.img.xz")
    assert compressed.stat().st_size < 2 * MIB
    if not with_xz_tool:
        monkeypatch.setattr(base_image, "which", lambda binary: None)
    with pytest.raises(SourceError, match="goes on past its partitions' end") as caught:
        fetch(tmp_path, compressed.as_uri())
    assert str(caught.value).startswith(compressed.as_uri())
    written = tmp_path / "out.img"
    assert written.stat().st_size <= layout.size + base_image.TRAILING_SLACK

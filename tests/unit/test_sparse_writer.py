"""The sparse writer: the same bytes as a plain copy, with holes where the zeros were."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from image_creator.steps.fetch_base_image import HOLE_BLOCK, SparseWriter


def pattern(seed: int) -> bytes:
    """Runs of data and zeros of every alignment, ending with zeros or data."""
    rng = random.Random(seed)
    parts = []
    for _ in range(40):
        length = rng.choice([1, 511, HOLE_BLOCK - 1, HOLE_BLOCK, 3 * HOLE_BLOCK + 7, 200_000])
        parts.append(bytes(length) if rng.random() < 0.6 else rng.randbytes(length))
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("chunk", [1000, HOLE_BLOCK, 1 << 20])
def test_same_content_with_holes(tmp_path: Path, seed: int, chunk: int) -> None:
    data = pattern(seed) + bytes(5 * HOLE_BLOCK)  # a trailing hole
    target = tmp_path / "out.img"
    target.write_bytes(b"")
    with target.open("r+b") as file:
        writer = SparseWriter(file)
        for start in range(0, len(data), chunk):
            writer.write(data[start : start + chunk])
        assert writer.close() == len(data)
    assert target.read_bytes() == data
    zero_blocks = sum(
        1
        for start in range(0, len(data) - HOLE_BLOCK + 1, HOLE_BLOCK)
        if not data[start : start + HOLE_BLOCK].strip(b"\0")
    )
    allocated = target.stat().st_blocks * 512
    assert allocated <= len(data) - zero_blocks * HOLE_BLOCK + HOLE_BLOCK


def test_all_zeros_allocates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "zeros.img"
    target.write_bytes(b"")
    with target.open("r+b") as file:
        writer = SparseWriter(file)
        writer.write(bytes(10 * HOLE_BLOCK + 3))
        writer.close()
    assert target.stat().st_size == 10 * HOLE_BLOCK + 3
    assert target.stat().st_blocks == 0

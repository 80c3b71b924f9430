"""Staged writes: nothing under its final name before it is complete; any type replaced."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from image_creator.errors import BuildError
from image_creator.steps.placement import destination, staged


def test_a_file_replaces_a_folder_and_a_folder_a_file(tmp_path: Path) -> None:
    target = tmp_path / "x"
    target.mkdir()
    (target / "old").write_text("old")
    with staged(target) as staging:
        staging.write_text("file")
    assert target.read_text() == "file"
    with staged(target, directory=True) as staging:
        (staging / "new").write_text("new")
    assert [path.name for path in target.iterdir()] == ["new"]


def test_a_folder_merges_into_an_existing_one(tmp_path: Path) -> None:
    target = tmp_path / "site"
    (target / "keep").mkdir(parents=True)
    (target / "keep" / "a").write_text("kept")
    (target / "index.html").write_text("old")
    with staged(target, directory=True) as staging:
        (staging / "keep").mkdir()
        (staging / "keep" / "b").write_text("added")
        (staging / "index.html").write_text("new")
    assert (target / "keep" / "a").read_text() == "kept"
    assert (target / "keep" / "b").read_text() == "added"
    assert (target / "index.html").read_text() == "new"


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x"
    with pytest.raises(RuntimeError), staged(target, directory=True) as staging:
        (staging / "half").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_destination_refuses_a_folder_leading_outside(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    outside = tmp_path / "host"
    outside.mkdir()
    (root / "contents").symlink_to(outside)
    with pytest.raises(BuildError, match="leads outside the data partition"):
        destination(root, PurePosixPath("contents/file.zim"))
    assert list(outside.iterdir()) == []

"""Staged writes: nothing under its final name before it is complete; any type replaced."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from image_creator.errors import BuildError
from image_creator.placement import (
    destination,
    placement_rounds,
    run_in_rounds,
    staged,
    temporary_sibling,
)


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
    with pytest.raises(BuildError, match=r"/data/contents is a symbolic link \(to /"):
        destination(root, PurePosixPath("contents/x/y/file.zim"))
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("link", ["../..", "..", ".", "/", "inner"])
def test_destination_never_follows_a_link_even_one_inside(tmp_path: Path, link: str) -> None:
    root = tmp_path / "a" / "data"
    (root / "inner").mkdir(parents=True)
    (root / "inner" / "up").symlink_to(link)
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    with pytest.raises(BuildError, match="/data/inner/up is a symbolic link"):
        destination(root, PurePosixPath("inner/up/x/y/f"))
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before


def test_destination_creates_folders_and_replaces_a_link_at_the_name(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "file").write_text("a file")
    with pytest.raises(BuildError, match="/data/file is not a folder"):
        destination(root, PurePosixPath("file/x"))
    target = destination(root, PurePosixPath("contents/zims/a.zim"))
    assert target == root / "contents" / "zims" / "a.zim"
    assert target.parent.is_dir() and not target.exists()
    target.symlink_to("/etc/passwd")
    assert destination(root, PurePosixPath("contents/zims/a.zim")) == target
    assert not target.exists() and not target.is_symlink()


def test_a_merge_tells_which_existing_files_it_replaces(tmp_path: Path) -> None:
    target = tmp_path / "app"
    (target / "assets").mkdir(parents=True)
    (target / ".touch").write_text("-")
    (target / "assets" / "logo.png").write_text("config's logo")
    replaced: list[Path] = []
    with staged(target, directory=True, on_replace=replaced.append) as staging:
        (staging / "assets").mkdir()
        (staging / "assets" / "logo.png").write_text("archive's logo")
        (staging / "index.html").write_text("<h1>app</h1>")
    assert replaced == [target / "assets" / "logo.png"]
    assert (target / ".touch").read_text() == "-"
    assert (target / "assets" / "logo.png").read_text() == "archive's logo"


def test_placement_rounds_write_files_first_then_archives_outer_to_inner() -> None:
    data = PurePosixPath("/data")
    destinations = [
        (data / "apps/wiki", True),  # an archive
        (data / "apps/wiki/.touch", False),  # inline content inside it
        (data / "apps/wiki/media", True),  # an archive inside the first one
        (data / "zims/a.zim", False),
        (data / "apps/other", True),  # nothing inside it, nothing around it: at once
        (data / "apps/other-app", True),  # a name that starts like another's is no nesting
        (data / "apps/deep/x", True),  # nothing to wait for either
        (data / "apps/deep/x/y/z", True),  # inside the one before: after it
        (data / "apps/deep/x/y/z/f", False),  # inside both: before both
    ]
    assert placement_rounds(destinations) == [[1, 3, 4, 5, 8], [0, 6], [2, 7]]
    assert placement_rounds([]) == []


def test_an_archive_with_nothing_inside_runs_with_the_plain_files() -> None:
    data = PurePosixPath("/data")
    destinations = [(data / "site", True), (data / "zims/a.zim", False), (data / "b.zim", False)]
    assert placement_rounds(destinations) == [[0, 1, 2]]


def test_run_in_rounds_keeps_task_order_and_runs_rounds_in_sequence() -> None:
    started: list[str] = []

    def task(name: str) -> Callable[[threading.Event], str]:
        def run(cancelled: threading.Event) -> str:
            started.append(name)
            return name.upper()

        return run

    tasks = [task(name) for name in ("a", "b", "c", "d")]
    assert run_in_rounds(tasks, [[3], [0, 2], [1]], workers=2) == ["A", "B", "C", "D"]
    assert started[0] == "d" and started[-1] == "b"


def test_a_temporary_name_fits_even_for_the_longest_names(tmp_path: Path) -> None:
    for name in ("a" * 255, "é" * 127, "short.zim"):
        staging = temporary_sibling(tmp_path / name)
        assert len(staging.name.encode()) <= 255
        assert staging.name.startswith(f".{name[:8]}") and staging.name.endswith(".part")
        staging.write_text("fits")  # the filesystem agrees
    with staged(tmp_path / ("b" * 255)) as staging:
        staging.write_text("x")
    assert (tmp_path / ("b" * 255)).read_text() == "x"

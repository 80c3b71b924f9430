"""Disk faults end in a documented exit code and one line, never in a corrupt image.

OUTPUT goes on a small tmpfs that has room for the build when it starts; a filler process
(``dd``) then fills it at a chosen moment: while the base image is written, before the
data filesystem is grown, and at the start, the middle and the end of writing a file or an
archive onto the data partition. The image's writes land in the page cache of the
loop-mounted data filesystem and fail only at writeback, which nobody used to look at: the
build printed "image ready" with a file missing. Each run must now exit 2 naming the
volume, publish nothing and leave nothing behind (tests/support/leaks.py).

Also here: a read-only OUTPUT folder or build folder, an OUTPUT name too long, an
``output.size`` beyond the largest file the volume can hold (all exit 3), and a base image
without a data partition, refused alike by ``--check`` and the build.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import make_base_image
from image_creator.progress import ProgressCallback
from image_creator.system.partitions import data_partition, read_partition_table
from image_creator.ui.base import NullReporter
from image_creator.ui.console import ConsoleReporter
from tests.support.httpserver import HttpServer
from tests.support.leaks import assert_no_leaks, clean_leftovers
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root
MIB = 2**20
CONTENT = 24 * MIB
# the base image is 59 MiB (sparse, 34 MiB FAT), the content 24 MiB: the check passes on 140
VOLUME_MIB = 140


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error: ")]


@contextmanager
def tmpfs(path: Path, size_mib: int, *options: str) -> Iterator[Path]:
    path.mkdir(exist_ok=True)
    flags = ",".join((f"size={size_mib}m", *options))
    subprocess.run(["mount", "-t", "tmpfs", "-o", flags, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    require_root()
    with tmpfs(tmp_path / "volume", VOLUME_MIB) as path:
        (path / "out").mkdir()  # the leak check looks at OUTPUT's folder: not the mount
        try:
            yield path
        finally:
            clean_leftovers(path / "out" / "hotspot.img")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    require_root()
    require_tools("losetup", "sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "e2fsck", "debugfs")
    path = tmp_path / "base" / "base.img"
    make_base_image(path, root_mib=8)
    return path


def fill(volume: Path) -> None:
    """Another process writes to the volume until it is full."""
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={volume / 'filler'}", "bs=1M", "status=none"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    fs = os.statvfs(volume)
    assert fs.f_bavail * fs.f_frsize < MIB, "the filler left room"


class FillingReporter(NullReporter):
    """Runs the filler when a step starts, or when a progress bar passes a fraction of its
    total: the moment is chosen by bytes, not by time."""

    def __init__(self, *, step: str | None = None, progress: tuple[str, float] | None = None,
                 action: Callable[[], None]) -> None:  # fmt: skip
        super().__init__()
        self._step, self._progress, self._action = step, progress, action
        self.fired = False

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            self._action()

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        if title == self._step:
            self._fire()
        with super().step(title):
            yield

    @contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[ProgressCallback]:
        done = 0

        def advance(nbytes: int) -> None:
            nonlocal done
            done += nbytes
            wanted = self._progress
            if wanted is not None and label == wanted[0] and total and done >= wanted[1] * total:
                self._fire()

        yield advance


def downloaded(server: HttpServer, path: str) -> bool:
    """Whether ``path`` was downloaded in full (the check's ranged reads do not count)."""
    return any(r.method == "GET" and r.range is None for r in server.requests_for(path))


def write_config(folder: Path, document: Mapping[str, Any]) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(dict(document), sort_keys=False))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str], reporter: Any = None) -> Outcome:
    out = io.StringIO()
    code = main(argv, reporter=reporter or ConsoleReporter(out, interactive=False))
    captured = capsys.readouterr()
    return Outcome(code, out.getvalue() + captured.out, captured.err)


def assert_no_space(outcome: Outcome, volume: Path, output: Path) -> None:
    assert outcome.code == 2, outcome
    assert len(outcome.errors) == 1, outcome.err
    assert outcome.errors[0].startswith(f"error: no space left on {volume}"), outcome.err
    assert "Traceback" not in outcome.err
    assert "image ready" not in outcome.out
    assert not output.exists()
    assert_no_leaks(output)


# a full OUTPUT volume ----------------------------------------------------------------------

FILE_ENTRY = {"to": "/data/contents/big.zim"}
ARCHIVE_ENTRY = {"to": "/data/contents/site", "via": "tar"}


def tar_of(size: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for index in range(size // (2 * MIB)):
            info = tarfile.TarInfo(f"pages/page-{index:02}.bin")
            info.size = 2 * MIB
            tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    return raw.getvalue()


@pytest.mark.parametrize("kind", ["file", "archive"])
@pytest.mark.parametrize("moment", [0.0, 0.5, 1.0], ids=["start", "middle", "end"])
def test_volume_filled_while_writing_content(
    kind: str,
    moment: float,
    volume: Path,
    base: Path,
    http_server: HttpServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    http_server.add_file("/base.img", base)
    if kind == "file":
        url = http_server.add("/big.zim", os.urandom(CONTENT))
        entry = {**FILE_ENTRY, "url": url}
    else:
        url = http_server.add("/site.tar", tar_of(CONTENT))
        entry = {**ARCHIVE_ENTRY, "url": url}
    config = write_config(tmp_path, {"base": http_server.url("/base.img"), "files": [entry]})
    output = volume / "out" / "hotspot.img"
    reporter = FillingReporter(progress=(entry["to"], moment), action=lambda: fill(volume))

    outcome = run([str(config), str(output)], capsys, reporter)

    assert reporter.fired, outcome
    assert_no_space(outcome, volume, output)


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param({"progress": ("base image", 0.5)}, id="writing-the-base-image"),
        pytest.param({"step": "Resizing data filesystem"}, id="before-resizing"),
        pytest.param({"step": "Writing files"}, id="before-writing-files"),
    ],
)
def test_volume_filled_before_the_content(
    hook: dict[str, Any],
    volume: Path,
    base: Path,
    http_server: HttpServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    http_server.add_file("/base.img", base)
    url = http_server.add("/big.zim", os.urandom(CONTENT))
    config = write_config(
        tmp_path, {"base": http_server.url("/base.img"), "files": [{**FILE_ENTRY, "url": url}]}
    )
    output = volume / "out" / "hotspot.img"
    reporter = FillingReporter(**hook, action=lambda: fill(volume))

    outcome = run([str(config), str(output)], capsys, reporter)

    assert reporter.fired, outcome
    assert_no_space(outcome, volume, output)


def test_the_same_build_with_room_succeeds(
    volume: Path,
    base: Path,
    http_server: HttpServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The control: the volume is large enough, and only the filler makes the runs fail."""
    http_server.add_file("/base.img", base)
    content = os.urandom(CONTENT)
    url = http_server.add("/big.zim", content)
    config = write_config(
        tmp_path, {"base": http_server.url("/base.img"), "files": [{**FILE_ENTRY, "url": url}]}
    )
    output = volume / "out" / "hotspot.img"

    outcome = run([str(config), str(output)], capsys)

    assert outcome.code == 0, outcome.err
    assert "image ready" in outcome.out
    assert data_file(output, "/contents/big.zim") == content
    output.unlink()
    assert_no_leaks(output)


def data_file(image: Path, path: str) -> bytes:
    start = data_partition(read_partition_table(image)).start_bytes
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{image}?offset={start}"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


# paths that cannot be written --------------------------------------------------------------


@pytest.fixture
def small_config(base: Path, http_server: HttpServer, tmp_path: Path) -> Path:
    http_server.add_file("/base.img", base)
    url = http_server.add("/small.txt", b"hello\n")
    return write_config(
        tmp_path,
        {
            "base": http_server.url("/base.img"),
            "files": [{"url": url, "to": "/data/small.txt"}],
        },
    )


def test_read_only_output_folder(
    small_config: Path, tmp_path: Path, http_server: HttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    require_root()
    with tmpfs(tmp_path / "ro", 200, "ro") as folder:
        output = folder / "hotspot.img"
        outcome = run([str(small_config), str(output)], capsys)
        assert outcome.code == 3, outcome
        assert outcome.errors == [
            f"error: {folder}: the folder of OUTPUT is not writable (Read-only file system)"
        ]
        assert not downloaded(http_server, "/base.img")


def test_immutable_build_folder(
    small_config: Path, tmp_path: Path, http_server: HttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tools("chattr")
    with tmpfs(tmp_path / "out", 200) as folder:
        build_dir = folder / "build"
        build_dir.mkdir()
        immutable = subprocess.run(["chattr", "+i", str(build_dir)], check=False)
        if immutable.returncode != 0:
            pytest.skip("this tmpfs has no immutable flag")
        try:
            output = folder / "hotspot.img"
            argv = ["--build-dir", str(build_dir), str(small_config), str(output)]
            outcome = run(argv, capsys)
        finally:
            subprocess.run(["chattr", "-i", str(build_dir)], check=True)
        assert outcome.code == 3, outcome
        assert outcome.errors == [f"error: {build_dir}: the build folder is not writable"
                                  " (not writable)"]  # fmt: skip
        assert list(folder.iterdir()) == [build_dir]
        assert not downloaded(http_server, "/base.img")


def test_output_folder_turned_read_only_during_the_check(
    small_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder passes the check, then is remounted read-only before the partial image is
    made: the same exit code, naming the folder."""
    require_root()
    with tmpfs(tmp_path / "out", 200) as folder:

        def remount() -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

        reporter = FillingReporter(step="Checking free space", action=remount)
        outcome = run([str(small_config), str(folder / "hotspot.img")], capsys, reporter)
        assert reporter.fired, outcome
        assert outcome.code == 3, outcome
        assert outcome.errors == [
            f"error: {folder}: the folder of OUTPUT is not writable (Read-only file system)"
        ]


def test_output_name_too_long(
    small_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / ("x" * 252 + ".img")
    outcome = run([str(small_config), str(output)], capsys)
    assert outcome.code == 3, outcome
    assert outcome.errors == [
        f"error: {output}: OUTPUT's name is 256 bytes long, more than the 255 a file name may have"
    ]


@pytest.mark.parametrize("backend", [(), ("--rootless",)], ids=["mounted", "rootless"])
def test_longest_output_name_builds(
    backend: tuple[str, ...],
    small_config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 255-byte OUTPUT name is valid: the partial image's name is cut to fit (and the
    rootless backend's side file is not named after it)."""
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / ("x" * 251 + ".img")
    outcome = run([*backend, str(small_config), str(output)], capsys)
    assert outcome.code == 0, outcome.err
    assert sorted(path.name for path in folder.iterdir()) == [output.name]


def test_output_size_over_the_largest_file(
    small_config: Path, tmp_path: Path, http_server: HttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """ext2 with 1 KiB blocks holds files of up to 16 GiB; output.size asks for 32 GiB."""
    require_tools("mke2fs", "mount")
    store = tmp_path / "ext2.img"
    with store.open("wb") as handle:
        handle.truncate(256 * MIB)
    subprocess.run(["mke2fs", "-q", "-t", "ext2", "-b", "1024", str(store)], check=True)
    volume = tmp_path / "ext2"
    volume.mkdir()
    subprocess.run(["mount", "-o", "loop", str(store), str(volume)], check=True)
    folder = volume / "out"  # the leak check looks at OUTPUT's folder: not the mount
    folder.mkdir()
    try:
        document = yaml.safe_load(small_config.read_text())
        config = write_config(tmp_path, {**document, "output": {"size": "32GiB"}})
        output = folder / "hotspot.img"
        outcome = run([str(config), str(output)], capsys)
        assert outcome.code == 3, outcome
        assert outcome.errors == [
            "error: output.size: 32 GiB (34359738368 bytes) is more than the largest file the "
            f"filesystem of {folder} can hold (File too large)"
        ]
        assert not downloaded(http_server, "/base.img")
        assert_no_leaks(output)
    finally:
        subprocess.run(["umount", str(volume)], check=True)


# a base image without a data partition -----------------------------------------------------


def test_base_without_a_data_partition_is_refused_by_check_and_build(
    tmp_path: Path, http_server: HttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tools("sfdisk")
    base = tmp_path / "two-partitions.img"
    with base.open("wb") as handle:
        handle.truncate(172 * MIB)
    subprocess.run(
        ["sfdisk", "--quiet", str(base)],
        input="start=2048, size=69632, type=c\nstart=71680, size=280576, type=83\n",
        text=True,
        check=True,
    )
    url = http_server.add_file("/base.img", base)
    config = write_config(tmp_path, {"base": url})
    folder = tmp_path / "out"
    folder.mkdir()

    checked = run(["--check", str(config)], capsys)
    built = run([str(config), str(folder / "hotspot.img")], capsys)

    assert checked.code == built.code == 4, (checked, built)
    assert checked.errors == built.errors
    assert checked.errors == [
        f"error: {url}: no data partition: the image has no partition 3 (found partition 1 "
        "at byte 1048576, partition 2 at byte 36700160)"
    ], checked.err
    assert list(folder.iterdir()) == []
    assert not downloaded(http_server, "/base.img")

"""What a SIGKILLed build leaves is removed by the next build in the same place, and a build
running there meanwhile is left alone.

A build killed while its image is mounted (SIGKILL: no clean-up runs) leaves its partial
image, its build folder, a loop device over the partial image and a mount of it in the
build folder. The next build of the same OUTPUT unmounts, detaches and removes them, with a
warning for each. Builds hold a lock on their partial image and build folder for as long as
they run: a build running at the same time, with the same OUTPUT name (-X), in the same
folder, keeps its files, its loop device and its mount, and publishes its image.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest

from image_creator.cli import main
from image_creator.demo import BaseImageLayout, make_base_image
from image_creator.ui.console import ConsoleReporter
from tests.e2e.test_build_failures import (
    RunningBuild,
    base_config,
    build_dirs,
    data_cat,
    staged_under,
    write_config,
)
from tests.support.httpserver import HttpServer
from tests.support.leaks import assert_no_leaks, clean_leftovers, find_leftovers
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def base_xz(tmp_path_factory: pytest.TempPathFactory) -> BaseImageLayout:
    require_root()
    require_tools("losetup", "mount", "sfdisk", "e2fsck", "resize2fs", "mcopy", "mkfs.vfat")
    require_tools("mke2fs", "xz", "debugfs")
    return make_base_image(tmp_path_factory.mktemp("base") / "base.img", xz=True)


@pytest.fixture
def served(http_server: HttpServer, base_xz: BaseImageLayout) -> HttpServer:
    """The HTTP server, serving the base image as /base.img.xz (what base_config names)."""
    assert base_xz.xz_path is not None
    http_server.add_file("/base.img.xz", base_xz.xz_path)
    return http_server


def killed_mid_build(served: HttpServer, output: Path, tmp_path: Path) -> RunningBuild:
    """A build of ``output`` SIGKILLed while it writes a file onto its mounted image."""
    url = served.add("/killed.zim", os.urandom(32 * MIB))
    served.fault("/killed.zim", slow=2 * MIB)
    folder = tmp_path / "killed"
    folder.mkdir()
    config = write_config(
        folder, {**base_config(served), "files": [{"url": url, "to": "/data/killed.zim"}]}
    )
    running = RunningBuild([str(config), str(output)])
    running.wait_for_line("==> Writing files")
    running.wait_until(lambda: bool(staged_under(output, ".killed.zim.*.part")), "writing")
    running.process.send_signal(signal.SIGKILL)
    running.process.wait(30)
    return running


def test_leftovers_of_a_killed_build_are_removed_by_the_next_one(
    served: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / "hotspot.img"
    try:
        _killed_then_cleaned(served, output, tmp_path, capsys)
    finally:
        clean_leftovers(output)


def _killed_then_cleaned(
    served: HttpServer, output: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with killed_mid_build(served, output, tmp_path) as killed:
        assert killed.process.returncode == -signal.SIGKILL
    left = find_leftovers(output)
    assert len(left.partials) == 1 and len(left.build_dirs) == 1, left.describe()
    assert len(left.loop_devices) == 1 and len(left.mounts) == 1, left.describe()
    (partial,), (build_dir,), (device,), (mount,) = (
        left.partials,
        left.build_dirs,
        left.loop_devices,
        left.mounts,
    )

    content = b"the next build\n"
    config = write_config(
        tmp_path,
        {**base_config(served), "files": [{"to": "/data/next.txt", "content": content.decode()}]},
    )
    out = io.StringIO()
    code = main([str(config), str(output)], reporter=ConsoleReporter(out, interactive=False))
    err = capsys.readouterr().err

    assert code == 0, err
    warnings = [line for line in out.getvalue().splitlines() if line.startswith("  ! ")]
    assert warnings == [
        f"  ! unmounted what an interrupted build left mounted: {mount}",
        f"  ! detached the loop device of an interrupted build: {device.name} ({partial})",
        f"  ! removed the partial image of an interrupted build: {partial}",
        f"  ! removed the build folder of an interrupted build: {build_dir}",
    ], out.getvalue()
    assert data_cat(output, "/next.txt") == content
    output.unlink()
    assert_no_leaks(output)


def test_a_build_running_in_the_same_folder_is_not_touched(
    served: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / "hotspot.img"
    try:
        _live_build_kept_while_leftovers_go(served, output, tmp_path, capsys)
    finally:
        clean_leftovers(output)


def _live_build_kept_while_leftovers_go(
    served: HttpServer, output: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a live build of OUTPUT (-X), slow enough to outlast the two others
    live_content = os.urandom(24 * MIB)
    url = served.add("/live.zim", live_content)
    served.fault("/live.zim", slow=2 * MIB)
    live_folder = tmp_path / "live"
    live_folder.mkdir()
    live_config = write_config(
        live_folder, {**base_config(served), "files": [{"url": url, "to": "/data/live.zim"}]}
    )
    with RunningBuild(["-X", str(live_config), str(output)]) as live:
        live.wait_for_line("==> Writing files")
        live.wait_until(lambda: bool(staged_under(output, ".live.zim.*.part")), "writing")
        mine = find_leftovers(output)  # the live build's: one of each
        assert len(mine.partials) == len(mine.build_dirs) == len(mine.mounts) == 1
        assert len(mine.loop_devices) == 1, mine.describe()

        # a build of the same OUTPUT killed meanwhile (it did not touch the live one either)
        with killed_mid_build(served, output, tmp_path):
            pass
        both = find_leftovers(output)
        assert len(both.partials) == len(both.build_dirs) == len(both.mounts) == 2
        assert len(both.loop_devices) == 2, both.describe()
        dead_partial = set(both.partials) - set(mine.partials)
        dead_dir = set(both.build_dirs) - set(mine.build_dirs)

        config = write_config(
            tmp_path, {**base_config(served), "files": [{"to": "/data/next.txt", "content": "x"}]}
        )
        out = io.StringIO()
        code = main([str(config), str(output)], reporter=ConsoleReporter(out, interactive=False))
        assert code == 0, capsys.readouterr().err
        assert live.process.poll() is None, "the live build ended before the next one was done"

        # the dead build's things are gone, the live build's all there
        after = find_leftovers(output)
        assert after.partials == mine.partials, after.describe()
        assert after.build_dirs == mine.build_dirs, after.describe()
        assert after.mounts == mine.mounts, after.describe()
        assert after.loop_devices == mine.loop_devices, after.describe()
        report = out.getvalue()
        for path in (*dead_partial, *dead_dir):
            assert f"interrupted build: {path}" in report, report
        for path in (*mine.partials, *mine.build_dirs):
            assert str(path) not in report, report
        assert data_cat(output, "/next.txt") == b"x"

        live.wait_for_line("image ready", timeout=120)
        assert live.process.wait(30) == 0, live.stderr

    assert data_cat(output, "/live.zim") == live_content
    output.unlink()
    assert_no_leaks(output)
    assert build_dirs(output) == []

"""Loop devices and mounts for real: attach the data partition, repair, grow, mount, write."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from image_creator.errors import BuildError
from image_creator.system import loop
from image_creator.system.ext4 import check_filesystem, filesystem_size, resize_filesystem
from image_creator.system.image import grow_data_partition, grow_image_file
from image_creator.system.loop import attached_loop_devices, attached_partition
from image_creator.system.mount import is_mounted, mounted, mounts_below, unmount
from image_creator.system.partitions import data_partition, read_partition_table
from image_creator.system.run import run
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

MIB = 1024 * 1024
DATA_START = 17 * MIB


@pytest.fixture
def image(tmp_path: Path) -> Iterator[Path]:
    """Three 8 MiB partitions; only the data one (3) matters here: ext4 holding hello.txt."""
    require_root()
    require_tools(
        "losetup", "mount", "umount", "sfdisk", "mke2fs", "e2fsck", "resize2fs", "dumpe2fs"
    )
    image = tmp_path / "base.img"
    with image.open("wb") as file:
        file.truncate(DATA_START + 8 * MIB)
    run(
        ["sfdisk", "--quiet", image],
        input_text="label: dos\n"
        + "".join(f"start={n * 16384 + 2048}, size=16384\n" for n in range(3)),
    )
    content = tmp_path / "data-content"
    content.mkdir()
    (content / "hello.txt").write_text("hello\n")
    run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "data",
            "-d",
            content,
            "-E",
            f"offset={DATA_START}",
            image,
            "8M",
        ]
    )
    yield image
    # whatever a test did, it must not leave a device behind; clean up a leak, then report it
    leaked = attached_loop_devices(image)
    for device in leaked:
        run(["losetup", "--detach", device])
    assert leaked == []


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "mnt"
    folder.mkdir()
    yield folder
    leaked = is_mounted(folder)
    if leaked:
        run(["umount", "--lazy", folder])
    assert not leaked


def test_grow_repair_resize_mount_and_write(image: Path, mountpoint: Path) -> None:
    grow_image_file(image, 64 * MIB)
    data = grow_data_partition(image)

    with attached_partition(image, data) as device:
        assert attached_loop_devices(image) == [str(device)]
        check_filesystem(device, fix=True)
        resize_filesystem(device)
        with mounted(device, mountpoint):
            assert is_mounted(mountpoint)
            assert (mountpoint / "hello.txt").read_text() == "hello\n"
            (mountpoint / "written.txt").write_text("written\n")
        assert not is_mounted(mountpoint)
    assert attached_loop_devices(image) == []

    with attached_partition(image, data) as device:
        check_filesystem(device, fix=False)
        assert filesystem_size(device) == data.size_bytes
        with mounted(device, mountpoint):
            assert (mountpoint / "hello.txt").read_text() == "hello\n"
            assert (mountpoint / "written.txt").read_text() == "written\n"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_the_body_still_unmounts_and_detaches(
    image: Path, mountpoint: Path, error: type[BaseException]
) -> None:
    data = data_partition(read_partition_table(image))

    with pytest.raises(error), ExitStack() as stack:
        device = stack.enter_context(attached_partition(image, data))
        stack.enter_context(mounted(device, mountpoint))
        assert is_mounted(mountpoint)
        raise error()

    assert not is_mounted(mountpoint)
    assert attached_loop_devices(image) == []


def test_an_attach_interrupted_before_its_output_is_read_is_undone(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = data_partition(read_partition_table(image))

    def run_then_interrupt_the_attach(argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> Any:
        result = run(argv, **kwargs)
        if "--find" in argv:
            raise KeyboardInterrupt  # Ctrl-C after losetup attached, before we saw the name
        return result

    monkeypatch.setattr(loop, "run", run_then_interrupt_the_attach)

    with pytest.raises(KeyboardInterrupt), attached_partition(image, data):
        pytest.fail("the body must not run")  # pragma: no cover

    assert attached_loop_devices(image) == []


def test_a_failed_mount_still_detaches(image: Path, tmp_path: Path) -> None:
    data = data_partition(read_partition_table(image))

    with pytest.raises(BuildError, match="mount"), ExitStack() as stack:
        device = stack.enter_context(attached_partition(image, data))
        stack.enter_context(mounted(device, tmp_path / "no-such-dir"))

    assert attached_loop_devices(image) == []


def test_a_busy_mount_fails_clearly(image: Path, mountpoint: Path) -> None:
    data = data_partition(read_partition_table(image))

    with attached_partition(image, data) as device:
        context = mounted(device, mountpoint)
        context.__enter__()
        holder = (mountpoint / "hello.txt").open()
        try:
            with pytest.raises(BuildError, match="still busy") as raised:
                context.__exit__(None, None, None)
            assert raised.value.hint is not None
            assert "fuser" in raised.value.hint
            assert is_mounted(mountpoint)
        finally:
            holder.close()
            if is_mounted(mountpoint):
                unmount(mountpoint)


def test_mount_points_are_read_with_escaped_paths(image: Path, tmp_path: Path) -> None:
    data = data_partition(read_partition_table(image))
    spaced = tmp_path / "with space"
    spaced.mkdir()

    with attached_partition(image, data) as device, mounted(device, spaced):
        assert is_mounted(spaced)
        assert not is_mounted(tmp_path)
        assert mounts_below(tmp_path) == [str(spaced)]
        inner = spaced / "inner"
        inner.mkdir()
        run(["mount", "-t", "tmpfs", "none", inner])
        try:
            assert mounts_below(tmp_path) == [str(inner), str(spaced)]  # deepest first
            assert mounts_below(inner) == [str(inner)]
        finally:
            run(["umount", inner])
    assert not is_mounted(spaced)
    assert mounts_below(tmp_path) == []


def test_mounting_on_a_mount_point_is_refused(image: Path, mountpoint: Path) -> None:
    data = data_partition(read_partition_table(image))

    with attached_partition(image, data) as device, mounted(device, mountpoint):
        with pytest.raises(BuildError, match="already a mount point"), mounted(device, mountpoint):
            pass
        assert is_mounted(mountpoint)


def test_a_brief_hold_is_waited_out(image: Path, mountpoint: Path) -> None:
    data = data_partition(read_partition_table(image))

    with attached_partition(image, data) as device, mounted(device, mountpoint):
        # like a command still exiting: Popen returns once the child runs inside the mount
        holder = subprocess.Popen(["sleep", "0.4"], cwd=mountpoint)
    assert not is_mounted(mountpoint)
    assert holder.wait() == 0

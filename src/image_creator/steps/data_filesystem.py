"""The data filesystem, resized and open for writing, by either backend; checked once closed.

The build steps write through the :class:`~image_creator.sink.Sink` this yields and do not
know which backend runs:

- mounted (root): a loop device on the data partition, e2fsck/resize2fs on it, a mount;
  leaving unmounts, detaches and checks it;
- rootless: the filesystem grown through a side file (``system/side_resize.py``: never
  ``resize2fs IMAGE?offset=``), then written by libext2fs in the image file itself; leaving
  closes it and checks it through the image file. Nothing to unmount: a run cut short
  leaves only the partial image, which the run removes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image_creator.context import Context
from image_creator.plan import SizePlan
from image_creator.sink import Backend, Sink
from image_creator.sink.mounted import MountedSink
from image_creator.sink.offline import OfflineSink
from image_creator.sizing import ensure_room
from image_creator.system.ext4 import check_filesystem, ensure_cleanly_unmounted, resize_filesystem
from image_creator.system.loop import attached_partition
from image_creator.system.mount import mounted
from image_creator.system.partitions import Partition
from image_creator.system.queued_writer import QueuedWriter
from image_creator.system.side_resize import grow_filesystem_offline
from image_creator.workspace import ensure_room_to_write


def offline_device(image: Path, partition: Partition) -> Path:
    """The data filesystem as e2fsprogs' tools open it inside the image file."""
    return Path(f"{image}?offset={partition.start_bytes}")


@contextmanager
def writable_data_filesystem(
    ctx: Context,
    image: Path,
    partition: Partition,
    *,
    backend: Backend,
    sizes: SizePlan,
    build_dir: Path,
) -> Iterator[Sink]:
    """The grown data partition's filesystem, resized to fill it and open for writing."""
    if backend is Backend.ROOTLESS:
        with _offline(ctx, image, partition, sizes=sizes, build_dir=build_dir) as sink:
            yield sink
    else:
        with _mounted(ctx, image, partition, sizes=sizes, build_dir=build_dir) as sink:
            yield sink


@contextmanager
def _mounted(
    ctx: Context, image: Path, partition: Partition, *, sizes: SizePlan, build_dir: Path
) -> Iterator[Sink]:
    with attached_partition(image, partition) as device:
        with ctx.timeline.step("Resizing data filesystem"):
            check_filesystem(device, fix=True)
            resize_filesystem(device)
            check_filesystem(device, fix=True)
            ensure_room(device, sizes)
            ensure_room_to_write(image, sizes.content)

        mountpoint = build_dir / "data"
        mountpoint.mkdir()
        # leaving it syncs the data filesystem and fails on any write lost since it was mounted
        with mounted(device, mountpoint, label="the data partition") as root:
            yield MountedSink(root)

        with ctx.timeline.step("Checking data filesystem"):
            ensure_cleanly_unmounted(device)
            check_filesystem(device, fix=False)


@contextmanager
def _offline(
    ctx: Context, image: Path, partition: Partition, *, sizes: SizePlan, build_dir: Path
) -> Iterator[Sink]:
    device = offline_device(image, partition)
    with ctx.timeline.step("Resizing data filesystem"):
        grow_filesystem_offline(image, partition, work_dir=build_dir)
        ensure_room(image, sizes, offset=partition.start_bytes)
        ensure_room_to_write(image, sizes.content)

    scratch = build_dir / "scratch"
    scratch.mkdir()
    # leaving it writes what is queued and closes the filesystem (marked clean only when
    # the block succeeded)
    with QueuedWriter(image, partition) as writer:
        yield OfflineSink(writer, scratch)

    with ctx.timeline.step("Checking data filesystem"):
        ensure_cleanly_unmounted(device)
        check_filesystem(device, fix=False)

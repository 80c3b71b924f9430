"""Loop devices over one partition of an image file, always detached on the way out."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image_creator.errors import CommandError
from image_creator.system.partitions import Partition
from image_creator.system.run import run
from image_creator.system.signals import releasing

logger = logging.getLogger(__name__)


@contextmanager
def attached_partition(image: Path, partition: Partition) -> Iterator[Path]:
    """Attach ``partition`` of ``image`` as a loop device; yield the device; always detach it.

    The kernel here does not scan partitions of loop devices, so the device maps the
    partition's byte range directly. "Find a free device" and "attach" are one losetup call,
    so no other process can take the device in between. Meant to be entered on the build's
    ExitStack: the detach is armed as soon as the device exists, and runs on success, on an
    error and on Ctrl-C.
    """
    offset, size = partition.start_bytes, partition.size_bytes
    known = set(attached_loop_devices(image))
    device: Path | None = None
    try:
        result = run(
            [
                "losetup",
                "--find",
                "--show",
                "--offset",
                str(offset),
                "--sizelimit",
                str(size),
                image,
            ]
        )
        device = Path(result.stdout.strip())
        logger.debug("attached partition %d of %s as %s", partition.number, image, device)
        yield device
    except BaseException:
        with releasing():
            if device is None:
                # Interrupted while losetup ran: it may have attached a device whose name we
                # never read. Detach what now maps this range of the image and was not before.
                for stray in _devices_mapping(image, offset, size) - known:
                    _detach_after_error(Path(stray))
            else:
                _detach_after_error(device)
        raise
    else:
        with releasing():
            detach_loop_device(device)


def detach_loop_device(device: Path) -> None:
    """Detach a loop device (the kernel defers it until the last user closes the device)."""
    run(["losetup", "--detach", device])
    logger.debug("detached %s", device)


def _detach_after_error(device: Path) -> None:
    # The error already on its way out is the one to report; a failed detach only adds a log line.
    try:
        detach_loop_device(device)
    except CommandError as exc:
        logger.error("could not detach %s: %s", device, exc)


def attached_loop_devices(image: Path) -> list[str]:
    """The loop devices backed by ``image`` (``losetup -j``), e.g. ``["/dev/loop3"]``."""
    result = run(["losetup", "--list", "--noheadings", "--output", "NAME", "--associated", image])
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _devices_mapping(image: Path, offset: int, size: int) -> set[str]:
    result = run(
        [
            "losetup",
            "--list",
            "--noheadings",
            "--raw",
            "--output",
            "NAME,OFFSET,SIZELIMIT",
            "--associated",
            image,
        ]
    )
    devices: set[str] = set()
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1:] == [str(offset), str(size)]:
            devices.add(fields[0])
    return devices

"""Loop devices over one partition of an image file, always detached on the way out."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from image_creator.errors import BuildError, CommandError
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
    error and on Ctrl-C. Before a successful exit the device is flushed (fsync): what was
    written through it reaches the image file, or the block fails.
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
        flush_loop_device(device, image)
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


def flush_loop_device(device: Path, image: Path) -> None:
    """fsync the device: its cached blocks are written to ``image`` and the image file is
    synced (the loop driver turns a flush into an fsync of its backing file). An error
    here means that something written through the device is not in the image."""
    handle = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(handle)
    except OSError as exc:
        raise BuildError(
            f"writing {image} through {device} failed: {os.strerror(exc.errno or 0)}"
        ) from exc
    finally:
        os.close(handle)


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


@dataclass(frozen=True)
class LoopDevice:
    name: Path
    backing_file: Path  # as the kernel names it, without its " (deleted)" mark
    deleted: bool  # the file was removed while the device kept it open


_DELETED = " (deleted)"


def loop_devices() -> list[LoopDevice]:
    """Every attached loop device with its backing file (``losetup --list``)."""
    result = run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"])
    devices: list[LoopDevice] = []
    for entry in json.loads(result.stdout or "{}").get("loopdevices", []):
        name, backing = entry.get("name"), entry.get("back-file")
        if isinstance(name, str) and isinstance(backing, str) and backing:
            deleted = backing.endswith(_DELETED)
            devices.append(LoopDevice(Path(name), Path(backing.removesuffix(_DELETED)), deleted))
    return devices

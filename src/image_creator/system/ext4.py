"""ext4 filesystems on an unmounted device: check, repair, resize, measure."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from image_creator.errors import BuildError
from image_creator.system.run import run

logger = logging.getLogger(__name__)

# e2fsck exit codes: 0 clean; 1 errors corrected; 2 errors corrected, reboot advised (that is
# for a mounted root filesystem; ours is not mounted, so it is a plain success too).
E2FSCK_CLEAN = 0
E2FSCK_REPAIRED = (1, 2)


def check_filesystem(device: Path, *, fix: bool) -> None:
    """Run a full e2fsck on ``device``.

    With ``fix``, problems are repaired (``-y``) and a repaired filesystem counts as success.
    Without it, nothing is written (``-n``) and any problem found raises a CommandError.
    """
    if fix:
        result = run(["e2fsck", "-f", "-y", device], ok_codes=(E2FSCK_CLEAN, *E2FSCK_REPAIRED))
        if result.returncode in E2FSCK_REPAIRED:
            logger.info("e2fsck repaired the filesystem on %s:\n%s", device, result.stdout.strip())
    else:
        run(["e2fsck", "-f", "-n", device], ok_codes=(E2FSCK_CLEAN,))
    logger.debug("filesystem on %s is clean", device)


def ensure_cleanly_unmounted(device: Path) -> None:
    """The superblock of an unmounted filesystem says it was written in full: state "clean"
    and no journal left to replay.

    ``e2fsck -n`` does not tell: it skips the journal (it may not write) and exits 0 on a
    filesystem whose last writes never reached the device ("clean with errors",
    needs_recovery), which is what a failed write through a loop device leaves.
    """
    fields = _superblock(device)
    state = fields.get("Filesystem state", "")
    unreplayed = "needs_recovery" in fields.get("Filesystem features", "").split()
    if state != "clean" or unreplayed:
        problems = [f"state {state!r}"] if state != "clean" else []
        problems += ["journal not replayed"] if unreplayed else []
        raise BuildError(
            f"{device}: the data filesystem was not written in full ({', '.join(problems)}): "
            "a write to the image failed"
        )


def resize_filesystem(device: Path, *, size: int | None = None) -> None:
    """Grow the filesystem on ``device`` to fill it (or to ``size`` bytes: a regular file).

    resize2fs refuses a filesystem not checked since it was last mounted: run
    ``check_filesystem(device, fix=True)`` first.

    A filesystem can only grow as far as the group descriptor blocks reserved for it at
    creation allow (about 1024 times its first size); beyond that resize2fs aborts halfway.
    Base images have small data partitions that users grow to hundreds of GB, so the
    reservation (the resize_inode feature, which only serves online resizing) is dropped
    first when it would not be enough: resize2fs then makes room for the descriptors itself.
    """
    layout = _layout(device)
    target_blocks = (size if size is not None else _device_size(device)) // layout.block_size
    if layout.has_resize_inode and target_blocks > layout.reserved_capacity_blocks:
        logger.info("%s: growing past the reserved descriptors: dropping resize_inode", device)
        run(["tune2fs", "-O", "^resize_inode", device])
        check_filesystem(device, fix=True)
    run(["resize2fs", device, *([f"{target_blocks}"] if size is not None else [])])
    logger.debug("filesystem on %s resized to %d blocks", device, target_blocks)


@dataclass(frozen=True)
class _Layout:
    block_size: int
    blocks_per_group: int
    block_count: int
    reserved_gdt_blocks: int
    descriptor_size: int
    has_resize_inode: bool

    @property
    def reserved_capacity_blocks(self) -> int:
        """The largest block count the current and reserved descriptor blocks can describe."""
        per_block = self.block_size // self.descriptor_size
        groups = -(-self.block_count // self.blocks_per_group)
        descriptor_blocks = -(-groups // per_block) + self.reserved_gdt_blocks
        return descriptor_blocks * per_block * self.blocks_per_group


def _superblock(device: Path) -> dict[str, str]:
    result = run(["dumpe2fs", "-h", device])
    fields: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields[key.strip()] = value.strip()
    return fields


def _layout(device: Path) -> _Layout:
    fields = _superblock(device)
    features = fields.get("Filesystem features", "").split()
    try:
        return _Layout(
            block_size=int(fields["Block size"]),
            blocks_per_group=int(fields["Blocks per group"]),
            block_count=int(fields["Block count"]),
            reserved_gdt_blocks=int(fields.get("Reserved GDT blocks", "0")),
            # without 64bit, descriptors are 32 bytes and dumpe2fs does not print the size
            descriptor_size=int(fields.get("Group descriptor size", "32")),
            has_resize_inode="resize_inode" in features,
        )
    except (KeyError, ValueError) as exc:
        raise BuildError(f"{device}: cannot read the filesystem layout: {exc}") from exc


def _device_size(device: Path) -> int:
    with device.open("rb") as handle:
        return handle.seek(0, 2)


def filesystem_size(device: Path) -> int:
    """Size in bytes of the ext4 filesystem on ``device`` (block count times block size)."""
    layout = _layout(device)
    return layout.block_count * layout.block_size

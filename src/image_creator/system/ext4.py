"""ext4 filesystems on an unmounted device: check, repair, resize, measure."""

from __future__ import annotations

import logging
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


def resize_filesystem(device: Path) -> None:
    """Grow (or shrink) the filesystem on ``device`` to fill the device.

    resize2fs refuses a filesystem not checked since it was last mounted: run
    ``check_filesystem(device, fix=True)`` first.
    """
    run(["resize2fs", device])
    logger.debug("filesystem on %s resized to fill the device", device)


def filesystem_size(device: Path) -> int:
    """Size in bytes of the ext4 filesystem on ``device`` (block count times block size)."""
    result = run(["dumpe2fs", "-h", device])
    fields: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields[key.strip()] = value.strip()
    try:
        return int(fields["Block count"]) * int(fields["Block size"])
    except (KeyError, ValueError) as exc:
        raise BuildError(f"{device}: cannot read the filesystem size from dumpe2fs: {exc}") from exc

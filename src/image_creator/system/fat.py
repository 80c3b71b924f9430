"""Files on the FAT boot partition, through mtools: no mount, no root, no vfat driver needed.

mtools reaches the filesystem inside an image file (or a device) at a byte offset with
``-i IMAGE@@OFFSET``. Paths inside the filesystem are POSIX-style, relative to its root
(``"config.txt"``, ``"overlays/foo.dtbo"``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path, PurePosixPath

from image_creator.system.run import run

logger = logging.getLogger(__name__)

# mtools' sanity checks reject some valid filesystems made by other tools (e.g. a block count
# that differs from the partition size); the partition table is the authority here.
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def write_fat_file(image: Path, partition_offset: int, name: str, data: bytes) -> None:
    """Create or replace the file ``name`` (its directory must exist) with ``data``."""
    with tempfile.TemporaryDirectory(prefix="image-creator-fat-") as workdir:
        source = Path(workdir) / "content"
        source.write_bytes(data)
        # -o: overwrite an existing file instead of asking (there is no one to ask)
        run(
            ["mcopy", "-o", "-i", drive(image, partition_offset), source, fat_path(name)],
            env=MTOOLS_ENV,
        )
    logger.debug("wrote %d bytes to %s in %s@%d", len(data), name, image, partition_offset)


def drive(image: Path, partition_offset: int) -> str:
    return f"{image}@@{partition_offset}"


def fat_path(name: str) -> str:
    return f"::/{str(PurePosixPath('/', name)).lstrip('/')}"

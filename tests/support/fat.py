"""Reading the FAT boot partition of an image with mtools, to check what a build wrote."""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath

from image_creator.system.fat import MTOOLS_ENV, drive, fat_path
from image_creator.system.run import run


def read_fat_file(image: Path, partition_offset: int, name: str) -> bytes:
    """The content of the file ``name``; CommandError if it does not exist."""
    # mcopy to a file rather than mtype to stdout: content is bytes, run() reads text
    with tempfile.TemporaryDirectory(prefix="image-creator-fat-") as workdir:
        target = Path(workdir) / "content"
        run(
            ["mcopy", "-i", drive(image, partition_offset), fat_path(name), target],
            env=MTOOLS_ENV,
        )
        return target.read_bytes()


def list_fat_dir(image: Path, partition_offset: int, directory: str = "") -> list[str]:
    """Names in ``directory`` (default: the root), sorted; subdirectories end with ``/``."""
    result = run(
        ["mdir", "-b", "-i", drive(image, partition_offset), fat_path(directory)],
        env=MTOOLS_ENV,
    )
    # mdir -b prints one full path per line, "::/overlays/" for a directory
    names = []
    for line in result.stdout.splitlines():
        if not line.strip():
            continue
        is_directory = line.endswith("/")
        name = PurePosixPath(line.removeprefix("::")).name
        names.append(f"{name}/" if is_directory else name)
    return sorted(names)

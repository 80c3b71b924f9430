"""Publishing: the finished image takes its name, atomically; the run's commit point."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from image_creator.errors import OutputError


def publish(partial: Path, output: Path, *, overwrite: bool) -> None:
    """Make the finished image visible under its name, atomically.

    Without ``overwrite`` it never replaces anything: the image is hard-linked to its name
    (which fails if the name exists, even if another build took it since the checks), then
    the partial name is removed. With ``overwrite`` it replaces a regular file only.
    """
    with partial.open("rb+") as image:
        os.fsync(image.fileno())
    partial.chmod(0o644)
    if overwrite:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(output.lstat().st_mode):
                raise OutputError(f"{output}: OUTPUT is no longer a regular file; not replaced")
        partial.replace(output)
    else:
        try:
            os.link(partial, output, follow_symlinks=False)
        except FileExistsError:
            raise OutputError(
                f"{output}: appeared while the image was built (another build?); not replaced",
                hint="pass -X/--overwrite to replace it",
            ) from None
        partial.unlink()
    directory = os.open(output.absolute().parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

"""The partial image: built next to OUTPUT under a temporary name, renamed only on success."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image_creator.errors import OutputError
from image_creator.options import Options
from image_creator.system.mount import mounts_below
from image_creator.system.signals import releasing
from image_creator.ui.base import Reporter

logger = logging.getLogger(__name__)


def default_build_dir(options: Options) -> Path:
    """Where temporary files go: --build-dir, else next to OUTPUT (same disk), else /tmp."""
    if options.build_dir is not None:
        return options.build_dir
    if options.output is not None:
        return options.output.absolute().parent
    return Path(tempfile.gettempdir())


@contextmanager
def partial_output(output: Path, *, keep: bool, reporter: Reporter) -> Iterator[Path]:
    """A new empty file next to ``output``; removed if the build fails (kept with ``keep``).

    The caller renames it onto ``output`` once complete; after that there is nothing to undo.
    """
    output = output.absolute()
    handle, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
    os.close(handle)
    partial = Path(name)
    try:
        yield partial
    except BaseException:
        with releasing():
            if partial.exists():
                if keep:
                    reporter.warning(f"kept the partial image (-K): {partial}")
                else:
                    partial.unlink()
        raise


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


@contextmanager
def temporary_directory(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary directory, removed with what it holds whatever happens.

    Never removed while something is still mounted below it: that would delete the content
    of the mounted filesystem (the image being built) instead.
    """
    parent.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield directory
    finally:
        with releasing():
            still_mounted = mounts_below(directory)
            if still_mounted:
                logger.error("not removing %s: %s mounted", directory, ", ".join(still_mounted))
            else:
                shutil.rmtree(directory, ignore_errors=True)

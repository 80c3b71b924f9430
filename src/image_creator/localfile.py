"""Local files the run reads: only regular files, opened without blocking on a FIFO.

A path given for a config, a policy or a source could name a FIFO (reading blocks until
someone writes), a device (``/dev/zero`` never ends) or a folder: each is refused with what
it is, before anything is read.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def describe_mode(mode: int) -> str:
    """What a file of this ``st_mode`` is, as a phrase: "a regular file", "a FIFO"..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: Path, *, follow_links: bool = True) -> BinaryIO:
    """``path`` opened for reading; OSError (EINVAL, saying what it is) unless a regular file.

    Without ``follow_links``, a symbolic link at ``path`` is refused too (ELOOP)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        handle = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise OSError(errno.ELOOP, "is a symbolic link, not a regular file") from exc
        raise
    try:
        mode = os.fstat(handle).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"is {describe_mode(mode)}, not a regular file")
        os.set_blocking(handle, True)
        return os.fdopen(handle, "rb")
    except BaseException:
        os.close(handle)
        raise


def read_regular(path: Path, limit: int, *, follow_links: bool = True) -> bytes:
    """The bytes of the regular file ``path``; OSError (EFBIG) when it has more than ``limit``."""
    with open_regular(path, follow_links=follow_links) as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return data


def nearly_full(path: Path, threshold: int) -> bool:
    """Whether the volume of ``path`` has less than ``threshold`` bytes, or no inode, left
    (counting what root may use: the build runs as root). Unknown: True."""
    try:
        fs = os.statvfs(path)
    except OSError:
        return True
    return fs.f_bfree * fs.f_frsize < threshold or (fs.f_files > 0 and fs.f_ffree == 0)


def write_atomically(
    path: Path, data: bytes, *, mode: int = 0o644, staging: Path | None = None
) -> None:
    """``data`` at ``path`` through a synced temporary file renamed over it: a concurrent
    reader finds the old file or the whole new one, never half of it.

    The temporary file is ``.NAME.XXXXXXXX`` beside ``path``, or ``NAME.XXXXXXXX`` in
    ``staging`` (a folder on the same filesystem, where a crash's leftovers are swept).
    """
    path = path.absolute()
    if staging is None:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    else:
        handle, name = tempfile.mkstemp(prefix=f"{path.name}.", dir=staging)
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        temp.chmod(mode)  # mkstemp makes 0600
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise

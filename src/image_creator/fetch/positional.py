"""A file written at offsets and read back in order: where a segmented download lands."""

from __future__ import annotations

import errno
import os
from typing import Protocol, runtime_checkable


@runtime_checkable
class RandomAccess(Protocol):
    """Where a segmented download is written: at offsets, and read back in order."""

    def reserve(self, size: int) -> None:
        """Give the file ``size`` bytes, their room reserved."""
        ...

    def write_at(self, offset: int, data: memoryview) -> None: ...

    def read_at(self, offset: int, size: int) -> bytes: ...


class FileAt:
    """A file descriptor as RandomAccess (``pwrite``, ``pread``, ``posix_fallocate``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def reserve(self, size: int) -> None:
        preallocate(self.fd, size)

    def write_at(self, offset: int, data: memoryview) -> None:
        while data:
            done = os.pwrite(self.fd, data, offset)
            data, offset = data[done:], offset + done

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)


def preallocate(fd: int, size: int) -> None:
    """Reserve the file's room now (contiguous on ext4), and give it its final length."""
    if size:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    os.ftruncate(fd, size)

"""Growing the data filesystem without root: resize2fs on a side file, never on the image.

``resize2fs IMAGE?offset=N`` is unsafe both ways (e2fsprogs 1.47): without a size it sizes
the filesystem to the whole file from the offset, and with one it resizes, then truncates
the image file to the filesystem's end, cutting the tail of the partition; ``e2fsck -f``
notices neither. So the partition's bytes are copied out to a file of their own, sized as
the grown partition; that file is checked, resized and checked by the ordinary functions of
``system/ext4.py``; and it is copied back at the partition's offset.

Both copies are sparse: only the ranges holding data are read (SEEK_DATA/SEEK_HOLE), and
blocks of zeros are not written. The cost follows what the base image's partition holds
(a few MiB), not the size it grows to. Afterwards the partition's bytes in the image equal
the side file's, holes included.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from image_creator.errors import BuildError, os_reason
from image_creator.system.ext4 import check_filesystem, filesystem_size, resize_filesystem
from image_creator.system.partitions import Partition
from image_creator.system.run import run
from image_creator.units import CHUNK

logger = logging.getLogger(__name__)

ZERO_BLOCK = 4096  # the unit zeros are skipped in (a filesystem block, a page)
_ZEROS = bytes(CHUNK)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def grow_filesystem_offline(
    image: Path, partition: Partition, *, work_dir: Path | None = None
) -> None:
    """Grow the ext4 filesystem of ``partition`` (already grown, e.g. by
    ``grow_data_partition``) to fill it, with the rights of the image file alone.

    The side file goes in ``work_dir`` (default: the image's folder, whose filesystem must
    hold sparse files) and is removed on every path. The image is changed only once the
    side file is resized and checked clean.
    """
    folder = work_dir if work_dir is not None else image.parent
    # not named after the image: its name may already take the 255 bytes a name has
    handle, name = tempfile.mkstemp(prefix=".data-partition-", suffix=".ext4", dir=folder)
    side = Path(name)
    try:
        os.close(handle)
        with side.open("r+b") as out:
            out.truncate(partition.size_bytes)
        copied = copy_sparse(image, partition.start_bytes, side, 0, partition.size_bytes)
        logger.debug("copied %d bytes of %s's data partition out to %s", copied, image, side)
        check_filesystem(side, fix=True)
        resize_filesystem(side)
        check_filesystem(side, fix=True)
        check_filesystem(side, fix=False)
        size = filesystem_size(side)
        if size > partition.size_bytes:
            raise BuildError(
                f"{image}: the resized data filesystem ({size} bytes) is larger than its "
                f"partition ({partition.size_bytes} bytes)"
            )
        copied = copy_sparse(side, 0, image, partition.start_bytes, partition.size_bytes)
        logger.debug("copied %d bytes back into %s", copied, image)
    finally:
        side.unlink(missing_ok=True)
    # read again through the image itself: what the device will see
    run(["e2fsck", "-f", "-n", f"{image}?offset={partition.start_bytes}"])


def copy_sparse(
    source: Path, source_offset: int, target: Path, target_offset: int, length: int
) -> int:
    """Make ``target[target_offset:+length]`` equal ``source[source_offset:+length]``,
    reading only the source's data ranges and writing only blocks that are not zero.

    Where the source has a hole or zeros, the target gets a hole: punched where it held
    data (zeros written on a filesystem that cannot punch). ``target`` must be at least
    ``target_offset + length`` bytes long; its size does not change. Returns the bytes
    written.
    """
    written = 0
    with source.open("rb") as reader, target.open("r+b") as writer:
        if writer.seek(0, os.SEEK_END) < target_offset + length:
            raise BuildError(f"{target}: shorter than {target_offset + length} bytes")
        position = 0
        for start, end in _data_ranges(reader.fileno(), source_offset, source_offset + length):
            for chunk_start in range(start, end, CHUNK):
                size = min(CHUNK, end - chunk_start)
                chunk = os.pread(reader.fileno(), size, chunk_start)
                if len(chunk) != size:
                    raise BuildError(f"{source}: short read at byte {chunk_start}")
                relative = chunk_start - source_offset
                for block in range(0, size, ZERO_BLOCK):
                    piece = chunk[block : block + ZERO_BLOCK]
                    here = relative + block
                    if piece == _ZEROS[: len(piece)]:
                        continue
                    _clear(writer.fileno(), target, target_offset, position, here)
                    position = here + len(piece)
                    _write_all(writer.fileno(), target, piece, target_offset + here)
                    written += len(piece)
        _clear(writer.fileno(), target, target_offset, position, length)
        try:
            os.fsync(writer.fileno())
        except OSError as exc:
            raise BuildError(f"{target}: writing failed: {os_reason(exc)}") from exc
    return written


def _data_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The ranges of ``[start, end)`` that hold data (all of it where holes are unknown)."""
    position = start
    while position < end:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after position
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield position, end
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole
        position = hole


def _clear(fd: int, target: Path, target_offset: int, start: int, end: int) -> None:
    """Make ``[start, end)`` (relative to ``target_offset``) read as zeros in the target:
    nothing to do over its holes; its data there is punched out (or overwritten)."""
    for data_start, data_end in _data_ranges(fd, target_offset + start, target_offset + end):
        if not _punch(fd, data_start, data_end - data_start):
            for offset in range(data_start, data_end, CHUNK):
                size = min(CHUNK, data_end - offset)
                _write_all(fd, target, _ZEROS[:size], offset)


def _punch(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range, keeping the file's size; False where the filesystem cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    fallocate = libc.fallocate
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fallocate.restype = ctypes.c_int
    if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code))


def _write_all(fd: int, target: Path, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        try:
            done = os.pwrite(fd, view, offset)
        except OSError as exc:
            raise BuildError(f"{target}: writing failed: {os_reason(exc)}") from exc
        view, offset = view[done:], offset + done

"""A typed ctypes binding to libext2fs (e2fsprogs): the few calls an offline writer needs.

The library edits an ext2/3/4 filesystem that nobody has mounted, inside an image file at a
byte offset, with the rights of the file alone: no loop device, no mount, no root. Layouts
and constants come from the e2fsprogs 1.47 headers (``/usr/include/ext2fs/ext2fs.h`` and
``ext2_fs.h``, package ``libext2fs-dev``); only ``libext2fs.so.2`` and ``libcom_err.so.2``
are needed at run time (package ``libext2fs2``, installed with e2fsprogs).

Every call that returns an ``errcode_t`` is checked: a non-zero code becomes an
:class:`Ext2fsError` naming the operation, the path inside the filesystem and libcom_err's
message. libext2fs is not thread-safe: one :class:`Ext2Filesystem` is used by one thread.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from image_creator.errors import BuildError, HostError

logger = logging.getLogger(__name__)

EXT2_LIBRARY = "libext2fs.so.2"
COM_ERR_LIBRARY = "libcom_err.so.2"

ROOT_INO = 2  # EXT2_ROOT_INO
LINK_MAX = 65000  # EXT2_LINK_MAX
GOOD_OLD_INODE_SIZE = 128
N_BLOCKS = 15  # EXT2_N_BLOCKS

# ext2fs_open2 flags
_FLAG_RW = 0x01
_FLAG_64BITS = 0x20000
# ext2fs_file_open flags
_FILE_WRITE = 0x0001

# superblock s_state
VALID_FS = 0x0001
ERROR_FS = 0x0002
# features
_INCOMPAT_RECOVER = 0x0004
_INCOMPAT_EXTENTS = 0x0040
# inode i_flags
_EXTENTS_FL = 0x00080000
# the extent tree header a new extent-mapped inode starts with (ext3_extents.h)
_EXTENT_MAGIC = 0xF30A
_EXTENT_HEADER_SIZE = 12
_EXTENT_ENTRY_SIZE = 12

# room kept when writing: extent tree blocks a write may need besides its data blocks
_EXTENTS_PER_BLOCK = 340  # (4096 - 12) / 12 entries in a 4 KiB extent block
_TREE_MARGIN_BLOCKS = 8

# directory entry file types (EXT2_FT_*)
FT_REG_FILE = 1
FT_DIR = 2
FT_SYMLINK = 7

# errcode_t values of the ext2 error table (ext2_err.h) that callers act upon
ET_DIR_NO_SPACE = 2133571366
ET_BLOCK_ALLOC_FAIL = 2133571400
ET_INODE_ALLOC_FAIL = 2133571401
ET_FILE_NOT_FOUND = 2133571404
ET_DIR_NO_SPACE_FOR_CSUM = 2133571477
NO_SPACE_CODES = frozenset({ET_BLOCK_ALLOC_FAIL, ET_INODE_ALLOC_FAIL, errno.ENOSPC})

# Linux mode bits as stored in i_mode
S_IFMT = 0o170000
S_IFREG = 0o100000
S_IFDIR = 0o040000
S_IFLNK = 0o120000

_EPOCH_BITS = 2
_EPOCH_MASK = (1 << _EPOCH_BITS) - 1

errcode_t = ctypes.c_long
ext2_ino_t = ctypes.c_uint32
blk64_t = ctypes.c_uint64
ext2_filsys = ctypes.c_void_p  # struct_ext2_filsys *, read through _FilsysHead
ext2_file_t = ctypes.c_void_p

# ext2fs_dir_iterate2: flags, and what the callback is told of each entry
_DIRENT_FLAGS = 0  # live entries only (a folder with inline data is refused: not iterable)
_DIRENT_OTHER_FILE = 3  # neither "." nor ".."
_DIRENT_ABORT = 2
_SEEK_SET = 0


class _DirEntry(ctypes.Structure):
    """struct ext2_dir_entry: the name's length in the low byte of ``name_len``."""

    _fields_ = (
        ("inode", ctypes.c_uint32),
        ("rec_len", ctypes.c_uint16),
        ("name_len", ctypes.c_uint16),
        ("name", ctypes.c_char * 255),
    )


class _Extent(ctypes.Structure):
    """struct ext2fs_extent: a run of logical blocks mapped to physical ones."""

    _fields_ = (
        ("e_pblk", ctypes.c_uint64),
        ("e_lblk", ctypes.c_uint64),
        ("e_len", ctypes.c_uint32),
        ("e_flags", ctypes.c_uint32),
    )


# ext2fs_fallocate flags: initialized extents (the data is written right after), past EOF
_FALLOCATE_FORCE_INIT = 0x2
_FALLOCATE_INIT_BEYOND_EOF = 0x8
_ANY_GOAL = 2**64 - 1  # ~0ULL: the allocator picks, near the inode's group
# ext2fs_extent_get operations and extent flags
_EXTENT_CURRENT = 0x0000
_EXTENT_NEXT_LEAF = 0x0007
_EXTENT_FLAGS_UNINIT = 0x0002
_BMAP_RET_UNINIT = 0x0001
ET_EXTENT_NO_NEXT = 2133571452
# struct_io_manager's function pointers: magic, name, open, close, set_blksize, read_blk,
# write_blk, flush (ext2_io.h); io_channel_flush() is a macro, so it is called through it
_IO_MANAGER_FLUSH_SLOT = 7
_IO_FLUSH = ctypes.CFUNCTYPE(errcode_t, ctypes.c_void_p)


class _IoChannelHead(ctypes.Structure):
    _fields_ = (("magic", errcode_t), ("manager", ctypes.c_void_p))


_NAME_OFFSET = _DirEntry.name.offset
_DIR_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ext2_ino_t,
    ctypes.c_int,
    ctypes.POINTER(_DirEntry),
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
)


class Inode(ctypes.Structure):
    """``struct ext2_inode_large`` (the first 160 bytes of an on-disk inode), with the
    ``osd1``/``osd2`` unions flattened to their Linux members."""

    _fields_ = (
        ("i_mode", ctypes.c_uint16),
        ("i_uid", ctypes.c_uint16),
        ("i_size", ctypes.c_uint32),
        ("i_atime", ctypes.c_uint32),
        ("i_ctime", ctypes.c_uint32),
        ("i_mtime", ctypes.c_uint32),
        ("i_dtime", ctypes.c_uint32),
        ("i_gid", ctypes.c_uint16),
        ("i_links_count", ctypes.c_uint16),
        ("i_blocks", ctypes.c_uint32),
        ("i_flags", ctypes.c_uint32),
        ("l_i_version", ctypes.c_uint32),
        ("i_block", ctypes.c_uint32 * N_BLOCKS),
        ("i_generation", ctypes.c_uint32),
        ("i_file_acl", ctypes.c_uint32),
        ("i_size_high", ctypes.c_uint32),
        ("i_faddr", ctypes.c_uint32),
        ("l_i_blocks_hi", ctypes.c_uint16),
        ("l_i_file_acl_high", ctypes.c_uint16),
        ("l_i_uid_high", ctypes.c_uint16),
        ("l_i_gid_high", ctypes.c_uint16),
        ("l_i_checksum_lo", ctypes.c_uint16),
        ("l_i_reserved", ctypes.c_uint16),
        ("i_extra_isize", ctypes.c_uint16),
        ("i_checksum_hi", ctypes.c_uint16),
        ("i_ctime_extra", ctypes.c_uint32),
        ("i_mtime_extra", ctypes.c_uint32),
        ("i_atime_extra", ctypes.c_uint32),
        ("i_crtime", ctypes.c_uint32),
        ("i_crtime_extra", ctypes.c_uint32),
        ("i_version_hi", ctypes.c_uint32),
        ("i_projid", ctypes.c_uint32),
    )

    @property
    def size(self) -> int:
        return int(self.i_size) | int(self.i_size_high) << 32

    @size.setter
    def size(self, value: int) -> None:
        self.i_size = value & 0xFFFFFFFF
        self.i_size_high = value >> 32

    @property
    def uid(self) -> int:
        return int(self.i_uid) | int(self.l_i_uid_high) << 16

    @uid.setter
    def uid(self, value: int) -> None:
        self.i_uid, self.l_i_uid_high = value & 0xFFFF, value >> 16 & 0xFFFF

    @property
    def gid(self) -> int:
        return int(self.i_gid) | int(self.l_i_gid_high) << 16

    @gid.setter
    def gid(self, value: int) -> None:
        self.i_gid, self.l_i_gid_high = value & 0xFFFF, value >> 16 & 0xFFFF

    @property
    def file_acl(self) -> int:
        return int(self.i_file_acl) | int(self.l_i_file_acl_high) << 32

    def has_extra(self, field: str) -> bool:
        """Whether this inode stores ``field`` (one past the first 128 bytes)."""
        end = getattr(Inode, field).offset + getattr(Inode, field).size
        return bool(GOOD_OLD_INODE_SIZE + int(self.i_extra_isize) >= end)

    def mtime_ns(self) -> int:
        extra = int(self.i_mtime_extra) if self.has_extra("i_mtime_extra") else 0
        return _decode_time(int(self.i_mtime), extra)

    def set_times_ns(self, *, mtime_ns: int | None = None, ctime_ns: int | None = None) -> None:
        """Set mtime (and atime, to the same instant) and ctime, with nanoseconds and the
        epoch bits past 2038 where the inode has room for them."""
        if mtime_ns is not None:
            seconds, extra = _encode_time(mtime_ns)
            self.i_mtime = self.i_atime = seconds
            if self.has_extra("i_mtime_extra") and self.has_extra("i_atime_extra"):
                self.i_mtime_extra = self.i_atime_extra = extra
        if ctime_ns is not None:
            seconds, extra = _encode_time(ctime_ns)
            self.i_ctime = seconds
            if self.has_extra("i_ctime_extra"):
                self.i_ctime_extra = extra


INODE_LARGE_SIZE = ctypes.sizeof(Inode)  # 160, as in the headers (a test checks it)


def _encode_time(ns: int) -> tuple[int, int]:
    """(seconds field, extra field): 32 low bits of the seconds, signed; the extra field holds
    the nanoseconds and two more bits of seconds (the ext4 encoding, good until 2446)."""
    seconds, nanoseconds = divmod(ns, 1_000_000_000)
    low = seconds & 0xFFFFFFFF
    signed_low = low - (1 << 32) if low & 0x80000000 else low
    epoch = ((seconds - signed_low) >> 32) & _EPOCH_MASK
    return low, nanoseconds << _EPOCH_BITS | epoch


def _decode_time(field: int, extra: int) -> int:
    signed = field - (1 << 32) if field & 0x80000000 else field
    seconds = signed + ((extra & _EPOCH_MASK) << 32)
    return seconds * 1_000_000_000 + (extra >> _EPOCH_BITS)


class _SuperBlockHead(ctypes.Structure):
    """The first 0x68 bytes of ``struct ext2_super_block``: counts, state and features."""

    _fields_ = (
        ("s_inodes_count", ctypes.c_uint32),
        ("s_blocks_count", ctypes.c_uint32),
        ("s_r_blocks_count", ctypes.c_uint32),
        ("s_free_blocks_count", ctypes.c_uint32),
        ("s_free_inodes_count", ctypes.c_uint32),
        ("s_first_data_block", ctypes.c_uint32),
        ("s_log_block_size", ctypes.c_uint32),
        ("s_log_cluster_size", ctypes.c_uint32),
        ("s_blocks_per_group", ctypes.c_uint32),
        ("s_clusters_per_group", ctypes.c_uint32),
        ("s_inodes_per_group", ctypes.c_uint32),
        ("s_mtime", ctypes.c_uint32),
        ("s_wtime", ctypes.c_uint32),
        ("s_mnt_count", ctypes.c_uint16),
        ("s_max_mnt_count", ctypes.c_int16),
        ("s_magic", ctypes.c_uint16),
        ("s_state", ctypes.c_uint16),
        ("s_errors", ctypes.c_uint16),
        ("s_minor_rev_level", ctypes.c_uint16),
        ("s_lastcheck", ctypes.c_uint32),
        ("s_checkinterval", ctypes.c_uint32),
        ("s_creator_os", ctypes.c_uint32),
        ("s_rev_level", ctypes.c_uint32),
        ("s_def_resuid", ctypes.c_uint16),
        ("s_def_resgid", ctypes.c_uint16),
        ("s_first_ino", ctypes.c_uint32),
        ("s_inode_size", ctypes.c_uint16),
        ("s_block_group_nr", ctypes.c_uint16),
        ("s_feature_compat", ctypes.c_uint32),
        ("s_feature_incompat", ctypes.c_uint32),
        ("s_feature_ro_compat", ctypes.c_uint32),
    )


class _FilsysHead(ctypes.Structure):
    """The first members of ``struct struct_ext2_filsys``, up to the block size."""

    _fields_ = (
        ("magic", errcode_t),
        ("io", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("device_name", ctypes.c_char_p),
        ("super", ctypes.POINTER(_SuperBlockHead)),
        ("blocksize", ctypes.c_uint),
    )


class Ext2fsError(BuildError):
    """A libext2fs call failed; ``code`` is its errcode_t (an errno, or EXT2_ET_*)."""

    def __init__(self, operation: str, where: str, code: int, message: str) -> None:
        self.operation = operation
        self.where = where
        self.code = code
        super().__init__(f"{where}: {operation} failed: {message}")

    @property
    def no_space(self) -> bool:
        """The filesystem is out of blocks or inodes."""
        return self.code in NO_SPACE_CODES


_Argtypes = tuple[Any, ...]

# name -> (argtypes, restype); every errcode_t result is checked by Ext2Filesystem._check
_SIGNATURES: dict[str, tuple[_Argtypes, Any]] = {
    "initialize_ext2_error_table": ((), None),
    "ext2fs_open2": (
        (
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.POINTER(ext2_filsys),
        ),
        errcode_t,
    ),
    "ext2fs_close_free": ((ctypes.POINTER(ext2_filsys),), errcode_t),
    "ext2fs_flush": ((ext2_filsys,), errcode_t),
    "ext2fs_read_bitmaps": ((ext2_filsys,), errcode_t),
    "ext2fs_mark_super_dirty": ((ext2_filsys,), None),
    "ext2fs_free_blocks_count": ((ctypes.POINTER(_SuperBlockHead),), blk64_t),
    "ext2fs_blocks_count": ((ctypes.POINTER(_SuperBlockHead),), blk64_t),
    "ext2fs_r_blocks_count": ((ctypes.POINTER(_SuperBlockHead),), blk64_t),
    "ext2fs_lookup": (
        (
            ext2_filsys,
            ext2_ino_t,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.POINTER(ext2_ino_t),
        ),
        errcode_t,
    ),
    "ext2fs_mkdir": ((ext2_filsys, ext2_ino_t, ext2_ino_t, ctypes.c_char_p), errcode_t),
    "ext2fs_new_inode": (
        (ext2_filsys, ext2_ino_t, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ext2_ino_t)),
        errcode_t,
    ),
    "ext2fs_write_new_inode": ((ext2_filsys, ext2_ino_t, ctypes.POINTER(Inode)), errcode_t),
    "ext2fs_read_inode_full": (
        (ext2_filsys, ext2_ino_t, ctypes.POINTER(Inode), ctypes.c_int),
        errcode_t,
    ),
    "ext2fs_write_inode_full": (
        (ext2_filsys, ext2_ino_t, ctypes.POINTER(Inode), ctypes.c_int),
        errcode_t,
    ),
    "ext2fs_inode_alloc_stats2": ((ext2_filsys, ext2_ino_t, ctypes.c_int, ctypes.c_int), None),
    "ext2fs_link": (
        (ext2_filsys, ext2_ino_t, ctypes.c_char_p, ext2_ino_t, ctypes.c_int),
        errcode_t,
    ),
    "ext2fs_unlink": (
        (ext2_filsys, ext2_ino_t, ctypes.c_char_p, ext2_ino_t, ctypes.c_int),
        errcode_t,
    ),
    "ext2fs_expand_dir": ((ext2_filsys, ext2_ino_t), errcode_t),
    "ext2fs_symlink": (
        (ext2_filsys, ext2_ino_t, ext2_ino_t, ctypes.c_char_p, ctypes.c_char_p),
        errcode_t,
    ),
    "ext2fs_is_fast_symlink": ((ctypes.POINTER(Inode),), ctypes.c_int),
    "ext2fs_inode_has_valid_blocks2": ((ext2_filsys, ctypes.POINTER(Inode)), ctypes.c_int),
    "ext2fs_punch": (
        (ext2_filsys, ext2_ino_t, ctypes.POINTER(Inode), ctypes.c_char_p, blk64_t, blk64_t),
        errcode_t,
    ),
    "ext2fs_file_open": (
        (ext2_filsys, ext2_ino_t, ctypes.c_int, ctypes.POINTER(ext2_file_t)),
        errcode_t,
    ),
    "ext2fs_file_write": (
        (ext2_file_t, ctypes.c_void_p, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint)),
        errcode_t,
    ),
    "ext2fs_file_read": (
        (ext2_file_t, ctypes.c_void_p, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint)),
        errcode_t,
    ),
    "ext2fs_file_flush": ((ext2_file_t,), errcode_t),
    "ext2fs_file_llseek": (
        (ext2_file_t, ctypes.c_uint64, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)),
        errcode_t,
    ),
    "ext2fs_fallocate": (
        (
            ext2_filsys,
            ctypes.c_int,
            ext2_ino_t,
            ctypes.POINTER(Inode),
            blk64_t,
            blk64_t,
            blk64_t,
        ),
        errcode_t,
    ),
    "ext2fs_extent_open2": (
        (ext2_filsys, ext2_ino_t, ctypes.POINTER(Inode), ctypes.POINTER(ctypes.c_void_p)),
        errcode_t,
    ),
    "ext2fs_extent_goto": ((ctypes.c_void_p, blk64_t), errcode_t),
    "ext2fs_extent_get": ((ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Extent)), errcode_t),
    "ext2fs_extent_free": ((ctypes.c_void_p,), None),
    "ext2fs_bmap2": (
        (
            ext2_filsys,
            ext2_ino_t,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            blk64_t,
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(blk64_t),
        ),
        errcode_t,
    ),
    "ext2fs_dir_iterate2": (
        (ext2_filsys, ext2_ino_t, ctypes.c_int, ctypes.c_void_p, _DIR_CALLBACK, ctypes.c_void_p),
        errcode_t,
    ),
    "ext2fs_file_close": ((ext2_file_t,), errcode_t),
}


@dataclass(frozen=True)
class _Libraries:
    ext2fs: ctypes.CDLL
    error_message: Any  # libcom_err's error_message(errcode_t) -> const char *


@functools.cache
def _libraries() -> _Libraries:
    """Load and type the libraries once, on first use (not at import)."""
    try:
        ext2fs = ctypes.CDLL(EXT2_LIBRARY, use_errno=True)
        com_err = ctypes.CDLL(COM_ERR_LIBRARY)
    except OSError as exc:
        raise HostError(
            f"cannot load {EXT2_LIBRARY}: {exc}", hint="apt-get install libext2fs2"
        ) from exc
    for name, (argtypes, restype) in _SIGNATURES.items():
        function = getattr(ext2fs, name)
        function.argtypes = argtypes
        function.restype = restype
    error_message = com_err.error_message
    error_message.argtypes = (errcode_t,)
    error_message.restype = ctypes.c_char_p
    # the ext2 error table: without it error_message() says "Unknown code ext2 38"
    ext2fs.initialize_ext2_error_table()
    return _Libraries(ext2fs=ext2fs, error_message=error_message)


def load_libraries() -> None:
    """Load libext2fs and libcom_err now (HostError when they cannot be)."""
    _libraries()


def error_message(code: int) -> str:
    """libcom_err's text for an errcode_t (an errno or an EXT2_ET_* code)."""
    text = _libraries().error_message(code)
    return text.decode("utf-8", "replace") if text else f"error {code}"


@dataclass(frozen=True)
class Counts:
    """Sizes and free room, from the in-memory superblock (kept current by libext2fs)."""

    block_size: int
    blocks: int
    free_blocks: int
    reserved_blocks: int
    inodes: int
    free_inodes: int
    inode_size: int


class Ext2Filesystem:
    """An ext2/3/4 filesystem in ``image`` at byte ``offset``, opened with ``ext2fs_open2``.

    ``label`` names the image in errors. Use as a context manager: the handle is flushed
    and freed on a normal exit, and freed (what was written so far is flushed too) on an
    error. One thread at a time.
    """

    def __init__(self, image: Path, offset: int, *, writable: bool, label: str = "") -> None:
        self._lib = _libraries().ext2fs
        self.image = image
        self.label = label or str(image)
        handle = ext2_filsys()
        flags = _FLAG_64BITS | (_FLAG_RW if writable else 0)
        manager = ctypes.c_void_p.in_dll(self._lib, "unix_io_manager")
        self._check(
            self._lib.ext2fs_open2(
                os.fsencode(image),
                f"offset={offset}".encode(),
                flags,
                0,
                0,
                manager,
                ctypes.byref(handle),
            ),
            "open the filesystem",
            f"{image}?offset={offset}",
        )
        self._handle: ext2_filsys | None = handle
        self.offset = offset
        # file data is written by this process's own pwrite (see write_blocks)
        self._data_fd: int | None = None
        try:
            self._check(self._lib.ext2fs_read_bitmaps(handle), "read the bitmaps", self.label)
            if writable:
                self._data_fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            self._free()
            raise

    # lifetime -----------------------------------------------------------------------

    def __enter__(self) -> Ext2Filesystem:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._free()

    def close(self) -> None:
        """Write what is dirty (bitmaps, group descriptors, superblock and its backups) and
        free the handle; an error still frees it."""
        if self._handle is None:
            return
        try:
            if self._data_fd is not None:
                try:
                    os.fsync(self._data_fd)  # the data before the metadata that points to it
                except OSError as exc:
                    self._free()
                    raise Ext2fsError("sync", self.label, exc.errno or 0, str(exc)) from exc
        finally:
            self._close_data_fd()
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        self._check(self._lib.ext2fs_close_free(ctypes.byref(handle)), "close", self.label)

    def _close_data_fd(self) -> None:
        if self._data_fd is not None:
            fd, self._data_fd = self._data_fd, None
            os.close(fd)

    def _free(self) -> None:
        self._close_data_fd()
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        code = self._lib.ext2fs_close_free(ctypes.byref(handle))
        if code:
            logger.error("%s: closing after an error failed: %s", self.label, error_message(code))

    @property
    def handle(self) -> ext2_filsys:
        if self._handle is None:
            raise BuildError(f"{self.label}: the filesystem is closed")
        return self._handle

    def _head(self) -> _FilsysHead:
        return ctypes.cast(self.handle, ctypes.POINTER(_FilsysHead)).contents

    def _super(self) -> _SuperBlockHead:
        sb: _SuperBlockHead = self._head().super.contents
        return sb

    def _check(self, code: int, operation: str, where: str) -> None:
        if code:
            raise Ext2fsError(operation, where, code, error_message(code))

    def flush(self) -> None:
        self._check(self._lib.ext2fs_flush(self.handle), "flush", self.label)

    # the superblock ---------------------------------------------------------------------

    def counts(self) -> Counts:
        head = self._head()
        sb = head.super
        return Counts(
            block_size=int(head.blocksize),
            blocks=int(self._lib.ext2fs_blocks_count(sb)),
            free_blocks=int(self._lib.ext2fs_free_blocks_count(sb)),
            reserved_blocks=int(self._lib.ext2fs_r_blocks_count(sb)),
            inodes=int(sb.contents.s_inodes_count),
            free_inodes=int(sb.contents.s_free_inodes_count),
            inode_size=int(sb.contents.s_inode_size) if sb.contents.s_rev_level else 128,
        )

    @property
    def state(self) -> int:
        return int(self._super().s_state)

    @property
    def needs_recovery(self) -> bool:
        return bool(self._super().s_feature_incompat & _INCOMPAT_RECOVER)

    @property
    def uses_extents(self) -> bool:
        return bool(self._super().s_feature_incompat & _INCOMPAT_EXTENTS)

    def set_state(self, state: int) -> None:
        """Write ``s_state`` (VALID_FS, ERROR_FS bits) to the superblock now."""
        self._super().s_state = state
        self._lib.ext2fs_mark_super_dirty(self.handle)
        self.flush()

    # inodes -----------------------------------------------------------------------------

    def read_inode(self, ino: int, where: str) -> Inode:
        inode = Inode()
        self._check(
            self._lib.ext2fs_read_inode_full(
                self.handle, ino, ctypes.byref(inode), INODE_LARGE_SIZE
            ),
            "read the inode",
            where,
        )
        return inode

    def write_inode(self, ino: int, inode: Inode, where: str) -> None:
        self._check(
            self._lib.ext2fs_write_inode_full(
                self.handle, ino, ctypes.byref(inode), INODE_LARGE_SIZE
            ),
            "write the inode",
            where,
        )

    def new_inode(self, directory: int, mode: int, where: str) -> int:
        """Allocate an inode (in the bitmap and the counts) and write it, zeroed but for
        ``mode`` (type and permissions), one link, the times and, for a regular file on an
        extent filesystem, an empty extent tree. Not linked anywhere yet."""
        ino = ext2_ino_t()
        self._check(
            self._lib.ext2fs_new_inode(self.handle, directory, mode, None, ctypes.byref(ino)),
            "allocate an inode",
            where,
        )
        inode = Inode()
        inode.i_mode = mode
        inode.i_links_count = 1
        now = int(time.time())
        inode.i_atime = inode.i_ctime = inode.i_mtime = now & 0xFFFFFFFF
        if mode & S_IFMT == S_IFREG and self.uses_extents:
            # an empty extent header in i_block: 0 entries, room for 4, depth 0
            inode.i_flags |= _EXTENTS_FL
            room = (N_BLOCKS * 4 - _EXTENT_HEADER_SIZE) // _EXTENT_ENTRY_SIZE
            inode.i_block[0] = _EXTENT_MAGIC
            inode.i_block[1] = room
        self._check(
            self._lib.ext2fs_write_new_inode(self.handle, ino.value, ctypes.byref(inode)),
            "write the new inode",
            where,
        )
        self._lib.ext2fs_inode_alloc_stats2(self.handle, ino.value, 1, 0)
        return int(ino.value)

    def release_inode(self, ino: int, where: str) -> None:
        """Free an inode whose last link is gone: its blocks, then the inode itself."""
        inode = self.read_inode(ino, where)
        if inode.file_acl:
            # a shared extended-attribute block would need its refcount lowered; nothing
            # here creates one, and dropping it blindly would corrupt the filesystem
            raise BuildError(f"{where}: has an extended attribute block: cannot remove it")
        if self._lib.ext2fs_inode_has_valid_blocks2(self.handle, ctypes.byref(inode)):
            self._check(
                self._lib.ext2fs_punch(self.handle, ino, ctypes.byref(inode), None, 0, 2**64 - 1),
                "free the blocks",
                where,
            )
            inode = self.read_inode(ino, where)
        inode.i_links_count = 0
        inode.i_dtime = int(time.time()) & 0xFFFFFFFF
        self.write_inode(ino, inode, where)
        is_dir = 1 if inode.i_mode & S_IFMT == S_IFDIR else 0
        self._lib.ext2fs_inode_alloc_stats2(self.handle, ino, -1, is_dir)
        # A block freed here (a folder's, an extent tree's) may sit in the I/O cache, not
        # written yet; allocated again to a file whose data write_blocks writes past that
        # cache, its late write-back would overwrite the data: written out now.
        self._flush_io(where)

    # directories ------------------------------------------------------------------------

    def lookup(self, directory: int, name: bytes, where: str) -> int | None:
        """The inode ``name`` points to in ``directory``, or None; links are not followed."""
        ino = ext2_ino_t()
        code = self._lib.ext2fs_lookup(
            self.handle, directory, name, len(name), None, ctypes.byref(ino)
        )
        if code == ET_FILE_NOT_FOUND:
            return None
        self._check(code, "look up", where)
        return int(ino.value)

    def link(self, directory: int, name: bytes, ino: int, file_type: int, where: str) -> None:
        """Add the entry ``name`` -> ``ino``; the directory grows by a block when full.
        The caller checks that ``name`` is not there yet (ext2fs_link does not)."""
        code = self._lib.ext2fs_link(self.handle, directory, name, ino, file_type)
        if code in (ET_DIR_NO_SPACE, ET_DIR_NO_SPACE_FOR_CSUM):
            self._check(
                self._lib.ext2fs_expand_dir(self.handle, directory), "grow the folder", where
            )
            code = self._lib.ext2fs_link(self.handle, directory, name, ino, file_type)
        self._check(code, "link", where)
        self._changed(directory, where)

    def unlink(self, directory: int, name: bytes, where: str) -> None:
        """Remove the entry ``name`` (the inode's link count is the caller's business)."""
        self._check(self._lib.ext2fs_unlink(self.handle, directory, name, 0, 0), "unlink", where)
        self._changed(directory, where)

    def _changed(self, directory: int, where: str) -> None:
        """A folder whose entries changed gets the time of the change, as the kernel gives
        it (libext2fs leaves its times as they were)."""
        inode = self.read_inode(directory, where)
        now = time.time_ns()
        inode.set_times_ns(mtime_ns=now, ctime_ns=now)
        self.write_inode(directory, inode, where)

    def mkdir(self, parent: int, name: bytes, where: str) -> int:
        """Create the folder ``name`` in ``parent`` (mode 0755, owner 0:0); return its inode."""
        code = self._lib.ext2fs_mkdir(self.handle, parent, 0, name)
        if code in (ET_DIR_NO_SPACE, ET_DIR_NO_SPACE_FOR_CSUM):
            self._check(self._lib.ext2fs_expand_dir(self.handle, parent), "grow the folder", where)
            code = self._lib.ext2fs_mkdir(self.handle, parent, 0, name)
        self._check(code, "make the folder", where)
        self._changed(parent, where)
        ino = self.lookup(parent, name, where)
        if ino is None:
            raise BuildError(f"{where}: the new folder cannot be found")
        return ino

    def symlink(self, parent: int, name: bytes, target: bytes, where: str) -> int:
        """Create the symbolic link ``name`` -> ``target`` in ``parent``; return its inode."""
        code = self._lib.ext2fs_symlink(self.handle, parent, 0, name, target)
        if code in (ET_DIR_NO_SPACE, ET_DIR_NO_SPACE_FOR_CSUM):
            self._check(self._lib.ext2fs_expand_dir(self.handle, parent), "grow the folder", where)
            code = self._lib.ext2fs_symlink(self.handle, parent, 0, name, target)
        self._check(code, "make the symbolic link", where)
        self._changed(parent, where)
        ino = self.lookup(parent, name, where)
        if ino is None:
            raise BuildError(f"{where}: the new symbolic link cannot be found")
        return ino

    def list_folder(self, directory: int, where: str) -> list[tuple[bytes, int]]:
        """The entries of ``directory`` but "." and "..": (name, inode) pairs."""
        found: list[tuple[bytes, int]] = []
        failures: list[BaseException] = []

        def collect(
            _dir: int, entry: int, dirent: Any, _offset: int, _size: int, _buf: Any, _priv: Any
        ) -> int:
            if entry != _DIRENT_OTHER_FILE:
                return 0
            try:
                record = dirent.contents
                length = record.name_len & 0xFF
                # record.name would be cut at its first NUL: read the bytes themselves
                name = ctypes.string_at(ctypes.addressof(record) + _NAME_OFFSET, length)
                found.append((name, int(record.inode)))
            except BaseException as exc:  # ctypes would only print it: stop, raise it below
                failures.append(exc)
                return _DIRENT_ABORT
            return 0

        callback = _DIR_CALLBACK(collect)
        self._check(
            self._lib.ext2fs_dir_iterate2(
                self.handle, directory, _DIRENT_FLAGS, None, callback, None
            ),
            "list the folder",
            where,
        )
        if failures:
            raise failures[0]
        return found

    def read_link(self, ino: int, where: str) -> bytes:
        """The target of a symbolic link (kept in the inode when short, else in a block)."""
        inode = self.read_inode(ino, where)
        size = inode.size
        if self._lib.ext2fs_is_fast_symlink(ctypes.byref(inode)):
            return bytes(inode.i_block)[:size]
        with self._open_file(ino, where, writable=False) as file:
            return file.read(size)

    # file content -----------------------------------------------------------------------

    def write_blocks(self, ino: int, first: int, data: memoryview, where: str) -> None:
        """Write ``data`` (whole blocks) at logical block ``first`` of the extent-mapped
        inode ``ino``: the blocks are allocated as initialized extents by ext2fs_fallocate,
        then the data goes to where they are with plain pwrite calls, a run at a time.

        ext2fs_file_write allocates, maps and writes a block at a time; this is the same
        filesystem change with a few calls per run instead. Refused before anything is
        allocated when the blocks (and the extent tree's) cannot fit (ENOSPC).
        """
        block_size = int(self._head().blocksize)
        count = len(data) // block_size
        if count * block_size != len(data) or count == 0:
            raise BuildError(f"{where}: {len(data)} bytes are not whole blocks")
        free = self.counts().free_blocks
        if count + count // _EXTENTS_PER_BLOCK + _TREE_MARGIN_BLOCKS > free:
            raise Ext2fsError(
                "write",
                where,
                errno.ENOSPC,
                f"No space left on device ({free * block_size} bytes free)",
            )
        inode = self.read_inode(ino, where)
        try:
            self._check(
                self._lib.ext2fs_fallocate(
                    self.handle,
                    _FALLOCATE_FORCE_INIT | _FALLOCATE_INIT_BEYOND_EOF,
                    ino,
                    ctypes.byref(inode),
                    _ANY_GOAL,
                    first,
                    count,
                ),
                "allocate blocks",
                where,
            )
        finally:
            # fallocate counts the blocks in this copy of the inode (i_blocks) only
            self.write_inode(ino, inode, where)
        runs = self._mapped_runs(ino, inode, first, count, where)
        fd = self._data_fd
        if fd is None:
            raise BuildError(f"{where}: the filesystem is not open for writing")
        for logical, physical, length in runs:
            start = (logical - first) * block_size
            piece = data[start : start + length * block_size]
            position = self.offset + physical * block_size
            while piece:
                try:
                    done = os.pwrite(fd, piece, position)
                except OSError as exc:
                    raise Ext2fsError("write", where, exc.errno or 0, str(exc)) from exc
                piece, position = piece[done:], position + done

    def read_block(self, ino: int, logical: int, where: str) -> bytes:
        """The bytes of logical block ``logical`` of inode ``ino`` (zeros in a hole)."""
        block_size = int(self._head().blocksize)
        physical = blk64_t()
        flags = ctypes.c_int()
        self._check(
            self._lib.ext2fs_bmap2(
                self.handle,
                ino,
                None,
                None,
                0,
                logical,
                ctypes.byref(flags),
                ctypes.byref(physical),
            ),
            "map a block",
            where,
        )
        if not physical.value or flags.value & _BMAP_RET_UNINIT:
            return bytes(block_size)
        fd = self._data_fd
        if fd is None:
            raise BuildError(f"{where}: the filesystem is not open for writing")
        data = os.pread(fd, block_size, self.offset + physical.value * block_size)
        if len(data) != block_size:
            raise BuildError(f"{where}: short read of block {physical.value}")
        return data

    def _mapped_runs(
        self, ino: int, inode: Inode, first: int, count: int, where: str
    ) -> list[tuple[int, int, int]]:
        """(logical block, physical block, length) of each extent covering the range."""
        handle = ctypes.c_void_p()
        self._check(
            self._lib.ext2fs_extent_open2(
                self.handle, ino, ctypes.byref(inode), ctypes.byref(handle)
            ),
            "read the extents",
            where,
        )
        runs: list[tuple[int, int, int]] = []
        end = first + count
        try:
            extent = _Extent()
            self._check(self._lib.ext2fs_extent_goto(handle, first), "find the extent", where)
            code = self._lib.ext2fs_extent_get(handle, _EXTENT_CURRENT, ctypes.byref(extent))
            previous = -1
            # NEXT_LEAF comes back to the first leaf after the last: stop on a step back
            while code == 0 and previous < extent.e_lblk < end:
                previous = int(extent.e_lblk)
                start = max(previous, first)
                stop = min(previous + int(extent.e_len), end)
                if start < stop:
                    if extent.e_flags & _EXTENT_FLAGS_UNINIT:
                        raise BuildError(f"{where}: an allocated extent is not initialized")
                    runs.append((start, int(extent.e_pblk) + start - previous, stop - start))
                code = self._lib.ext2fs_extent_get(handle, _EXTENT_NEXT_LEAF, ctypes.byref(extent))
            if code not in (0, ET_EXTENT_NO_NEXT):
                self._check(code, "read the extents", where)
        finally:
            self._lib.ext2fs_extent_free(handle)
        if sum(length for _, _, length in runs) != count:
            raise BuildError(f"{where}: the blocks just allocated are not all mapped")
        return runs

    def _flush_io(self, where: str) -> None:
        """Write out the I/O channel's cached blocks (io_channel_flush; unix_io syncs the
        file too, so this is not for every write)."""
        io = self._head().io
        channel = ctypes.cast(io, ctypes.POINTER(_IoChannelHead)).contents
        slots = ctypes.cast(channel.manager, ctypes.POINTER(ctypes.c_void_p))
        flush = _IO_FLUSH(slots[_IO_MANAGER_FLUSH_SLOT])
        self._check(flush(io), "flush the cache", where)

    def open_file(self, ino: int, where: str, *, writable: bool) -> File | ExtentFile:
        """An open file on inode ``ino``; close it (a ``with`` block does, on every path):
        closing writes its last block and its inode. Writing to an extent-mapped inode
        goes through :class:`ExtentFile` (whole runs of blocks), else ``ext2_file_t``."""
        if writable and self.uses_extents:
            inode = self.read_inode(ino, where)
            if inode.i_flags & _EXTENTS_FL:
                return ExtentFile(self, ino, where, size=inode.size)
        return self._open_file(ino, where, writable=writable)

    def _open_file(self, ino: int, where: str, *, writable: bool) -> File:
        raw = ext2_file_t()
        self._check(
            self._lib.ext2fs_file_open(
                self.handle, ino, _FILE_WRITE if writable else 0, ctypes.byref(raw)
            ),
            "open the file",
            where,
        )
        return File(self, raw, where)


class File:
    """An open file inside the filesystem (from :meth:`Ext2Filesystem.open_file`)."""

    def __init__(self, fs: Ext2Filesystem, raw: ext2_file_t, where: str) -> None:
        self._fs = fs
        self._lib = fs._lib
        self._raw: ext2_file_t | None = raw
        self.where = where
        self.position = 0  # where the next write goes (see seek)

    def __enter__(self) -> File:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close(quiet=kind is not None)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append all of ``data`` at the current position (the size follows).

        A write that cannot fit is refused before it starts (ENOSPC): libext2fs 1.47 leaves
        a file it failed to extend in a state its blocks cannot be freed from (ext2fs_punch
        then fails with "Illegal block number"), so it must never run out mid-write.
        """
        raw = self._open_handle()
        view = memoryview(data).cast("B")
        self._refuse_unless_room(len(view))
        pointer, keep = _address(view)
        done, total = 0, len(view)
        while done < total:
            written = ctypes.c_uint()
            step = min(total - done, 1 << 30)
            self._fs._check(
                self._lib.ext2fs_file_write(raw, pointer + done, step, ctypes.byref(written)),
                "write",
                self.where,
            )
            if written.value == 0:
                raise BuildError(f"{self.where}: write failed: nothing written")
            done += written.value
        self.position += total
        del keep

    def _refuse_unless_room(self, size: int) -> None:
        counts = self._fs.counts()
        first, end = (
            self.position // counts.block_size,
            -(-(self.position + size) // counts.block_size),
        )
        # the data blocks, one extent tree block per EXTENTS_PER_BLOCK of them (fragmented
        # at worst), and a few more for the tree's upper levels
        needed = end - first + (end - first) // _EXTENTS_PER_BLOCK + _TREE_MARGIN_BLOCKS
        if needed > counts.free_blocks:
            raise Ext2fsError(
                "write",
                self.where,
                errno.ENOSPC,
                f"No space left on device ({counts.free_blocks * counts.block_size} bytes free)",
            )

    def seek(self, offset: int) -> None:
        """Move to byte ``offset``: the next write goes there (a gap left reads as zeros)."""
        moved = ctypes.c_uint64()
        self._fs._check(
            self._lib.ext2fs_file_llseek(
                self._open_handle(), offset, _SEEK_SET, ctypes.byref(moved)
            ),
            "seek",
            self.where,
        )
        self.position = offset

    def read(self, size: int) -> bytes:
        raw = self._open_handle()
        buffer = ctypes.create_string_buffer(size)
        got = ctypes.c_uint()
        self._fs._check(
            self._lib.ext2fs_file_read(raw, buffer, size, ctypes.byref(got)), "read", self.where
        )
        return buffer.raw[: got.value]

    def flush(self) -> None:
        self._fs._check(self._lib.ext2fs_file_flush(self._open_handle()), "flush", self.where)

    def close(self, *, quiet: bool = False) -> None:
        if self._raw is None:
            return
        raw, self._raw = self._raw, None
        code = self._lib.ext2fs_file_close(raw)
        if code and quiet:
            logger.error("%s: closing after an error failed: %s", self.where, error_message(code))
        elif code:
            raise Ext2fsError("close", self.where, code, error_message(code))

    def _open_handle(self) -> ext2_file_t:
        if self._raw is None:
            raise BuildError(f"{self.where}: the file is closed")
        return self._raw


class ExtentFile:
    """A file of an extent-mapped inode written in runs of whole blocks (see
    :meth:`Ext2Filesystem.write_blocks`): bytes are gathered up to ``FLUSH_BYTES`` (fewer
    and longer extents; a larger write goes as it is), a run at a time; the last block is written
    when the file is closed, and the inode's size set then. A block only partly written is
    completed with what it held (read back, zeros in a hole), so pieces may come in any
    order (``write_at``)."""

    FLUSH_BYTES = 4 * 2**20

    def __init__(self, fs: Ext2Filesystem, ino: int, where: str, *, size: int) -> None:
        self._fs = fs
        self._ino = ino
        self.where = where
        self._block_size = int(fs._head().blocksize)
        self._tail = bytearray()  # bytes from position - len(tail), not written yet
        self.position = 0
        self._size = size
        self._open = True

    def __enter__(self) -> ExtentFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close(quiet=kind is not None)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._open:
            raise BuildError(f"{self.where}: the file is closed")
        view = memoryview(data).cast("B")
        misaligned = self.position % self._block_size
        if not self._tail and misaligned:  # after a seek: up to the next block boundary
            head = view[: self._block_size - misaligned]
            self._write_range(self.position, head)
            self.position += len(head)
            view = view[len(head) :]
        if not self._tail and len(view) >= self.FLUSH_BYTES:
            # large enough to be one run by itself: written without a copy
            whole = len(view) // self._block_size * self._block_size
            self._fs.write_blocks(
                self._ino, self.position // self._block_size, view[:whole], self.where
            )
            self.position += whole
            view = view[whole:]
        self._tail += view
        self.position += len(view)
        self._size = max(self._size, self.position)
        if len(self._tail) >= self.FLUSH_BYTES:
            self._flush(final=False)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at byte ``offset`` (pieces of a file may come in any order)."""
        if not self._open:
            raise BuildError(f"{self.where}: the file is closed")
        self._flush(final=True)
        self._write_range(offset, memoryview(data).cast("B"))
        self.position = offset + len(data)

    def seek(self, offset: int) -> None:
        """Go to byte ``offset``: what follows is written from there."""
        self._flush(final=True)
        self.position = offset

    def _flush(self, *, final: bool) -> None:
        """Write the tail's whole blocks; ``final``: all of it (its last block completed
        with what that block holds, or zeros)."""
        size = self._block_size
        start = self.position - len(self._tail)
        whole = len(self._tail) // size * size
        if final and len(self._tail) > whole:
            with memoryview(self._tail) as view:
                self._write_range(start, view)
            self._tail.clear()
            return
        if whole == 0:
            return
        with memoryview(self._tail) as view:
            self._fs.write_blocks(self._ino, start // size, view[:whole], self.where)
        del self._tail[:whole]

    def _write_range(self, offset: int, data: memoryview) -> None:
        """Any range: its first and last blocks, when only partly covered, are completed
        with what they hold (a block read back), whole blocks written as they are."""
        if not data:
            return
        size = self._block_size
        first, end = offset // size, offset + len(data)
        last = (end - 1) // size
        head, tail_room = offset - first * size, (last + 1) * size - end
        if head or tail_room:
            buffer = bytearray(self._fs.read_block(self._ino, first, self.where))
            if last > first:
                buffer += bytes((last - first - 1) * size)
                buffer += self._fs.read_block(self._ino, last, self.where)
            buffer[head : head + len(data)] = data
            with memoryview(buffer) as view:
                self._fs.write_blocks(self._ino, first, view, self.where)
        else:
            self._fs.write_blocks(self._ino, first, data, self.where)
        self._size = max(self._size, end)

    def close(self, *, quiet: bool = False) -> None:
        """Write the last block and the size. ``quiet``: on the way out of an error, where
        the file is discarded: nothing more is written."""
        if not self._open:
            return
        self._open = False
        if quiet:
            # a new buffer: the old one may still be lent to the traceback being raised
            self._tail = bytearray()
            return
        self._flush(final=True)
        inode = self._fs.read_inode(self._ino, self.where)
        inode.size = self._size
        self._fs.write_inode(self._ino, inode, self.where)


def _address(view: memoryview) -> tuple[int, object]:
    """The address of a contiguous buffer's first byte, and what keeps it alive.

    A read-only buffer (bytes) cannot be mapped by ctypes.from_buffer: its address is that
    of the bytes object's own storage (c_char_p points there, no copy), or a copy when the
    view is a slice of something else."""
    if not view.readonly:
        array = (ctypes.c_char * len(view)).from_buffer(view)
        return ctypes.addressof(array), array
    source = view.obj
    if isinstance(source, bytes) and view.nbytes == len(source):
        pointer = ctypes.cast(ctypes.c_char_p(source), ctypes.c_void_p).value or 0
        return pointer, source
    copy = ctypes.create_string_buffer(view.tobytes(), view.nbytes)
    return ctypes.addressof(copy), copy

"""The arithmetic of growing an ext4 filesystem: what resize2fs adds and what stays free.

Read from the superblock (1024 bytes at offset 1024 of the filesystem, no tool needed), so the
same figures serve a ranged read of a remote base image at check time and the fetched image
at build time. The model follows what ``resize2fs`` does when it grows a filesystem:

- every new block group takes two bitmaps and an inode table (the inode count per group is
  fixed at mke2fs time: growing keeps the bytes-per-inode ratio);
- groups holding a superblock backup (``sparse_super``: 0, 1 and powers of 3, 5 and 7) also
  take the group descriptor table and, with ``resize_inode``, its reserved growth blocks;
  past what those reserved blocks can describe, ``resize_filesystem`` drops ``resize_inode``
  and the descriptor table alone counts;
- the journal keeps its size (it is part of what is used already);
- the root-reserved blocks keep their ratio (``-m``);
- a last group too small for its own metadata is cut off (resize2fs's rule).

What the running kernel will not hand out for data, even to root, is counted too: ext4 keeps
2% of the blocks, at most 4096, for its own metadata (``resv_clusters``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
EXT4_MAGIC = 0xEF53

_COMPAT_RESIZE_INODE = 0x10
_COMPAT_SPARSE_SUPER2 = 0x200
_INCOMPAT_META_BG = 0x10
_INCOMPAT_EXTENTS = 0x40
_INCOMPAT_64BIT = 0x80
_RO_COMPAT_SPARSE_SUPER = 0x1
_RO_COMPAT_BIGALLOC = 0x200

# resize2fs drops a last group that has fewer blocks than its metadata plus this many
_LAST_GROUP_SLACK = 50
# the kernel's resv_clusters: 1/50 of the blocks, at most 4096 (fs/ext4/super.c)
_KERNEL_RESERVE_DIVISOR = 50
_KERNEL_RESERVE_MAX = 4096
# mke2fs reserves descriptor blocks for 1024 times the first size, at most a block of them
_MKE2FS_GROWTH = 1024


class NotExt4Error(ValueError):
    """The bytes are no ext4 superblock, or one this model cannot grow (bigalloc)."""


@dataclass(frozen=True)
class Ext4Geometry:
    """A filesystem's layout and usage, as its superblock says (or as assumed, ``measured``
    False, when the superblock could not be read)."""

    block_size: int
    block_count: int
    free_blocks: int
    reserved_blocks: int  # root-reserved (mke2fs -m)
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int
    inode_blocks_per_group: int
    inode_count: int
    free_inodes: int
    descriptor_size: int
    reserved_gdt_blocks: int
    resize_inode: bool
    sparse_super: bool
    sparse_super2: bool
    meta_bg: bool
    extents: bool
    measured: bool = True

    @property
    def used_blocks(self) -> int:
        return self.block_count - self.free_blocks

    @property
    def used_inodes(self) -> int:
        return self.inode_count - self.free_inodes

    @property
    def groups(self) -> int:
        return _groups(self, self.block_count)


def parse_superblock(raw: bytes) -> Ext4Geometry:
    """The geometry in a 1024-byte ext2/3/4 superblock (little endian, as on disk)."""
    if len(raw) < SUPERBLOCK_SIZE:
        raise NotExt4Error(f"{len(raw)} bytes, a superblock has {SUPERBLOCK_SIZE}")

    def u16(offset: int) -> int:
        return int(struct.unpack_from("<H", raw, offset)[0])

    def u32(offset: int) -> int:
        return int(struct.unpack_from("<I", raw, offset)[0])

    if u16(0x38) != EXT4_MAGIC:
        raise NotExt4Error("no ext2/3/4 magic number")
    compat, incompat, ro_compat = u32(0x5C), u32(0x60), u32(0x64)
    if ro_compat & _RO_COMPAT_BIGALLOC:
        raise NotExt4Error("bigalloc filesystems are not supported")
    wide = bool(incompat & _INCOMPAT_64BIT)

    def u64(low: int, high: int) -> int:
        return u32(low) | (u32(high) << 32 if wide else 0)

    block_size = 1024 << u32(0x18)
    inode_size = u16(0x58) if u32(0x4C) >= 1 else 128
    inodes_per_group = u32(0x28)
    return Ext4Geometry(
        block_size=block_size,
        block_count=u64(0x04, 0x150),
        free_blocks=u64(0x0C, 0x158),
        reserved_blocks=u64(0x08, 0x154),
        first_data_block=u32(0x14),
        blocks_per_group=u32(0x20),
        inodes_per_group=inodes_per_group,
        inode_blocks_per_group=math.ceil(inodes_per_group * inode_size / block_size),
        inode_count=u32(0x00),
        free_inodes=u32(0x10),
        descriptor_size=u16(0xFE) if wide else 32,
        reserved_gdt_blocks=u16(0xCE),
        resize_inode=bool(compat & _COMPAT_RESIZE_INODE),
        sparse_super=bool(ro_compat & _RO_COMPAT_SPARSE_SUPER),
        sparse_super2=bool(compat & _COMPAT_SPARSE_SUPER2),
        meta_bg=bool(incompat & _INCOMPAT_META_BG),
        extents=bool(incompat & _INCOMPAT_EXTENTS),
    )


def assumed_geometry(partition_bytes: int) -> Ext4Geometry:
    """An upper bound for a data filesystem whose superblock could not be read.

    The partition is taken as full (no free block, no free inode), and what growing it costs
    is taken at its worst for each need: inode tables as dense as mke2fs's default profile
    (one 256-byte inode per 16 KiB), yet as few inodes as the official base image has (one
    per MiB, ``-T largefile``), and 5% of blocks reserved for root (mke2fs's default; the
    official base uses 1%).
    """
    block_size, per_group = 4096, 32768
    blocks = max(partition_bytes // block_size, 1)
    groups = math.ceil(blocks / per_group)
    descriptors_per_block = block_size // 64
    reserve_groups = math.ceil(min(blocks * _MKE2FS_GROWTH, 2**32) / per_group)
    reserved_gdt = min(
        math.ceil(reserve_groups / descriptors_per_block)
        - math.ceil(groups / descriptors_per_block),
        block_size // 4,
    )
    inodes_per_group = per_group * block_size // 2**20
    return Ext4Geometry(
        block_size=block_size,
        block_count=blocks,
        free_blocks=0,
        reserved_blocks=blocks * 5 // 100,
        first_data_block=0,
        blocks_per_group=per_group,
        inodes_per_group=inodes_per_group,
        inode_blocks_per_group=per_group * block_size // 16384 * 256 // block_size,
        inode_count=groups * inodes_per_group,
        free_inodes=0,
        descriptor_size=64,
        reserved_gdt_blocks=reserved_gdt,
        resize_inode=True,
        sparse_super=True,
        sparse_super2=False,
        meta_bg=False,
        extents=True,
        measured=False,
    )


@dataclass(frozen=True)
class Grown:
    """The filesystem resize2fs makes of ``geometry`` on a partition of ``partition_bytes``."""

    block_count: int
    groups: int
    used_blocks: int  # what is used now plus the metadata of the new groups
    reserved_blocks: int  # root-reserved, same ratio as before
    kernel_reserved: int  # resv_clusters, usable by no one for data
    inode_count: int
    used_inodes: int
    drops_resize_inode: bool

    @property
    def free_blocks(self) -> int:
        return self.block_count - self.used_blocks

    @property
    def available_blocks(self) -> int:
        """Blocks that writing files can take and still leave the root reserve untouched."""
        return self.block_count - self.used_blocks - self.reserved_blocks - self.kernel_reserved

    @property
    def free_inodes(self) -> int:
        return self.inode_count - self.used_inodes


def grown(geometry: Ext4Geometry, partition_bytes: int) -> Grown:
    """What the filesystem looks like once grown to fill ``partition_bytes`` (never shrunk)."""
    blocks = max(_resized_block_count(geometry, partition_bytes), geometry.block_count)
    groups = _groups(geometry, blocks)
    drops = geometry.resize_inode and _descriptor_blocks(geometry, groups) > _gdt_capacity(geometry)
    after = replace(geometry, resize_inode=geometry.resize_inode and not drops)
    added = _metadata_blocks(after, groups) - _metadata_blocks(geometry, geometry.groups)
    ratio = geometry.reserved_blocks * 100.0 / geometry.block_count
    return Grown(
        block_count=blocks,
        groups=groups,
        used_blocks=geometry.used_blocks + added,
        # resize2fs keeps the percentage, computed in floating point and truncated
        reserved_blocks=int(ratio * blocks / 100.0),
        kernel_reserved=(
            min(blocks // _KERNEL_RESERVE_DIVISOR, _KERNEL_RESERVE_MAX) if geometry.extents else 0
        ),
        inode_count=groups * geometry.inodes_per_group,
        used_inodes=geometry.used_inodes,
        drops_resize_inode=drops,
    )


def blocks_for_groups(geometry: Ext4Geometry, groups: int) -> int:
    """The fewest blocks resize2fs makes ``groups`` groups of (its last group being kept)."""
    if groups <= geometry.groups:
        return geometry.block_count
    drops = geometry.resize_inode and _descriptor_blocks(geometry, groups) > _gdt_capacity(geometry)
    after = replace(geometry, resize_inode=geometry.resize_inode and not drops)
    overhead = 2 + geometry.inode_blocks_per_group
    if _has_super(geometry, groups - 1):
        overhead += _per_backup(after, groups)
    last = overhead + _LAST_GROUP_SLACK
    return geometry.first_data_block + (groups - 1) * geometry.blocks_per_group + last


def _groups(geometry: Ext4Geometry, blocks: int) -> int:
    return math.ceil((blocks - geometry.first_data_block) / geometry.blocks_per_group)


def _descriptor_blocks(geometry: Ext4Geometry, groups: int) -> int:
    return math.ceil(groups / (geometry.block_size // geometry.descriptor_size))


def _gdt_capacity(geometry: Ext4Geometry) -> int:
    """Descriptor blocks a backup holds now: resize2fs turns reserved ones into real ones."""
    return _descriptor_blocks(geometry, geometry.groups) + geometry.reserved_gdt_blocks


def _per_backup(geometry: Ext4Geometry, groups: int) -> int:
    """Blocks of one superblock backup: the superblock and the descriptor table."""
    if geometry.resize_inode:
        return 1 + max(_gdt_capacity(geometry), _descriptor_blocks(geometry, groups))
    return 1 + _descriptor_blocks(geometry, groups)


def _metadata_blocks(geometry: Ext4Geometry, groups: int) -> int:
    """Blocks taken by group metadata in a filesystem of ``groups`` groups."""
    total = _backup_groups(geometry, groups) * _per_backup(geometry, groups)
    if geometry.meta_bg:
        # with meta_bg, each run of descriptor-block-many groups keeps its descriptor block
        # in three groups: counted on top, an upper bound
        total += 3 * _descriptor_blocks(geometry, groups)
    return total + groups * (2 + geometry.inode_blocks_per_group)


def _backup_groups(geometry: Ext4Geometry, groups: int) -> int:
    """How many of the first ``groups`` groups hold a superblock (the primary included)."""
    if geometry.sparse_super2:
        return min(groups, 3)  # the primary and at most two backups
    if not geometry.sparse_super:
        return groups
    count = min(groups, 2)  # groups 0 and 1
    for base in (3, 5, 7):
        power = base
        while power < groups:
            count += 1
            power *= base
    return count


def _has_super(geometry: Ext4Geometry, group: int) -> bool:
    return _backup_groups(geometry, group + 1) > _backup_groups(geometry, group)


def _resized_block_count(geometry: Ext4Geometry, partition_bytes: int) -> int:
    """The block count resize2fs picks for a device of ``partition_bytes``."""
    blocks = partition_bytes // geometry.block_size
    while True:
        groups = _groups(geometry, blocks)
        remainder = (blocks - geometry.first_data_block) % geometry.blocks_per_group
        overhead = 2 + geometry.inode_blocks_per_group
        if _has_super(geometry, groups - 1):
            overhead += _per_backup(geometry, groups)
        if groups > 1 and remainder and remainder < overhead + _LAST_GROUP_SLACK:
            blocks -= remainder
            continue
        return blocks

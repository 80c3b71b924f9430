"""What the content takes on the data filesystem: blocks and inodes, counted from above.

Every file is rounded up to whole blocks, and gets extent-tree blocks when it is large. Of an
archive, only the number of entries (``FileSource.entries``: members, their folders and the
destination folder, known for a zip from its central directory) and the total size are
known: each entry may leave up to one block partly empty (or be a folder, one block), so
the bound is the total in blocks plus one block per entry. A tar's members are only counted
as they are extracted: it counts as its expanded size and one folder, and a tar of many
small files can run out of room (the extraction then stops with a clear error). Each new name
also takes room in its folder (``DIRENT_BYTES``), and each folder of a destination path an
inode and a block. A zip that is downloaded is spooled on the partition next to its
destination while it is extracted, so it counts too. An OCI image counts as its tar plus
the room it takes once loaded (``fullsize``), which stays free for the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from image_creator.config.model import Inline, Via
from image_creator.plan import FileSource, ImageSource, Inventory

# A directory entry is 8 bytes plus the name rounded up to 4; hashed directories split full
# blocks in two. 64 bytes a name covers 24-character names in half-full blocks (or 56 in full
# ones); longer names in huge folders make the extraction fail with "no space left".
DIRENT_BYTES = 64
# Extents are assumed to be no longer than 1 MiB each (real ones reach 128 MiB): beyond the
# four an inode holds, a file needs a tree block per 340 extents.
EXTENT_BYTES = 2**20
INODE_EXTENTS = 4
# What the build writes besides the config's entries: /data/conf/image.yaml (the config,
# where inline contents appear as text, base64 adding a third) and its folder.
BUILD_FILES_BYTES = 64 * 1024
BUILD_FILES_INODES = 2
IMAGES_FOLDER = PurePosixPath("images")


@dataclass(frozen=True)
class ContentNeeds:
    """Room the build needs on the data filesystem, beyond what the base uses already."""

    blocks: int  # written by the build, plus the room kept to load the OCI images
    inodes: int
    load_room_blocks: int  # part of ``blocks``: the OCI images' fullsize, left free


def content_needs(inventory: Inventory, block_size: int) -> ContentNeeds:
    blocks = inodes = names = load_room = 0
    folders: set[PurePosixPath] = set()
    for source in inventory.files:
        file_blocks, file_inodes = _file_source(source, block_size)
        blocks += file_blocks
        inodes += file_inodes
        names += file_inodes
        folders.update(_folders(source.entry.relative_to_data))
    for image in inventory.images:
        load_room += _ceil(image.fullsize, block_size)
        blocks += _image_source(image, block_size)
        inodes += 1
        names += 1
        folders.add(IMAGES_FOLDER)
    inline = sum(
        len(source.entry.origin.content)
        for source in inventory.files
        if isinstance(source.entry.origin, Inline)
    )
    blocks += _ceil(BUILD_FILES_BYTES + 2 * inline, block_size)
    inodes += BUILD_FILES_INODES
    # every folder of a destination path may be new: an inode and a block each
    blocks += len(folders) + load_room
    inodes += len(folders)
    names += len(folders) + BUILD_FILES_INODES
    blocks += _ceil(names * DIRENT_BYTES, block_size)
    return ContentNeeds(blocks=blocks, inodes=inodes, load_room_blocks=load_room)


def _file_source(source: FileSource, block_size: int) -> tuple[int, int]:
    """Blocks and inodes of one ``files[]`` entry."""
    entry = source.entry
    if not entry.via.is_archive:
        return file_blocks(source.expanded_size, block_size), 1
    # the members (counted with their folders and the destination folder), each rounded up
    inodes = max(source.entries, 1)
    blocks = _ceil(source.expanded_size, block_size) + inodes
    blocks += _extent_tree_blocks(source.expanded_size, block_size)
    if entry.via is Via.ZIP:
        spooled = source.download_size or source.expanded_size
        blocks += file_blocks(spooled, block_size)
        inodes += 1
    return blocks, inodes


def _image_source(image: ImageSource, block_size: int) -> int:
    """Blocks of the docker-load tar written to /data/images."""
    return file_blocks(image.filesize, block_size)


def file_blocks(size: int, block_size: int) -> int:
    """Blocks one file of ``size`` bytes takes: its data and its extent tree."""
    return _ceil(size, block_size) + _extent_tree_blocks(size, block_size)


def _extent_tree_blocks(size: int, block_size: int) -> int:
    extents = _ceil(size, EXTENT_BYTES)
    if extents <= INODE_EXTENTS:
        return 0
    per_block = (block_size - 12) // 12  # a 12-byte header, then 12-byte entries
    leaves = _ceil(extents, per_block)
    return leaves + (0 if leaves <= INODE_EXTENTS else _ceil(leaves, per_block))


def _folders(path: PurePosixPath) -> list[PurePosixPath]:
    """The folders above ``path`` on the data partition (``a/b/c`` -> ``a``, ``a/b``)."""
    return [parent for parent in path.parents if parent != PurePosixPath(".")]


def _ceil(value: int, unit: int) -> int:
    return -(-value // unit) if value > 0 else 0

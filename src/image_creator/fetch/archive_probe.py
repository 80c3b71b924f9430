"""How big an archive is once extracted, read from the archive itself with a few ranged reads.

Config generators give ``files[].size`` as the archive's download size, which says nothing of
what it expands to. Most formats record that figure near their end:

- zip: the central directory (found through the end-of-central-directory record, ZIP64
  included) lists every member with its uncompressed size: exact sizes and an entry count.
- gzip (``gztar``): the 4-byte ISIZE trailer, the uncompressed size modulo 2^32.
- xz (``xztar``): the stream footer points at the index, whose records give every block's
  uncompressed size; concatenated streams are walked back to front.
- plain tar: its own size bounds its content.
- bzip2 (``bztar``): records nothing; unknown.

For gz and xz the figure is the size of the *tar* inside, an upper bound of the members'
bytes (headers and padding included): a fine estimate of what the extraction writes. Entry
counts are known only for zip (tar members are counted as they come, at build time).

Nothing is downloaded: every read is a ranged read of at most ``MAX_INDEX_BYTES``.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass

from image_creator.config.model import Via
from image_creator.errors import SourceError
from image_creator.fetch.source import Source
from image_creator.units import format_size

logger = logging.getLogger(__name__)

# The largest central directory or xz index read (proportional to the number of entries).
MAX_INDEX_BYTES = 64 * 1024 * 1024
# Read at first from the end of a zip: its end record, and usually its central directory.
_ZIP_TAIL = 64 * 1024
_ZIP_MAX_COMMENT = 0xFFFF
_MAX_XZ_STREAMS = 64
_MAX_XZ_PADDING = 64 * 1024
_XZ_TAIL = 4096  # the footer and, for an archive of a few hundred blocks, the index

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory (22 bytes)
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes, just before the end record
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4s6H3L5HLL")  # a central directory header (46 bytes)
_CENTRAL_SIGNATURE = b"PK\x01\x02"
_ZIP64_EXTRA_ID = 0x0001
_MAX32 = 0xFFFFFFFF

_XZ_HEADER_MAGIC = b"\xfd7zXZ\x00"
_XZ_FOOTER_MAGIC = b"YZ"
_XZ_FOOTER = 12
_XZ_HEADER = 12


@dataclass(frozen=True)
class ArchiveFacts:
    """What the archive says about its content; None where it does not tell."""

    expanded: int | None  # bytes once extracted (an upper bound for tar streams)
    entries: int | None  # files, links and folders (implied parents included)
    note: str | None = None  # why a figure is unknown


def inspect_archive(
    source: Source, via: Via, download_size: int | None, *, accepts_ranges: bool = True
) -> ArchiveFacts:
    """The expanded size (and entry count) of the archive ``source``, from ranged reads.

    ``download_size`` is the archive's size as the server announced it. Raises SourceError
    for a zip or xz file whose structure is broken (the build could not extract it either).
    """
    if via is Via.TAR:
        return ArchiveFacts(expanded=download_size, entries=None)
    if via is Via.BZTAR:
        return ArchiveFacts(None, None, "bzip2 does not record the expanded size")
    if download_size is None:
        return ArchiveFacts(None, None, "the server gives no size: the archive cannot be read")
    if not accepts_ranges:
        return ArchiveFacts(None, None, "the server does not offer ranged reads")
    if via is Via.ZIP:
        return _inspect_zip(_TailReader(source, download_size, read_behind=_ZIP_TAIL))
    if via is Via.GZTAR:
        return _inspect_gzip(_TailReader(source, download_size))
    if via is Via.XZTAR:
        return _inspect_xz(_TailReader(source, download_size, read_behind=_XZ_TAIL))
    raise ValueError(f"not an archive: {via}")


class _TailReader:
    """Ranged reads of one source, keeping its last bytes: zip and xz are read backwards."""

    def __init__(self, source: Source, size: int, *, read_behind: int = 0) -> None:
        self.source = source
        self.url = source.url
        self.size = size
        # when reading before what is kept, read at least this much: the next read is there
        self.read_behind = read_behind
        self._tail = b""
        self._start = size  # offset of self._tail[0]

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (SourceError if the source is shorter)."""
        if offset < 0 or offset + length > self.size:
            raise self.invalid(f"structure points outside the file (offset {offset})")
        end = offset + length
        if offset >= self._start:
            return self._tail[offset - self._start : end - self._start]
        if end >= self._start - _ZIP_TAIL:
            # just before what is kept: extend it, so what follows is not asked again
            start = max(0, min(offset, self._start - self.read_behind))
            missing = self.source.read_range(start, self._start - start)
            self._check_length(missing, self._start - start)
            self._tail, self._start = missing + self._tail, start
            return self._tail[offset - start : end - start]
        data = self.source.read_range(offset, length)
        self._check_length(data, length)
        return data

    def _check_length(self, data: bytes, length: int) -> None:
        if len(data) != length:
            raise self.invalid("shorter than the server announced")

    def invalid(self, reason: str) -> SourceError:
        return SourceError(f"{self.url}: not a valid archive: {reason}")


# zip -----------------------------------------------------------------------------------


def _inspect_zip(reader: _TailReader) -> ArchiveFacts:
    size = reader.size
    tail_length = min(size, _ZIP_TAIL)
    tail = reader.read(size - tail_length, tail_length)
    eocd_at = _find_eocd(tail, exact=True)
    if eocd_at is None and size > tail_length:
        # a comment of up to 64 KiB may follow the end record
        tail_length = min(size, _EOCD.size + _ZIP_MAX_COMMENT)
        tail = reader.read(size - tail_length, tail_length)
        eocd_at = _find_eocd(tail, exact=True)
    if eocd_at is None:
        eocd_at = _find_eocd(tail, exact=False)
    if eocd_at is None:
        raise reader.invalid("no zip end of central directory record")
    eocd_offset = size - tail_length + eocd_at
    fields = _EOCD.unpack(reader.read(eocd_offset, _EOCD.size))
    _sig, _disk, _cd_disk, _disk_entries, total, cd_size, cd_offset, _comment = fields
    directory_end = eocd_offset
    zip64 = _zip64_record(reader, eocd_offset)
    if zip64 is not None:
        directory_end, total, cd_size, cd_offset = zip64
    elif _MAX32 in (cd_size, cd_offset):
        raise reader.invalid("no ZIP64 end record for a ZIP64 archive")
    if cd_size > MAX_INDEX_BYTES:
        note = f"central directory of {format_size(cd_size)}: over {format_size(MAX_INDEX_BYTES)}"
        return ArchiveFacts(None, None, f"{note}, not read")
    # the directory ends where its end record starts (self-extracting zips shift offsets)
    directory_start = directory_end - cd_size
    if directory_start != cd_offset:
        logger.debug("%s: central directory at %d, not %d", reader.url, directory_start, cd_offset)
    members = _central_entries(reader, reader.read(directory_start, cd_size))
    if len(members) != total:
        logger.debug("%s: %d entries listed, %d announced", reader.url, len(members), total)
    expanded, entries = _count(members)
    return ArchiveFacts(expanded=expanded, entries=entries)


def _zip64_record(reader: _TailReader, eocd_offset: int) -> tuple[int, int, int, int] | None:
    """(its offset, entries, directory size, directory offset) from the ZIP64 end record."""
    record_at = eocd_offset - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
    if record_at < 0:
        return None
    locator = reader.read(eocd_offset - _ZIP64_LOCATOR.size, _ZIP64_LOCATOR.size)
    if _ZIP64_LOCATOR.unpack(locator)[0] != _ZIP64_LOCATOR_SIGNATURE:
        return None
    # the record sits just before its locator (its recorded offset moves with a prefix)
    record = _ZIP64_EOCD.unpack(reader.read(record_at, _ZIP64_EOCD.size))
    if record[0] != _ZIP64_EOCD_SIGNATURE:
        return None
    return record_at, record[7], record[8], record[9]


def _find_eocd(tail: bytes, *, exact: bool) -> int | None:
    """Where the end record is in ``tail``: the one whose comment ends the file (``exact``),
    else the last one whose comment fits (a comment may itself hold the signature)."""
    at = tail.rfind(_EOCD_SIGNATURE)
    while at >= 0:
        if at + _EOCD.size <= len(tail):
            end = at + _EOCD.size + _EOCD.unpack_from(tail, at)[-1]
            if end == len(tail) or (not exact and end < len(tail)):
                return at
        at = tail.rfind(_EOCD_SIGNATURE, 0, at)
    return None


def _central_entries(reader: _TailReader, directory: bytes) -> list[tuple[bytes, int]]:
    """(name, uncompressed size) of every central directory header."""
    found = []
    at = 0
    while at < len(directory):
        if directory[at : at + 4] != _CENTRAL_SIGNATURE or at + _CENTRAL.size > len(directory):
            raise reader.invalid(f"bad central directory header at +{at}")
        fields = _CENTRAL.unpack_from(directory, at)
        file_size, name_length, extra_length, comment_length = fields[9:13]
        name_at = at + _CENTRAL.size
        name = directory[name_at : name_at + name_length]
        if file_size == _MAX32:
            extra = directory[name_at + name_length : name_at + name_length + extra_length]
            file_size = _zip64_file_size(reader, extra)
        found.append((name, file_size))
        at = name_at + name_length + extra_length + comment_length
    return found


def _zip64_file_size(reader: _TailReader, extra: bytes) -> int:
    at = 0
    while at + 4 <= len(extra):
        header_id, length = struct.unpack_from("<2H", extra, at)
        if header_id == _ZIP64_EXTRA_ID and length >= 8:
            return int(struct.unpack_from("<Q", extra, at + 4)[0])
        at += 4 + length
    raise reader.invalid("a member's ZIP64 size is missing")


def _count(members: list[tuple[bytes, int]]) -> tuple[int, int]:
    """Total uncompressed bytes, and entries once extracted (implied folders included)."""
    expanded = 0
    files = 0
    folders: set[tuple[bytes, ...]] = set()
    for name, file_size in members:
        parts = tuple(part for part in name.split(b"/") if part not in (b"", b"."))
        if not parts:
            continue
        folders.update(parts[:depth] for depth in range(1, len(parts)))
        if name.endswith(b"/"):
            folders.add(parts)
        else:
            files += 1
            expanded += file_size
    return expanded, files + len(folders)


# gzip ----------------------------------------------------------------------------------


def _inspect_gzip(reader: _TailReader) -> ArchiveFacts:
    """ISIZE is the last member's size modulo 2^32: trusted only when it can be the whole."""
    if reader.size >= 2**32:
        return ArchiveFacts(None, None, "gzip ISIZE is mod 2^32: archive over 4 GiB, size unknown")
    if reader.size < 18:
        raise reader.invalid("too short for a gzip file")
    (isize,) = struct.unpack("<L", reader.read(reader.size - 4, 4))
    if isize < reader.size:
        return ArchiveFacts(
            None,
            None,
            f"gzip ISIZE ({isize}) is below the archive's size: over 4 GiB expanded or "
            "several gzip members, size unknown",
        )
    return ArchiveFacts(expanded=isize, entries=None)


# xz ------------------------------------------------------------------------------------


def _inspect_xz(reader: _TailReader) -> ArchiveFacts:
    """Walk the streams from the last: footer -> index -> the stream's start -> padding."""
    end = reader.size
    expanded = 0
    for _ in range(_MAX_XZ_STREAMS):
        end = _skip_stream_padding(reader, end)
        if end < _XZ_HEADER + _XZ_FOOTER:
            raise reader.invalid("too short for an xz stream")
        footer = reader.read(end - _XZ_FOOTER, _XZ_FOOTER)
        if footer[10:] != _XZ_FOOTER_MAGIC:
            raise reader.invalid("no xz stream footer")
        crc, backward = struct.unpack_from("<2L", footer)
        if zlib.crc32(footer[4:10]) != crc:
            raise reader.invalid("xz stream footer CRC mismatch")
        index_size = (backward + 1) * 4
        if index_size > MAX_INDEX_BYTES:
            note = f"xz index of {format_size(index_size)}: over {format_size(MAX_INDEX_BYTES)}"
            return ArchiveFacts(None, None, f"{note}, not read")
        index_at = end - _XZ_FOOTER - index_size
        index = reader.read(index_at, index_size)
        blocks_size, uncompressed = _parse_xz_index(reader, index)
        start = index_at - blocks_size - _XZ_HEADER
        if start < 0 or reader.read(start, _XZ_HEADER)[:6] != _XZ_HEADER_MAGIC:
            raise reader.invalid("xz index does not match the file")
        expanded += uncompressed
        if start == 0:
            return ArchiveFacts(expanded=expanded, entries=None)
        end = start
    return ArchiveFacts(None, None, f"over {_MAX_XZ_STREAMS} xz streams, size unknown")


def _skip_stream_padding(reader: _TailReader, end: int) -> int:
    """Before ``end``, past the null bytes that may separate xz streams."""
    skipped = 0
    while end >= 4 and skipped <= _MAX_XZ_PADDING:
        if reader.read(end - 4, 4) != b"\x00\x00\x00\x00":
            return end
        end -= 4
        skipped += 4
    if end < 4:
        return end
    raise reader.invalid("over 64 KiB of xz stream padding")


def _parse_xz_index(reader: _TailReader, index: bytes) -> tuple[int, int]:
    """(bytes of the blocks, uncompressed bytes) listed by an xz index."""
    if zlib.crc32(index[:-4]) != struct.unpack("<L", index[-4:])[0]:
        raise reader.invalid("xz index CRC mismatch")
    if index[0] != 0:
        raise reader.invalid("no xz index where the footer points")
    at = 1
    count, at = _varint(reader, index, at)
    blocks = 0
    uncompressed = 0
    for _ in range(count):
        unpadded, at = _varint(reader, index, at)
        size, at = _varint(reader, index, at)
        blocks += (unpadded + 3) // 4 * 4
        uncompressed += size
    return blocks, uncompressed


def _varint(reader: _TailReader, data: bytes, at: int) -> tuple[int, int]:
    """An xz multibyte integer (7 bits a byte, at most 9 bytes) and the offset after it."""
    value = 0
    for shift in range(0, 63, 7):
        if at >= len(data) - 4:
            break
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise reader.invalid("bad integer in the xz index")

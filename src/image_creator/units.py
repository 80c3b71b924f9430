"""Sizes and durations as users write them, turned into ints and timedeltas."""

from __future__ import annotations

import re
from datetime import timedelta

import humanfriendly

SECTOR_SIZE = 512
# How much is read or written at a time when streaming files and downloads.
CHUNK = 2**20
NAME_MAX = 255  # bytes in one file name, on ext4 as on most filesystems
# The largest file size a 64-bit offset can express.
MAX_SIZE = 2**63 - 1
# humanfriendly reads units by their first letter ("12 parsecs" would be 12 PB): allow only
# real units before handing the text over.
_SIZE_PATTERN = re.compile(r"^\d+(?:\.\d+)?\s*(?:[kmgtpe](?:i?b)?|b|bytes?)?$", re.IGNORECASE)


class UnitError(ValueError):
    """A size or duration that cannot be parsed; the message says what was expected."""


def parse_size(value: object) -> int:
    """Bytes from an int or a size string: ``8G`` is 8*10^9, ``8GiB`` is 8*2^30."""
    if isinstance(value, bool):
        raise UnitError(f"expected a size like 8G or 8GiB, got {value!r}")
    size: int | None = None
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"a size cannot be negative: {value}")
        size = value
    elif isinstance(value, str) and len(value) < 64 and _SIZE_PATTERN.match(value.strip()):
        try:
            parsed = humanfriendly.parse_size(value.strip(), binary=False)
        except humanfriendly.InvalidSize:
            pass
        else:
            if parsed >= 0:
                size = int(parsed)
    if size is None:
        raise UnitError(f"expected a size like 8G or 8GiB, got {str(value)[:40]!r}")
    if size > MAX_SIZE:
        raise UnitError(f"{str(value)[:40]} is larger than any file can be (8 EiB)")
    return size


_DURATION_UNITS = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "y": timedelta(days=365),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdwy])")


def parse_duration(value: object) -> timedelta:
    """A timedelta from ``30d``, ``4w``, ``1y``, ``1d12h`` or ``0``; bare ints are seconds."""
    if isinstance(value, bool):
        raise UnitError(f"expected a duration like 30d, 4w or 1y, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text == "0":
            return timedelta(0)
        if text and _DURATION_PART.sub("", text) == "":
            total = timedelta(0)
            for amount, unit in _DURATION_PART.findall(text):
                total += float(amount) * _DURATION_UNITS[unit]
            return total
    raise UnitError(f"expected a duration like 30d, 4w or 1y, got {value!r}")


def format_size(size: int) -> str:
    """Human size with binary units, e.g. ``5.70 MiB``."""
    return str(humanfriendly.format_size(size, binary=True))


def round_up(value: int, unit: int) -> int:
    """``value`` rounded up to a whole number of ``unit``."""
    return -(-value // unit) * unit

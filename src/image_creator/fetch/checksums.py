"""Digests of downloaded content, for the algorithms a config may name (``ChecksumAlgo``);
an expected digest is lowercase hex."""

from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path
from typing import Protocol

from image_creator.digests import ChecksumAlgo
from image_creator.errors import ChecksumMismatchError, SourceError
from image_creator.progress import ProgressCallback, no_progress
from image_creator.units import CHUNK

_HEX = re.compile(r"[0-9a-f]+")
# BSD-style tool output: "SHA256 (name) = digest"
_BSD_LINE = re.compile(r"^[A-Za-z0-9-]+ \(.*\) = ([0-9A-Fa-f]+)$")


class Hasher(Protocol):
    """A running digest: feed it bytes, read the lowercase hex digest."""

    @property
    def algo(self) -> ChecksumAlgo: ...

    def update(self, data: bytes | bytearray | memoryview) -> None: ...

    def hexdigest(self) -> str: ...


class _HashlibHasher:
    def __init__(self, algo: ChecksumAlgo, hashlib_name: str) -> None:
        self._algo = algo
        self._hash = hashlib.new(hashlib_name)

    @property
    def algo(self) -> ChecksumAlgo:
        return self._algo

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _Adler32Hasher:
    def __init__(self) -> None:
        self._value = zlib.adler32(b"")

    @property
    def algo(self) -> ChecksumAlgo:
        return ChecksumAlgo.ADLER32

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._value = zlib.adler32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


def new_hasher(algo: ChecksumAlgo) -> Hasher:
    """A fresh hasher for ``algo``."""
    if algo.hashlib_name is None:
        return _Adler32Hasher()
    return _HashlibHasher(algo, algo.hashlib_name)


def parse_checksum_text(
    text: str, *, algo: ChecksumAlgo | None = None, source: str | None = None
) -> str:
    """The lowercase hex digest in a checksum document (what a ``kind: url`` URL returns).

    Accepts the digest alone, ``md5sum``-style ``digest  filename`` (or ``digest *filename``),
    and BSD-style ``ALGO (filename) = digest``; only the first non-blank line counts. With
    ``algo``, the digest length is checked too. Raises SourceError naming ``source``.
    """
    where = f"{source}: " if source else ""
    line = next((candidate.strip() for candidate in text.splitlines() if candidate.strip()), "")
    line = line.lstrip("\ufeff")
    bsd = _BSD_LINE.match(line)
    if bsd:
        digest = bsd.group(1)
    else:
        fields = line.split(maxsplit=1)
        digest = fields[0] if fields else ""
        # md5sum prefixes the line with a backslash when it escaped the file name
        digest = digest.removeprefix("\\")
    digest = digest.lower()
    if not digest:
        raise SourceError(f"{where}no checksum found in the text")
    if not _HEX.fullmatch(digest):
        raise SourceError(f"{where}not a hexadecimal checksum: {digest[:140]!r}")
    if algo is not None and len(digest) != algo.hex_length:
        raise SourceError(
            f"{where}a {algo} checksum has {algo.hex_length} hex digits, got {len(digest)}"
        )
    return digest


def verify_digest(hasher: Hasher, expected: str, *, source: str) -> None:
    """Raise ChecksumMismatchError naming ``source`` unless the digest is ``expected``."""
    actual = hasher.hexdigest()
    if actual != expected.strip().lower():
        raise ChecksumMismatchError(
            f"{source}: {hasher.algo} checksum mismatch: expected {expected}, got {actual}",
            hint="the file changed on the server or was corrupted in transit",
        )


def hash_file(
    path: Path, algo: ChecksumAlgo, *, on_progress: ProgressCallback = no_progress
) -> str:
    """The hex digest of a local file (to check a cached or downloaded copy)."""
    hasher = new_hasher(algo)
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            hasher.update(chunk)
            on_progress(len(chunk))
    return hasher.hexdigest()


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class HashingReader:
    """Wraps a readable stream and hashes exactly the bytes that pass through ``read``.

    Meant to sit between a download stream and a consumer (a file copy or a tar extractor),
    so that the digest covers the bytes delivered and nothing else.
    """

    def __init__(self, stream: _Readable, *hashers: Hasher) -> None:
        self._stream = stream
        self._hashers = hashers
        self.bytes_read = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        for hasher in self._hashers:
            hasher.update(data)
        self.bytes_read += len(data)
        return data

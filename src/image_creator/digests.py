"""The checksum algorithms a config may name, with what each one is: the name hashlib knows
it by, and the length of its digest in hex. Importable from every layer."""

from __future__ import annotations

from enum import StrEnum


class ChecksumAlgo(StrEnum):
    SHA1 = "sha-1"
    SHA224 = "sha-224"
    SHA256 = "sha-256"
    SHA384 = "sha-384"
    SHA512 = "sha-512"
    MD5 = "md5"
    ADLER32 = "adler32"

    @property
    def hashlib_name(self) -> str | None:
        """hashlib's name for it; None for adler32 (zlib's)."""
        return None if self is ChecksumAlgo.ADLER32 else self.value.replace("-", "")

    @property
    def hex_length(self) -> int:
        return _HEX_LENGTHS[self]


_HEX_LENGTHS = {
    ChecksumAlgo.SHA1: 40,
    ChecksumAlgo.SHA224: 56,
    ChecksumAlgo.SHA256: 64,
    ChecksumAlgo.SHA384: 96,
    ChecksumAlgo.SHA512: 128,
    ChecksumAlgo.MD5: 32,
    ChecksumAlgo.ADLER32: 8,
}

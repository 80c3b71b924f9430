from __future__ import annotations

import hashlib
import io
import zlib
from pathlib import Path

import pytest

from image_creator.digests import ChecksumAlgo
from image_creator.errors import ChecksumMismatchError, SourceError
from image_creator.fetch.checksums import (
    HashingReader,
    hash_file,
    new_hasher,
    parse_checksum_text,
    verify_digest,
)

PAYLOAD = b"offspot content " * 10_000

EXPECTED = {
    "sha-1": hashlib.sha1(PAYLOAD).hexdigest(),
    "sha-224": hashlib.sha224(PAYLOAD).hexdigest(),
    "sha-256": hashlib.sha256(PAYLOAD).hexdigest(),
    "sha-384": hashlib.sha384(PAYLOAD).hexdigest(),
    "sha-512": hashlib.sha512(PAYLOAD).hexdigest(),
    "md5": hashlib.md5(PAYLOAD).hexdigest(),
    "adler32": f"{zlib.adler32(PAYLOAD):08x}",
}


def test_every_config_algorithm_is_supported() -> None:
    assert {algo.value for algo in ChecksumAlgo} == set(EXPECTED)


@pytest.mark.parametrize("algo", list(ChecksumAlgo))
def test_hasher_matches_reference_when_fed_in_pieces(algo: ChecksumAlgo) -> None:
    hasher = new_hasher(algo)
    for start in range(0, len(PAYLOAD), 7777):
        hasher.update(PAYLOAD[start : start + 7777])
    assert hasher.algo is algo
    assert hasher.hexdigest() == EXPECTED[algo.value]
    assert len(hasher.hexdigest()) == algo.hex_length


def test_adler32_is_eight_lowercase_hex_digits_with_leading_zeros() -> None:
    hasher = new_hasher(ChecksumAlgo.ADLER32)
    assert hasher.hexdigest() == "00000001"  # adler32 of nothing
    hasher.update(b"a")
    assert hasher.hexdigest() == "00620062"


@pytest.mark.parametrize(
    "text",
    [
        "ABCDEF0123456789abcdef0123456789",
        "abcdef0123456789abcdef0123456789\n",
        "  abcdef0123456789abcdef0123456789  wikipedia_fr_test.zim\n",
        "abcdef0123456789abcdef0123456789 *wikipedia_fr_test.zim",
        "abcdef0123456789abcdef0123456789\twikipedia fr test.zim\nsecond line ignored\n",
        "\n\nabcdef0123456789abcdef0123456789  file\r\n",
        "\\abcdef0123456789abcdef0123456789  weird\\\\name",
        "MD5 (wikipedia_fr_test.zim) = abcdef0123456789ABCDEF0123456789",
        "\ufeffabcdef0123456789abcdef0123456789  file",
    ],
)
def test_parse_checksum_text_forms(text: str) -> None:
    assert parse_checksum_text(text, algo=ChecksumAlgo.MD5) == "abcdef0123456789abcdef0123456789"


@pytest.mark.parametrize("text", ["", "   \n\n", "<html>Not Found</html>", "xyz  file"])
def test_parse_checksum_text_rejects_non_digests(text: str) -> None:
    with pytest.raises(SourceError, match=r"^http://h/f\.md5: "):
        parse_checksum_text(text, source="http://h/f.md5")


def test_parse_checksum_text_checks_length_for_algo() -> None:
    with pytest.raises(SourceError, match="sha-256 checksum has 64 hex digits, got 32"):
        parse_checksum_text("abcdef0123456789abcdef0123456789", algo=ChecksumAlgo.SHA256)


def test_verify_digest_accepts_a_match_in_any_case() -> None:
    hasher = new_hasher(ChecksumAlgo.SHA256)
    hasher.update(PAYLOAD)
    verify_digest(hasher, EXPECTED["sha-256"].upper(), source="http://h/f")


def test_verify_digest_mismatch_names_url_expected_and_actual() -> None:
    hasher = new_hasher(ChecksumAlgo.MD5)
    hasher.update(PAYLOAD)
    wrong = "0" * 32
    with pytest.raises(ChecksumMismatchError) as caught:
        verify_digest(hasher, wrong, source="http://example.org/f.zim")
    message = str(caught.value)
    assert "http://example.org/f.zim" in message
    assert wrong in message
    assert EXPECTED["md5"] in message
    assert isinstance(caught.value, SourceError)


def test_hash_file_reports_progress(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    seen: list[int] = []
    assert hash_file(path, ChecksumAlgo.SHA512, on_progress=seen.append) == EXPECTED["sha-512"]
    assert sum(seen) == len(PAYLOAD)


def test_hashing_reader_hashes_exactly_what_is_read() -> None:
    sha, adler = new_hasher(ChecksumAlgo.SHA1), new_hasher(ChecksumAlgo.ADLER32)
    reader = HashingReader(io.BytesIO(PAYLOAD), sha, adler)
    received = bytearray()
    while chunk := reader.read(4096):
        received += chunk
    assert bytes(received) == PAYLOAD
    assert reader.bytes_read == len(PAYLOAD)
    assert sha.hexdigest() == EXPECTED["sha-1"]
    assert adler.hexdigest() == EXPECTED["adler32"]

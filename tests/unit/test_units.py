from __future__ import annotations

from datetime import timedelta

import pytest

from image_creator.units import UnitError, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8G", 8 * 10**9),
        ("8GiB", 8 * 2**30),
        ("8 GB", 8 * 10**9),
        ("2.4GiB", int(2.4 * 2**30)),
        ("512", 512),
        ("0", 0),
        (1024, 1024),
        ("10 bytes", 10),
    ],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12 parsecs", "", "G", "-1", "1e3", True, None, -5, 1.5])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(UnitError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("4w", timedelta(weeks=4)),
        ("1y", timedelta(days=365)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("0", timedelta(0)),
        (90, timedelta(seconds=90)),
    ],
)
def test_durations(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["30 days", "d", "", "1x", False, -3])
def test_bad_durations(text: object) -> None:
    with pytest.raises(UnitError):
        parse_duration(text)

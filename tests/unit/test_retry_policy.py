"""The one retry policy: backoff doubling to its bound, Retry-After read and bounded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests

from image_creator.fetch.retry import RetryPolicy, retry_after

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def now() -> datetime:
    return NOW


def answer(status: int, retry: str | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    if retry is not None:
        response.headers["Retry-After"] = retry
    return response


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Fri, 02 Jan 2026 03:04:35 GMT", 30.0),
        ("Fri, 02 Jan 2026 03:00:00 GMT", 0.0),  # already past: come back now
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after(value, now=now) == seconds


def test_the_backoff_doubles_up_to_its_bound() -> None:
    policy = RetryPolicy(backoff=1.0, max_backoff=5.0)
    assert [policy.delay(failures) for failures in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_and_bounded(status: int) -> None:
    policy = RetryPolicy(backoff=1.0, max_retry_after=60.0)
    assert policy.delay(3, answer(status, "10"), now=now) == 10.0
    assert policy.delay(1, answer(status, "3600"), now=now) == 60.0
    assert policy.delay(1, answer(status, "Sat, 03 Jan 2026 03:04:05 GMT"), now=now) == 60.0
    assert policy.delay(2, answer(status, "later"), now=now) == 2.0  # unreadable: backoff
    assert policy.delay(2, answer(status), now=now) == 2.0


def test_retry_after_is_read_only_where_it_means_come_back_later() -> None:
    policy = RetryPolicy(backoff=1.0)
    assert policy.delay(1, answer(500, "30"), now=now) == 1.0

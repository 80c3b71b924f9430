"""The one retry policy of a run: which failures are tried again, how often, after how long.

A failed attempt (a connection that failed or broke, or a status in RETRYABLE_STATUSES) is
tried again after ``backoff`` seconds, doubled for each following failure up to
``max_backoff``. A server that answers 429 or 503 with ``Retry-After`` (seconds, or an HTTP
date) is waited for as long as it asks, but never longer than ``max_retry_after``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import requests

from image_creator.fetch.responses import parse_date

DEFAULT_RETRIES = 5
DEFAULT_QUICK_RETRIES = 2
DEFAULT_BACKOFF = 1.0  # seconds before the first retry, doubled for each following one
MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 120.0
# the statuses whose Retry-After says when to come back (RFC 9110 section 10.2.3)
_ASKING_TO_WAIT = frozenset({429, 503})

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RetryPolicy:
    """``retries``: failures in a row a download survives (progress resets the count);
    ``quick_retries``: failures a probe or a small document survives (a check answers fast)."""

    retries: int = DEFAULT_RETRIES
    quick_retries: int = DEFAULT_QUICK_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = MAX_BACKOFF
    max_retry_after: float = MAX_RETRY_AFTER

    def delay(
        self, failures: int, response: requests.Response | None = None, *, now: Clock = _now
    ) -> float:
        """Seconds to wait after the ``failures``-th failure in a row, ``response`` its
        answer (when it was a status): what its Retry-After asks, else the backoff."""
        if response is not None and response.status_code in _ASKING_TO_WAIT:
            asked = retry_after(response.headers.get("Retry-After"), now=now)
            if asked is not None:
                return min(asked, self.max_retry_after)
        return float(min(self.backoff * 2 ** (failures - 1), self.max_backoff))


def retry_after(value: str | None, *, now: Clock = _now) -> float | None:
    """Seconds a ``Retry-After`` value asks for (0 for a date already past); None when
    there is none or it is neither a number of seconds nor an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    moment = parse_date(text)
    if moment is None:
        return None
    return max(0.0, (moment - now()).total_seconds())

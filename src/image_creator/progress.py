"""The progress callback every layer may take: called with the bytes just processed
(downloaded, written, extracted). The UI makes them (ui/); the rest only calls them."""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[int], None]


def no_progress(_nbytes: int) -> None:
    """A ProgressCallback that ignores progress."""

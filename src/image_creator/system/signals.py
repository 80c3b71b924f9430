"""Ctrl-C and SIGTERM become exceptions that unwind the build, except while resources are
being released: a signal then waits until the release is done, so a second Ctrl-C (or a CI
timeout's SIGTERM) cannot leave a mount or a loop device behind.

Signal handlers are process-wide, and so is the little state here.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from image_creator.errors import Interrupted

logger = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


@dataclass
class _Shield:
    depth: int = 0
    pending: int | None = None
    published: bool = False  # the image is at OUTPUT: the build succeeded, whatever comes
    told: bool = False  # AfterPublish was raised once already


_shield = _Shield()


class AfterPublish(BaseException):
    """A signal after the image was published. The build is done (exit 0); what was left
    (the image's sha256 for the report, tidying the cache) is cut short."""


def interruption(signum: int) -> BaseException | None:
    """What a signal raises now: an interruption, AfterPublish once the image is published
    (once: a second signal then changes nothing), or None."""
    name = signal.Signals(signum).name
    if _shield.published:
        if _shield.told:
            logger.warning("%s received after the image was published: ignored", name)
            return None
        _shield.told = True
        return AfterPublish(f"{name} received after the image was published")
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Interrupted(f"interrupted by {name}")


def _handle(signum: int, _frame: FrameType | None) -> None:
    if _shield.depth:
        _shield.pending = signum
        logger.warning("%s received: finishing the clean-up first", signal.Signals(signum).name)
        return
    exc = interruption(signum)
    if exc is not None:
        raise exc


def mark_published() -> None:
    """The commit point: from now on a signal no longer fails the run (see AfterPublish)."""
    _shield.published = True


def install() -> Callable[[], None]:
    """Route SIGINT and SIGTERM through here; returns what restores the previous handlers.

    Only the main thread may set handlers; elsewhere (a test runner's thread) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if _shield.depth == 0:  # a new run (tests run several in one process)
        _shield.pending, _shield.published, _shield.told = None, False, False
    previous = {signum: signal.signal(signum, _handle) for signum in HANDLED}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


@contextmanager
def releasing() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while resources are released.

    A signal that came meanwhile is raised at the end, unless an error is already unwinding
    (the build is stopping anyway, and that error is the one to report).
    """
    _shield.depth += 1
    try:
        yield
    finally:
        _shield.depth -= 1
        if _shield.depth == 0 and _shield.pending is not None:
            signum, _shield.pending = _shield.pending, None
            if sys.exc_info()[0] is None:
                exc = interruption(signum)
                if exc is not None:
                    raise exc

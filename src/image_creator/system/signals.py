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
from typing import Any

from image_creator.errors import Interrupted

logger = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


@dataclass
class _Shield:
    depth: int = 0
    pending: int | None = None
    published: bool = False  # the image is at OUTPUT: the build succeeded, whatever comes
    received: int | None = None  # the first signal of the run, even one whose raise was lost
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
    if _shield.received is None:
        _shield.received = signum
    if _shield.depth:
        _shield.pending = signum
        logger.warning("%s received: finishing the clean-up first", signal.Signals(signum).name)
        return
    exc = interruption(signum)
    if exc is not None:
        raise exc


def interrupted() -> bool:
    """Whether a signal asked the run to stop (before the image was published).

    The exception a handler raises can be lost: Python prints and drops one raised inside a
    weakref callback or a finalizer (an import's module lock, a garbage-collected object).
    Whatever waits on the network asks this too (fetch/watch.py), so such a run still stops
    within a moment, as interrupted.
    """
    return _shield.received is not None and not _shield.published


def checkpoint() -> None:
    """Raise the run's interruption if a signal came and its exception was lost."""
    if interrupted() and _shield.received is not None and not _shield.depth:
        exc = interruption(_shield.received)
        if exc is not None:
            raise exc


def interruption_text() -> str | None:
    """The line to print, like "interrupted by SIGTERM", when ``interrupted``; else None."""
    if not interrupted() or _shield.received is None:
        return None
    return f"interrupted by {signal.Signals(_shield.received).name}"


def _unraisable(hook: Callable[[Any], object]) -> Callable[[Any], object]:
    """sys.unraisablehook, quiet about our own interruptions (``interrupted`` remembers them)."""

    def quiet(unraisable: Any) -> object:
        if isinstance(unraisable.exc_value, (KeyboardInterrupt, Interrupted, AfterPublish)):
            logger.debug("a signal's exception was raised where Python drops it")
            return None
        return hook(unraisable)

    return quiet


def mark_published() -> None:
    """The commit point: from now on a signal no longer fails the run (see AfterPublish)."""
    _shield.published = True


def install() -> Callable[[], None]:
    """Route SIGINT and SIGTERM through here; returns what restores the previous handlers.

    Only the main thread may set handlers; elsewhere (a test runner's thread) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    # a new run (tests run several in one process), unless the entry point set them already
    if _shield.depth == 0 and signal.getsignal(signal.SIGTERM) is not _handle:
        _shield.pending, _shield.published, _shield.told = None, False, False
        _shield.received = None
    previous = {signum: signal.signal(signum, _handle) for signum in HANDLED}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(previous_hook)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook

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

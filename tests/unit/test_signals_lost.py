"""A signal whose exception Python drops still stops the run.

Python prints and drops an exception raised inside a weakref callback or a finalizer; a
signal handled there (an import's module lock uses one) raised ours into the void, and the
run went on until a stalled download failed it 30 s later with the wrong exit code. Here the
signal really lands inside a weakref callback.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
import weakref
from collections.abc import Iterator

import pytest

from image_creator.errors import Interrupted
from image_creator.fetch.watch import Cut, Watch
from image_creator.system import signals


class _Thing:
    pass


@pytest.fixture
def handlers() -> Iterator[None]:
    restore = signals.install()
    try:
        yield
    finally:
        restore()


def _signal_inside_a_weakref_callback(unraisable: list[object]) -> None:
    thing = _Thing()

    def callback(_ref: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next bytecode boundaries
            time.sleep(0.001)

    ref = weakref.ref(thing, callback)
    previous = sys.unraisablehook

    def record(info: object) -> None:
        unraisable.append(info)
        previous(info)  # type: ignore[arg-type]

    sys.unraisablehook = record
    try:
        del thing
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert ref() is None


def test_a_dropped_interruption_is_remembered_and_raised_at_the_next_step(
    handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not signals.interrupted()
    unraisable: list[object] = []
    _signal_inside_a_weakref_callback(unraisable)
    # the exception was dropped by Python (it reached the unraisable hook, not us) ...
    assert [type(getattr(u, "exc_value", None)) for u in unraisable] == [Interrupted]
    # ... quietly: no "Exception ignored" traceback on stderr
    assert "Traceback" not in capsys.readouterr().err
    # ... and yet the run knows, and stops at its next step
    assert signals.interrupted()
    assert signals.interruption_text() == "interrupted by SIGTERM"
    with pytest.raises(Interrupted, match="SIGTERM"):
        signals.checkpoint()


def test_a_dropped_interruption_cuts_a_waiting_transfer(handlers: None) -> None:
    _signal_inside_a_weakref_callback([])
    with Watch(deadline=None) as watch:
        assert watch.reason is Cut.CANCELLED


def test_a_new_run_forgets_the_last_ones_signal() -> None:
    restore = signals.install()
    try:
        _signal_inside_a_weakref_callback([])
        assert signals.interrupted()
    finally:
        restore()
    restore = signals.install()
    try:
        assert not signals.interrupted()
        signals.checkpoint()  # nothing to raise
    finally:
        restore()

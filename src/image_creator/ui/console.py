"""The terminal reporter: steps with timings, progress bars on a TTY, plain lines otherwise.

Several files at once (``overall``): on a TTY, a block at the bottom redrawn in place, one
line for them all (bytes, speed, time left) and one per file in progress; a finished file
leaves a line above it. Otherwise one line per finished file and a summary.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

import progressbar

from image_creator.progress import ProgressCallback, no_progress
from image_creator.units import format_size

# how often the block of bars is redrawn, and the span the speed is measured over
_REDRAW = 0.25
_SPEED_WINDOW = 5.0
_MAX_FILE_LINES = 8


@dataclass(eq=False)
class _Live:
    label: str
    total: int | None
    done: int = 0


@dataclass(eq=False)
class _Overall:
    label: str
    total: int | None
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    files: list[_Live] = field(default_factory=list)
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def speed(self, now: float) -> float:
        self.samples.append((now, self.done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= _SPEED_WINDOW:
            self.samples.popleft()
        then, done_then = self.samples[0]
        return (self.done - done_then) / (now - then) if now > then else 0.0

    def lines(self, now: float) -> list[str]:
        speed = self.speed(now)
        head = f"    {self.label} {_share(self.done, self.total)}"
        if speed > 0:
            head += f"  {format_size(int(speed))}/s"
            if self.total and self.total > self.done:
                head += f"  ETA {_clock((self.total - self.done) / speed)}"
        if self.files:
            head += f"  ({len(self.files)} in progress)"
        shown = [f"      {f.label} {_share(f.done, f.total)}" for f in self.files]
        if len(shown) > _MAX_FILE_LINES:
            shown = [*shown[: _MAX_FILE_LINES - 1], f"      ... {len(shown) - 7} more"]
        return [head, *shown]


def _share(done: int, total: int | None) -> str:
    if not total:
        return format_size(done)
    percent = min(100, done * 100 // total)
    return f"{percent:3d}% {format_size(done)} / {format_size(total)}"


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class ConsoleReporter:
    def __init__(self, stream: TextIO | None = None, *, interactive: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()
        self._bar_active = False
        self._overall: _Overall | None = None
        self._drawn = 0  # lines of the block at the bottom of the terminal

    def _print(self, line: str) -> None:
        with self._lock:
            self._erase()
            print(line, file=self.stream, flush=True)
            self._draw()

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self._print(f"==> {title}")
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[title] = time.monotonic() - started

    def info(self, message: str) -> None:
        self._print(f"    {message}")

    def warning(self, message: str) -> None:
        self._print(f"  ! {message}")

    # several bars at once

    @contextmanager
    def overall(self, label: str, total: int | None) -> Iterator[None]:
        with self._lock:
            if self._overall is not None:  # already inside one: its bar counts
                outer = True
            else:
                outer = False
                self._overall = _Overall(label, total)
            overall = self._overall
        if outer:
            yield
            return
        stop = threading.Event()
        redraw = threading.Thread(target=self._redraw, args=(stop,), daemon=True)
        if self.interactive:
            redraw.start()
        try:
            yield
        finally:
            stop.set()
            if redraw.is_alive():
                redraw.join()
            with self._lock:
                self._erase()
                self._overall = None
            seconds = time.monotonic() - overall.started
            rate = f" ({format_size(int(overall.done / seconds))}/s)" if seconds > 0 else ""
            self._print(f"    {label}: {format_size(overall.done)} in {seconds:.1f}s{rate}")

    def _redraw(self, stop: threading.Event) -> None:
        while not stop.wait(_REDRAW):
            with self._lock:
                self._erase()
                self._draw()

    def _erase(self) -> None:
        """Remove the block of bars (lock held)."""
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        """Draw the block of bars at the bottom (lock held, block erased)."""
        overall = self._overall
        if overall is None or not self.interactive:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        lines = [line[:width] for line in overall.lines(time.monotonic())]
        self.stream.write("".join(f"{line}\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    @contextmanager
    def _in_overall(
        self, overall: _Overall, label: str, total: int | None
    ) -> Iterator[ProgressCallback]:
        live = _Live(label, total)
        with self._lock:
            overall.files.append(live)

        def advance(nbytes: int) -> None:
            with self._lock:
                live.done += nbytes
                overall.done += nbytes

        try:
            yield advance
        finally:
            with self._lock:
                overall.files.remove(live)
            self._print(f"    {label}: {format_size(live.done)}")

    # one bar

    @contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[ProgressCallback]:
        with self._lock:
            overall = self._overall
            draw = self.interactive and not self._bar_active and overall is None
            if draw:
                self._bar_active = True
        if overall is not None:
            with self._in_overall(overall, label, total) as counted:
                yield counted
            return
        if not draw:
            done = 0

            def count(nbytes: int) -> None:
                nonlocal done
                done += nbytes

            yield count if not self.interactive else no_progress
            if not self.interactive:
                self._print(f"    {label}: {format_size(done)}")
            return
        bar = progressbar.ProgressBar(
            max_value=total if total else progressbar.UnknownLength,
            prefix=f"    {label} ",
            widgets=_widgets(total),
            fd=self.stream,
        )
        position = 0

        def advance(nbytes: int) -> None:
            nonlocal position
            position += nbytes
            bar.update(min(position, total) if total else position)

        try:
            yield advance
        finally:
            bar.finish(dirty=position < (total or 0))
            with self._lock:
                self._bar_active = False


def _widgets(total: int | None) -> list[object]:
    if total:
        return [
            progressbar.Percentage(),
            " ",
            progressbar.Bar(),
            " ",
            progressbar.DataSize(),
            " ",
            progressbar.FileTransferSpeed(),
            " ",
            progressbar.ETA(),
        ]
    return [progressbar.DataSize(), " ", progressbar.FileTransferSpeed()]

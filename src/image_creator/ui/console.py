"""The terminal reporter: steps with timings, progress bars on a TTY, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import progressbar

from image_creator.config.units import format_size
from image_creator.ui.base import ProgressCallback, no_progress


class ConsoleReporter:
    def __init__(self, stream: TextIO | None = None, *, interactive: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()
        self._bar_active = False

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

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

    @contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[ProgressCallback]:
        with self._lock:
            draw = self.interactive and not self._bar_active
            if draw:
                self._bar_active = True
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

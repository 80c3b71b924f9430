"""The steps of a run as they happen: their durations, and the one running when a failure hit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from image_creator.system import signals
from image_creator.ui.base import Reporter


@dataclass
class Timeline:
    reporter: Reporter
    steps: list[tuple[str, float]] = field(default_factory=list)
    current: str | None = None

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        signals.checkpoint()  # a signal whose exception Python dropped still stops the run here
        self.current = title
        started = time.monotonic()
        with self.reporter.step(title):
            yield
        self.steps.append((title, time.monotonic() - started))
        self.current = None

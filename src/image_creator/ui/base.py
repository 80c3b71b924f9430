"""What the pipeline may ask of a user interface."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from image_creator.progress import ProgressCallback, no_progress


class Reporter(Protocol):
    def step(self, title: str) -> AbstractContextManager[None]:
        """A named step of the pipeline, timed."""
        ...

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...

    def progress(self, label: str, total: int | None) -> AbstractContextManager[ProgressCallback]:
        """A progress bar for long work; yields the callback to advance it by bytes."""
        ...

    def overall(self, label: str, total: int | None) -> AbstractContextManager[None]:
        """One bar over the bars opened meanwhile (several files at once): their bytes in
        all, the speed and the time left."""
        ...


class NullReporter:
    """Shows nothing; used in tests and as a default."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.messages.append(f"step: {title}")
        yield

    def info(self, message: str) -> None:
        self.messages.append(message)

    def warning(self, message: str) -> None:
        self.messages.append(f"warning: {message}")

    @contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[ProgressCallback]:
        yield no_progress

    @contextmanager
    def overall(self, label: str, total: int | None) -> Iterator[None]:
        yield

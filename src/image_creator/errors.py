"""The one error hierarchy. Only ``cli.main`` turns these into messages and exit codes."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    BUILD_FAILED = 1
    HOST_REQUIREMENTS = 2
    INVALID_CONFIG = 3
    INVALID_SOURCES = 4
    INTERRUPTED = 130


class ImageCreatorError(Exception):
    """Base of every error the tool reports to its user (one clear message, maybe a hint)."""

    exit_code: ExitCode = ExitCode.BUILD_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def lines(self) -> list[str]:
        """Lines to show the user, one problem per line."""
        return [self.message]


class ConfigError(ImageCreatorError):
    """The config (or an option) is invalid; carries every problem found, each with its key."""

    exit_code = ExitCode.INVALID_CONFIG

    def __init__(self, problems: Sequence[str], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems), hint=hint)

    def lines(self) -> list[str]:
        return list(self.problems)


class OutputError(ImageCreatorError):
    """OUTPUT cannot be used (exists, is the base image, is too small, ...)."""

    exit_code = ExitCode.INVALID_CONFIG


class HostError(ImageCreatorError):
    """The host lacks something a build needs (root, loop devices, a tool, free space)."""

    exit_code = ExitCode.HOST_REQUIREMENTS


class SourceError(ImageCreatorError):
    """A source (URL, file, registry image, checksum) is unreachable or invalid."""

    exit_code = ExitCode.INVALID_SOURCES

    def __init__(
        self, message: str, *, hint: str | None = None, problems: Sequence[str] = ()
    ) -> None:
        super().__init__(message, hint=hint)
        self.problems = list(problems) or [message]

    def lines(self) -> list[str]:
        return list(self.problems)


class ChecksumMismatchError(SourceError):
    """Downloaded content does not match its declared checksum."""


class BuildError(ImageCreatorError):
    """A build step failed."""


class CommandError(BuildError):
    """A host command failed; keeps its argv, exit code and the tail of what it printed.

    Some tools report on stdout (e2fsck lists its findings there), so both are kept.
    """

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, stdout: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        message = f"command failed (exit {returncode}): {' '.join(self.argv)}"
        tail = tail_lines(stderr) or tail_lines(stdout)
        if tail:
            message += f": {tail}"
        super().__init__(message)


# A message line longer than this is cut: an input can be made to produce any length.
MAX_LINE = 500


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line (line breaks and runs of blanks folded), at most ``limit``
    characters, with non-printable characters escaped."""
    folded = " ".join(text.split())
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in folded)
    return printable if len(printable) <= limit else printable[: limit - 1] + "…"


def tail_lines(text: str, lines: int = 5) -> str:
    """The last non-blank ``lines`` of a command's output, on one line."""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def os_reason(error: Exception) -> str:
    """Why a file operation failed, without the errno and path around it."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


class Interrupted(ImageCreatorError):
    """SIGINT or SIGTERM received."""

    exit_code = ExitCode.INTERRUPTED


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code of a run that ended with ``error``: the one mapping, used everywhere."""
    if isinstance(error, ImageCreatorError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.BUILD_FAILED

"""Reading a YAML document strictly: the walk collects every problem, each with its key path
(``config.yaml: files[3].to: must be inside /data``), and reports them all at once.

The config and the cache policy are both read with it; each says what an unknown key is
(a warning with a suggestion in a config, an error in a policy).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from image_creator.config.units import UnitError, parse_size
from image_creator.errors import one_line

_E = TypeVar("_E", bound=Enum)


def join(path: str, key: object) -> str:
    """``files[0]`` + ``to`` -> ``files[0].to``; the top level has no path."""
    return f"{path}.{key}" if path else str(key)


def describe(value: Any) -> str:
    """What a value is, as an error says it: ``a mapping``, ``a list``, ``'yes please'``."""
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool | int | float | str):
        text = repr(value)
        return text if len(text) <= 40 else f"{text[:37]}..."
    return f"a {type(value).__name__}"


@dataclass
class DocumentReader:
    label: str  # the document's name at the head of every line
    unknown_keys_are_errors: bool = False
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def problem(self, path: str, message: str) -> None:
        self.problems.append(one_line(f"{self.label}: {path or '(top)'}: {message}"))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(one_line(f"{self.label}: {path or '(top)'}: {message}"))

    def check_keys(self, path: str, mapping: Mapping[Any, Any], known: tuple[str, ...]) -> None:
        for key in mapping:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if self.unknown_keys_are_errors:
                self.problem(join(path, key), f"unknown key{hint}")
            else:
                self.warn(join(path, key), f"unknown key, ignored{hint}")

    def mapping(self, path: str, value: Any) -> Mapping[Any, Any] | None:
        if isinstance(value, Mapping):
            return value
        self.problem(path, f"expected a mapping, got {describe(value)}")
        return None

    def items(self, path: str, value: Any) -> list[Any]:
        """A list (absent: empty)."""
        if value is None:
            return []
        if isinstance(value, list):
            return value
        self.problem(path, f"expected a list, got {describe(value)}")
        return []

    def boolean(self, path: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        self.problem(path, f"expected true or false, got {describe(value)}")
        return default

    def size(self, path: str, value: Any) -> int | None:
        try:
            return parse_size(value)
        except UnitError as exc:
            self.problem(path, str(exc))
            return None

    def choice(self, path: str, value: Any, enum: type[_E], what: str = "value") -> _E | None:
        try:
            return enum(str(value).strip().lower())
        except ValueError:
            allowed = ", ".join(str(member.value) for member in enum)
            self.problem(path, f"unknown {what} {value!r}; expected one of: {allowed}")
            return None

"""Reading a YAML document strictly: the walk collects every problem, each with its key path
(``config.yaml: files[3].to: must be inside /data``), and reports them all at once.

``parse_yaml`` turns the text into Python values (no duplicate key, one-line errors with a
line and column). The config and the cache policy are both read with it; each says what an
unknown key is (a warning with a suggestion in a config, an error in a policy).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import yaml

from image_creator.errors import ConfigError, one_line
from image_creator.units import UnitError, parse_size

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


MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping."""


def _construct_mapping_no_duplicates(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    """A mapping whose own keys are distinct and hashable. Merge keys (``<<: *defaults``, as
    compose files use them) are standard YAML: what they bring may be overridden."""
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=deep)
        problem = None
        try:
            if key in seen:
                problem = f"duplicate key {key!r}"
        except TypeError:
            problem = f"a {type(key).__name__} cannot be a key"
        if problem is not None:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, problem, key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping_no_duplicates,
)


def parse_yaml(text: str, label: str) -> Any:
    """The YAML document; a syntax error or duplicate key becomes a one-line ConfigError."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise ConfigError([f"{where}: invalid YAML: {exc.problem}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: invalid YAML: {one_line(str(exc))}"]) from exc
    except RecursionError as exc:
        raise ConfigError([f"{label}: invalid YAML: nested too deeply"]) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors: an int of over 4300 digits, a bad !!timestamp, !!binary...
        raise ConfigError([f"{label}: invalid YAML: {one_line(str(exc))}"]) from exc

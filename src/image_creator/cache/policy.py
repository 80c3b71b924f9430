"""The cache policy (``CACHE_DIR/policy.yaml``): strict YAML -> frozen rules, and what applies
to one source.

Three levels: the main rule, one rule per kind (``files``, ``oci_images``) and, inside a kind,
filters matched by regexp on the source (URL or image reference); the first matching filter
applies. Limits (max_size, max_num, max_age) bind their own scope, and a sub-level may not be
larger than its parent. Settings (check_after, keep_identified_versions, eviction) are
inherited: filter, else kind, else main.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import humanfriendly

from image_creator.cache.entry import EntryKind
from image_creator.config.document import DocumentReader, describe, join, parse_yaml
from image_creator.errors import ConfigError, os_reason
from image_creator.localfile import read_regular, write_atomically
from image_creator.units import UnitError, format_size, parse_duration, parse_size

_T = TypeVar("_T")
_L = TypeVar("_L", int, timedelta)

POLICY_FILENAME = "policy.yaml"
POLICY_LIMIT = 1024 * 1024
DEFAULT_MAX_SIZE = 10 * 2**30  # the main max_size when policy.yaml does not set it

# The spec's default policy, written to CACHE_DIR/policy.yaml when there is none.
DEFAULT_POLICY_YAML = """\
---
enabled: true
max_size: 10GiB
eviction: lru
oci_images:
  enabled: true
  eviction: lru
files:
  enabled: true
  eviction: lru
"""


class EvictionStrategy(StrEnum):
    """Which entries go first when a scope is over its count or size."""

    OLDEST = "oldest"  # smallest added first
    NEWEST = "newest"  # largest added first
    LARGEST = "largest"
    SMALLEST = "smallest"
    LRU = "lru"  # smallest last_used first


@dataclass(frozen=True)
class Rule:
    """One level's settings. ``None`` is "not set here"; a 0 limit in YAML is stored as None
    (no limit at this level), while ``keep_identified_versions: 0`` stays 0 ("keep all",
    overriding a parent) and ``check_after: 0`` stays 0 ("check on every use")."""

    enabled: bool = True  # filters have no enabled key: theirs is always True (see ignore)
    max_size: int | None = None
    max_age: timedelta | None = None
    max_num: int | None = None
    check_after: timedelta | None = None
    keep_identified_versions: int | None = None
    eviction: EvictionStrategy | None = None


@dataclass(frozen=True)
class Filter:
    pattern: re.Pattern[str]  # searched (not anchored) in the source: use ^ to anchor
    ignore: bool = False
    rule: Rule = field(default_factory=Rule)

    def matches(self, source: str) -> bool:
        return self.pattern.search(source) is not None


@dataclass(frozen=True)
class KindPolicy:
    rule: Rule = field(default_factory=Rule)
    filters: tuple[Filter, ...] = ()

    def match(self, source: str) -> int | None:
        """Index of the first filter matching source, if any."""
        for index, item in enumerate(self.filters):
            if item.matches(source):
                return index
        return None


@dataclass(frozen=True)
class ResolvedRule:
    """What the policy says about one source."""

    kind: EntryKind
    cacheable: bool  # False: main or kind disabled, or the matching filter ignores it
    filter_index: int | None  # the first matching filter of the kind, None: the kind itself
    check_after: timedelta  # do not re-check the remote before this; 0: check on every use
    max_age: timedelta | None  # the tightest age limit among filter, kind and main
    max_size: int | None  # the tightest size limit of its scopes: bigger cannot be kept
    keep_identified_versions: int | None  # None: keep every version
    eviction: EvictionStrategy  # the strategy of its innermost scope
    reason: str = ""  # why it is not cacheable, for logs

    @property
    def scope(self) -> str:
        """Key path of the innermost scope: ``files.filters[1]`` or ``files``."""
        return scope_path(self.kind, self.filter_index)


def scope_path(kind: EntryKind | None, filter_index: int | None = None) -> str:
    if kind is None:
        return "main"
    if filter_index is None:
        return kind.value
    return f"{kind.value}.filters[{filter_index}]"


@dataclass(frozen=True)
class Policy:
    main: Rule = field(default_factory=lambda: Rule(max_size=DEFAULT_MAX_SIZE))
    files: KindPolicy = field(default_factory=KindPolicy)
    oci_images: KindPolicy = field(default_factory=KindPolicy)

    def kind(self, kind: EntryKind) -> KindPolicy:
        return self.files if kind is EntryKind.FILES else self.oci_images

    def eviction_for(
        self, kind: EntryKind | None, filter_index: int | None = None
    ) -> EvictionStrategy:
        """The eviction strategy of a scope (main when kind is None)."""
        rules = [self.main]
        if kind is not None:
            kind_policy = self.kind(kind)
            rules.insert(0, kind_policy.rule)
            if filter_index is not None:
                rules.insert(0, kind_policy.filters[filter_index].rule)
        return _first([rule.eviction for rule in rules]) or EvictionStrategy.LRU

    def rule_for(self, kind: EntryKind, source: str) -> ResolvedRule:
        kind_policy = self.kind(kind)
        index = kind_policy.match(source)
        matched = kind_policy.filters[index] if index is not None else None
        rules = [kind_policy.rule, self.main]
        if matched is not None:
            rules.insert(0, matched.rule)
        reason = ""
        if not self.main.enabled:
            reason = "the cache is disabled (enabled: false)"
        elif not kind_policy.rule.enabled:
            reason = f"{kind.value} caching is disabled ({kind.value}.enabled: false)"
        elif matched is not None and matched.ignore:
            reason = f"ignored by {scope_path(kind, index)} ({matched.pattern.pattern})"
        keep = _first([rule.keep_identified_versions for rule in rules])
        return ResolvedRule(
            kind=kind,
            cacheable=not reason,
            filter_index=index,
            check_after=_first([rule.check_after for rule in rules]) or timedelta(0),
            max_age=_smallest([rule.max_age for rule in rules]),
            max_size=_smallest([rule.max_size for rule in rules]),
            keep_identified_versions=keep or None,
            eviction=self.eviction_for(kind, index),
            reason=reason,
        )


def _first(values: list[_T | None]) -> _T | None:
    for value in values:
        if value is not None:
            return value
    return None


def _smallest(values: list[_L | None]) -> _L | None:
    limits = [value for value in values if value is not None]
    return min(limits) if limits else None


# --- loading -------------------------------------------------------------------------------

_LIMIT_KEYS = ("max_size", "max_age", "max_num")
_RULE_KEYS = (*_LIMIT_KEYS, "check_after", "keep_identified_versions", "eviction")
_MAIN_KEYS = ("enabled", *_RULE_KEYS, "oci_images", "files")
_KIND_KEYS = ("enabled", *_RULE_KEYS, "filters")
_FILTER_KEYS = ("pattern", "ignore", *_RULE_KEYS)


@dataclass
class _Reader(DocumentReader):
    """Walks the policy; an unknown key is an error (a misspelt limit would be ignored)."""

    unknown_keys_are_errors: bool = True

    def mapping(self, path: str, value: Any) -> Mapping[Any, Any] | None:
        return {} if value is None else super().mapping(path, value)

    def rule(self, path: str, mapping: Mapping[Any, Any], *, enabled: bool = True) -> Rule:
        return Rule(
            enabled=enabled,
            max_size=self._limit_size(join(path, "max_size"), mapping.get("max_size")),
            max_age=self._limit_age(join(path, "max_age"), mapping.get("max_age")),
            max_num=self._count(join(path, "max_num"), mapping.get("max_num")) or None,
            check_after=self._duration(join(path, "check_after"), mapping.get("check_after")),
            keep_identified_versions=self._count(
                join(path, "keep_identified_versions"), mapping.get("keep_identified_versions")
            ),
            eviction=self._eviction(join(path, "eviction"), mapping.get("eviction")),
        )

    def _limit_size(self, path: str, value: Any) -> int | None:
        if value is None:
            return None
        try:
            return parse_size(value) or None
        except UnitError as exc:
            self.problem(path, str(exc))
            return None

    def _duration(self, path: str, value: Any) -> timedelta | None:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except UnitError as exc:
            self.problem(path, str(exc))
            return None

    def _limit_age(self, path: str, value: Any) -> timedelta | None:
        return self._duration(path, value) or None

    def _count(self, path: str, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        self.problem(path, f"expected a whole number (0 or more), got {describe(value)}")
        return None

    def _eviction(self, path: str, value: Any) -> EvictionStrategy | None:
        if value is None:
            return None
        return self.choice(path, value, EvictionStrategy, "eviction strategy")

    def pattern(self, path: str, value: Any) -> re.Pattern[str] | None:
        if value is None:
            self.problem(path, "required: a filter needs a pattern (a regexp)")
            return None
        if not isinstance(value, str) or not value:
            self.problem(path, f"expected a regexp, got {describe(value)}")
            return None
        try:
            return re.compile(value)
        except re.error as exc:
            self.problem(path, f"invalid regexp {value!r}: {exc}")
            return None

    def bound(self, path: str, rule: Rule, parents: list[tuple[str, Rule]]) -> None:
        """Each limit of rule must fit within the nearest parent level that sets it."""
        for key in _LIMIT_KEYS:
            value = getattr(rule, key)
            if value is None:
                continue
            for parent_path, parent in parents:
                limit = getattr(parent, key)
                if limit is None:
                    continue
                if value > limit:
                    self.problem(
                        join(path, key),
                        f"{_show(key, value)} is larger than {join(parent_path, key)} "
                        f"({_show(key, limit)}): sub-levels are bound by upper level",
                    )
                break


def _show(key: str, value: int | timedelta) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    return format_size(value) if key == "max_size" else str(value)


def format_duration(value: timedelta) -> str:
    """Human duration, e.g. ``4 weeks and 2 days``."""
    return str(humanfriendly.format_timespan(value.total_seconds()))


def _read_kind(reader: _Reader, path: str, value: Any, main: Rule) -> KindPolicy:
    mapping = reader.mapping(path, value)
    if mapping is None:
        return KindPolicy()
    reader.check_keys(path, mapping, _KIND_KEYS)
    enabled = reader.boolean(join(path, "enabled"), mapping.get("enabled"), True)
    rule = reader.rule(path, mapping, enabled=enabled)
    reader.bound(path, rule, [("", main)])
    filters: list[Filter] = []
    for index, item in enumerate(reader.items(join(path, "filters"), mapping.get("filters"))):
        item_path = f"{path}.filters[{index}]"
        item_mapping = reader.mapping(item_path, item)
        if item_mapping is None:
            continue
        reader.check_keys(item_path, item_mapping, _FILTER_KEYS)
        pattern = reader.pattern(join(item_path, "pattern"), item_mapping.get("pattern"))
        ignore = reader.boolean(join(item_path, "ignore"), item_mapping.get("ignore"), False)
        filter_rule = reader.rule(item_path, item_mapping)
        reader.bound(item_path, filter_rule, [(path, rule), ("", main)])
        if pattern is not None:
            filters.append(Filter(pattern=pattern, ignore=ignore, rule=filter_rule))
    return KindPolicy(rule=rule, filters=tuple(filters))


def parse_policy(document: Any, *, label: str = POLICY_FILENAME) -> Policy:
    """A Policy from a parsed YAML document (None: all defaults), or a ConfigError listing
    every problem, each with its key path."""
    reader = _Reader(label=label)
    mapping = reader.mapping("", document)
    if mapping is None:
        raise ConfigError(reader.problems)
    reader.check_keys("", mapping, _MAIN_KEYS)
    main = reader.rule("", mapping, enabled=reader.boolean("enabled", mapping.get("enabled"), True))
    if "max_size" not in mapping:
        main = replace(main, max_size=DEFAULT_MAX_SIZE)
    policy = Policy(
        main=main,
        oci_images=_read_kind(reader, "oci_images", mapping.get("oci_images"), main),
        files=_read_kind(reader, "files", mapping.get("files"), main),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return policy


def parse_policy_text(text: str, *, label: str = POLICY_FILENAME) -> Policy:
    return parse_policy(parse_yaml(text, label), label=label)


def default_policy() -> Policy:
    return parse_policy_text(DEFAULT_POLICY_YAML)


def load_policy(cache_dir: Path, *, write_default: bool = True) -> Policy:
    """CACHE_DIR/policy.yaml, written with the default policy first when it does not exist
    (or, without ``write_default``, the default policy, writing nothing)."""
    path = cache_dir / POLICY_FILENAME
    label = str(path)
    exists = os.path.lexists(path)
    if not exists and not write_default:
        return default_policy()
    if not exists:
        try:
            _write_default(path)
        except OSError as exc:
            raise ConfigError(
                [f"{label}: cannot write the default cache policy: {os_reason(exc)}"]
            ) from exc
    try:
        # never followed: a link in the cache folder could aim at any host file
        text = read_regular(path, POLICY_LIMIT, follow_links=False).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{label}: cannot read the cache policy: {os_reason(exc)}"]) from exc
    return parse_policy_text(text, label=label)


def _write_default(path: Path) -> None:
    """A concurrent reader sees no policy or the whole default one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, DEFAULT_POLICY_YAML.encode("utf-8"))  # 0644: meant to be edited

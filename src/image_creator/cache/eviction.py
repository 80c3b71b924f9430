"""Which cache entries to remove, decided from the policy alone: a pure function of the
entries, the policy, the clock and what this build is about to add or is using.

Reasons are looked for in this order, and an entry is evicted once, with the first found:
outdated (an incoming download replaces it), too old, ignored, older version, then over count
and over size, scope by scope: every filter scope, then each kind, then the whole cache. A
filter scope holds the entries whose first matching filter is that filter.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from image_creator.cache.entry import CacheEntry, EntryKind
from image_creator.cache.policy import (
    EvictionStrategy,
    Policy,
    ResolvedRule,
    Rule,
    format_duration,
    scope_path,
)
from image_creator.units import format_size

# wikipedia_fr_all_maxi_2024-05.zim: same ZIM, another period
_ZIM_PERIOD = re.compile(r"^(?P<stem>.+)_(?P<period>\d{4}-\d{2})(?P<suffix>\.zim(?:[?#].*)?)$")


class EvictionReason(StrEnum):
    OUTDATED = "outdated"  # an incoming entry with the same key replaces it
    TOO_OLD = "too old"  # added longer ago than max_age
    IGNORED = "ignored pattern"  # an ignore filter matches it, or its kind or the cache is off
    OLDER_VERSION = "older version"  # beyond keep_identified_versions
    OVER_COUNT = "over count"  # its scope holds more than max_num entries
    OVER_SIZE = "over size"  # its scope is larger than max_size


@dataclass(frozen=True)
class Incoming:
    """An entry this build is about to add: counts toward its scopes, never evicted."""

    kind: EntryKind
    source: str
    key: str
    size: int


@dataclass(frozen=True)
class Eviction:
    entry: CacheEntry
    reason: EvictionReason
    detail: str = ""  # the limit or filter behind the reason, for people


@dataclass
class _Member:
    """An existing entry or an incoming one, as the scopes see it."""

    kind: EntryKind
    source: str
    key: str
    size: int
    added: datetime
    last_used: datetime
    rule: ResolvedRule
    entry: CacheEntry | None  # None: incoming
    evictable: bool


def plan_evictions(
    entries: Sequence[CacheEntry],
    policy: Policy,
    *,
    now: datetime,
    incoming: Sequence[Incoming] = (),
    protected: Collection[str] = (),
) -> list[Eviction]:
    """The entries to evict, in the order they were decided.

    ``incoming`` entries count toward counts and sizes (uncacheable ones are left out: they
    will not be stored) and are never evicted; an existing entry with the key of an incoming
    one is evicted as outdated. ``protected`` keys (in use by this build) are never evicted,
    except as outdated, but count. Limits that protected and incoming entries alone exceed
    are met as far as the other entries allow.
    """
    incoming_keys = {item.key for item in incoming}
    protected_keys = set(protected)
    evicted: dict[int, Eviction] = {}  # by id() of the CacheEntry

    members = [
        _Member(
            kind=entry.kind,
            source=entry.source,
            key=entry.key,
            size=entry.size,
            added=entry.added,
            last_used=entry.last_used,
            rule=policy.rule_for(entry.kind, entry.source),
            entry=entry,
            evictable=entry.key not in protected_keys,
        )
        for entry in entries
    ]
    for item in incoming:
        rule = policy.rule_for(item.kind, item.source)
        if rule.cacheable:
            members.append(
                _Member(
                    kind=item.kind,
                    source=item.source,
                    key=item.key,
                    size=item.size,
                    added=now,
                    last_used=now,
                    rule=rule,
                    entry=None,
                    evictable=False,
                )
            )

    def evict(member: _Member, reason: EvictionReason, detail: str) -> None:
        assert member.entry is not None
        evicted[id(member.entry)] = Eviction(member.entry, reason, detail)

    def alive() -> list[_Member]:
        return [m for m in members if m.entry is None or id(m.entry) not in evicted]

    for member in members:
        if member.entry is not None and member.key in incoming_keys:
            evict(member, EvictionReason.OUTDATED, "replaced by a new download")

    for member in alive():
        max_age = member.rule.max_age
        if member.evictable and max_age is not None and now - member.added > max_age:
            evict(member, EvictionReason.TOO_OLD, f"max_age {format_duration(max_age)}")

    for member in alive():
        if member.evictable and not member.rule.cacheable:
            evict(member, EvictionReason.IGNORED, member.rule.reason)

    for member, newest in _older_versions(alive()):
        if member.evictable:
            keep = member.rule.keep_identified_versions
            evict(member, EvictionReason.OLDER_VERSION, f"keeps {keep}, newest: {newest.source}")

    for kind, filter_index, limits in _scopes(policy):
        scope = [m for m in alive() if _in_scope(m, kind, filter_index)]
        victims = _victim_order(
            [m for m in scope if m.evictable], policy.eviction_for(kind, filter_index)
        )
        where = "" if kind is None else f"{scope_path(kind, filter_index)}."
        if limits.max_num is not None:
            excess = max(len(scope) - limits.max_num, 0)
            for member in victims[:excess]:
                evict(member, EvictionReason.OVER_COUNT, f"{where}max_num {limits.max_num}")
            victims = victims[excess:]
            scope = [m for m in scope if m.entry is None or id(m.entry) not in evicted]
        if limits.max_size is not None:
            total = sum(m.size for m in scope)
            for member in victims:
                if total <= limits.max_size:
                    break
                size_limit = format_size(limits.max_size)
                evict(member, EvictionReason.OVER_SIZE, f"{where}max_size {size_limit}")
                total -= member.size

    return list(evicted.values())


def describe(eviction: Eviction) -> str:
    """One line for --show-cache: kind, source, size, reason (and the limit behind it)."""
    entry = eviction.entry
    detail = f" ({eviction.detail})" if eviction.detail else ""
    return (
        f"{entry.kind.value} {entry.source} [{format_size(entry.size)}]: "
        f"{eviction.reason.value}{detail}"
    )


def _scopes(policy: Policy) -> Iterable[tuple[EntryKind | None, int | None, Rule]]:
    """Every scope with its own limits: filters, then kinds, then main (kind None)."""
    kinds = (EntryKind.FILES, EntryKind.OCI_IMAGES)
    for kind in kinds:
        for index, item in enumerate(policy.kind(kind).filters):
            yield kind, index, item.rule
    for kind in kinds:
        yield kind, None, policy.kind(kind).rule
    yield None, None, policy.main


def _in_scope(member: _Member, kind: EntryKind | None, filter_index: int | None) -> bool:
    if kind is None:
        return True
    if member.kind is not kind:
        return False
    return filter_index is None or member.rule.filter_index == filter_index


def _victim_order(members: list[_Member], strategy: EvictionStrategy) -> list[_Member]:
    """Members in the order the strategy gives them up; the key breaks ties."""
    if strategy is EvictionStrategy.OLDEST:
        return sorted(members, key=lambda m: (m.added, m.key))
    if strategy is EvictionStrategy.NEWEST:
        return sorted(members, key=lambda m: (m.added, m.key), reverse=True)
    if strategy is EvictionStrategy.LARGEST:
        return sorted(members, key=lambda m: (-m.size, m.key))
    if strategy is EvictionStrategy.SMALLEST:
        return sorted(members, key=lambda m: (m.size, m.key))
    return sorted(members, key=lambda m: (m.last_used, m.added, m.key))


def version_group(kind: EntryKind, source: str, key: str) -> tuple[str, str] | None:
    """What identifies "the same thing in another version", and the version's sort text.

    OCI images: the reference without its tag (or digest), per platform; ordered by added,
    so the text is empty. ZIM files: the URL without its ``_YYYY-MM`` period, ordered by
    period. Other files have no identified version.
    """
    if kind is EntryKind.OCI_IMAGES:
        name = source.split("@", 1)[0]
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name = name[:colon]
        platform = key.partition("|")[2]
        return f"{name}|{platform}", ""
    match = _ZIM_PERIOD.match(source)
    if match is None:
        return None
    return match["stem"] + match["suffix"], match["period"]


def _older_versions(members: list[_Member]) -> Iterable[tuple[_Member, _Member]]:
    """Members with at least keep_identified_versions newer versions, with the newest one."""
    groups: dict[tuple[EntryKind, str], list[tuple[str, _Member]]] = defaultdict(list)
    for member in members:
        identity = version_group(member.kind, member.source, member.key)
        if identity is not None:
            group, version = identity
            groups[(member.kind, group)].append((version, member))
    for group_members in groups.values():
        ordered = [
            member
            for _, member in sorted(
                group_members, key=lambda pair: (pair[0], pair[1].added, pair[1].key), reverse=True
            )
        ]
        for position, member in enumerate(ordered):
            keep = member.rule.keep_identified_versions
            if keep is not None and position >= keep:
                yield member, ordered[0]

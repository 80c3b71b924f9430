"""plan_evictions with an injected clock and hand-built entries: exactly which entries remain."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from image_creator.cache.entry import CacheEntry, EntryKind
from image_creator.cache.eviction import (
    Eviction,
    EvictionReason,
    Incoming,
    describe,
    plan_evictions,
    version_group,
)
from image_creator.cache.policy import Policy, parse_policy_text
from tests.unit.test_cache_policy import PRODUCTION

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
FILES = EntryKind.FILES
OCI = EntryKind.OCI_IMAGES
GiB = 2**30


def make_entry(
    source: str,
    *,
    kind: EntryKind = FILES,
    size: int = 1,
    added: int = 10,
    used: int | None = None,
    platform: str = "linux/arm64",
) -> CacheEntry:
    """An entry added ``added`` days before NOW and last used ``used`` days before NOW."""
    added_at = NOW - timedelta(days=added)
    return CacheEntry(
        kind=kind,
        source=source,
        key=source if kind is FILES else f"{source}|{platform}",
        entry_id=f"id-{abs(hash((source, platform)))}",
        size=size,
        added=added_at,
        last_used=NOW - timedelta(days=added if used is None else used),
        use_count=1,
        version="etag",
        checked=added_at,
        xxh3="0" * 32,
    )


def plan(
    entries: Sequence[CacheEntry],
    policy: Policy | str,
    *,
    incoming: Sequence[Incoming] = (),
    protected: Collection[str] = (),
) -> list[Eviction]:
    if isinstance(policy, str):
        policy = parse_policy_text(policy)
    return plan_evictions(entries, policy, now=NOW, incoming=incoming, protected=protected)


def remaining(entries: Sequence[CacheEntry], evictions: Sequence[Eviction]) -> list[str]:
    gone = {id(eviction.entry) for eviction in evictions}
    return [entry.source for entry in entries if id(entry) not in gone]


def reasons(evictions: Sequence[Eviction]) -> dict[str, EvictionReason]:
    return {eviction.entry.source: eviction.reason for eviction in evictions}


# --- strategies ----------------------------------------------------------------------------

# a: oldest added, used recently; b: newest added; c: largest; d: smallest, least recently used
STRATEGY_ENTRIES = [
    make_entry("https://x/a", added=40, used=1, size=20),
    make_entry("https://x/b", added=2, used=2, size=30),
    make_entry("https://x/c", added=20, used=3, size=50),
    make_entry("https://x/d", added=30, used=25, size=10),
]


@pytest.mark.parametrize(
    ("strategy", "evicted"),
    [
        ("oldest", "https://x/a"),
        ("newest", "https://x/b"),
        ("largest", "https://x/c"),
        ("smallest", "https://x/d"),
        ("lru", "https://x/d"),
    ],
)
def test_each_strategy_picks_its_victim_for_count(strategy: str, evicted: str) -> None:
    evictions = plan(STRATEGY_ENTRIES, f"max_num: 3\neviction: {strategy}\n")
    assert [(e.entry.source, e.reason) for e in evictions] == [(evicted, EvictionReason.OVER_COUNT)]
    assert evictions[0].detail == "max_num 3"


@pytest.mark.parametrize(
    ("strategy", "kept"),
    [
        # total 110 bytes, limit 60: evict in the strategy's order until within it
        ("oldest", ["https://x/b"]),  # a (20), d (10), c (50) go
        ("newest", ["https://x/a", "https://x/d"]),  # b (30), c (50) go
        ("largest", ["https://x/a", "https://x/b", "https://x/d"]),  # c (50) goes: 60 left
        ("smallest", ["https://x/c"]),  # d, a, b go: 50 left
        ("lru", ["https://x/a", "https://x/b"]),  # d (25d), c (3d) go
    ],
)
def test_each_strategy_picks_its_victims_for_size(strategy: str, kept: list[str]) -> None:
    evictions = plan(STRATEGY_ENTRIES, f"max_size: 60\neviction: {strategy}\n")
    assert remaining(STRATEGY_ENTRIES, evictions) == kept
    assert {e.reason for e in evictions} == {EvictionReason.OVER_SIZE}
    assert evictions[0].detail == "max_size 60 bytes"


def test_within_limits_nothing_is_evicted() -> None:
    assert plan(STRATEGY_ENTRIES, "max_size: 110\nmax_num: 4\nmax_age: 40d\n") == []


# --- limits --------------------------------------------------------------------------------


def test_max_age_counts_from_added_not_from_last_use() -> None:
    entries = [
        make_entry("https://x/recent", added=29, used=29),
        make_entry("https://x/old-but-used", added=31, used=0),
        make_entry("https://x/exactly", added=30),
    ]
    evictions = plan(entries, "max_age: 30d\n")
    assert remaining(entries, evictions) == ["https://x/recent", "https://x/exactly"]
    assert evictions[0].reason is EvictionReason.TOO_OLD
    assert evictions[0].detail == "max_age 4 weeks and 2 days"


def test_max_age_of_a_filter_applies_to_its_entries_only() -> None:
    policy = """\
files:
  filters:
    - pattern: /nightly/
      max_age: 7d
oci_images:
  max_age: 3d
"""
    entries = [
        make_entry("https://x/nightly/a.zim", added=8),
        make_entry("https://x/nightly/b.zim", added=6),
        make_entry("https://x/release/c.zim", added=300),
        make_entry("alpine:3", kind=OCI, added=4),
        make_entry("caddy:2", kind=OCI, added=2),
    ]
    evictions = plan(entries, policy)
    assert remaining(entries, evictions) == [
        "https://x/nightly/b.zim",
        "https://x/release/c.zim",
        "caddy:2",
    ]
    assert set(reasons(evictions).values()) == {EvictionReason.TOO_OLD}


def test_filter_kind_and_main_scopes_each_hold_their_limit() -> None:
    policy = """\
max_num: 5
eviction: oldest
files:
  max_size: 100
  eviction: largest
  filters:
    - pattern: ^https://kiwix/
      max_num: 2
      eviction: lru
    - pattern: ^https://drive/
      max_size: 30
oci_images:
  max_num: 2
"""
    entries = [
        # kiwix filter: 3 entries, max 2, lru -> k1 (used 9 days ago) goes
        make_entry("https://kiwix/k1", size=10, added=50, used=9),
        make_entry("https://kiwix/k2", size=10, added=60, used=1),
        make_entry("https://kiwix/k3", size=10, added=70, used=2),
        # drive filter: 40 bytes, max 30 with files' strategy (largest) -> d2 goes
        make_entry("https://drive/d1", size=15, added=5),
        make_entry("https://drive/d2", size=25, added=6),
        # outside filters, in the files scope: 20 + 20 + 60 + kept kiwix/drive = 135 > 100
        make_entry("https://other/o1", size=20, added=4),
        make_entry("https://other/o2", size=60, added=3),
        # images: 3, kind max 2, main's oldest -> i1 goes
        make_entry("i1:1", kind=OCI, size=1, added=90),
        make_entry("i2:1", kind=OCI, size=1, added=80),
        make_entry("i3:1", kind=OCI, size=1, added=1),
    ]
    evictions = plan(entries, policy)
    assert [(e.entry.source, e.reason, e.detail) for e in evictions] == [
        ("https://kiwix/k1", EvictionReason.OVER_COUNT, "files.filters[0].max_num 2"),
        ("https://drive/d2", EvictionReason.OVER_SIZE, "files.filters[1].max_size 30 bytes"),
        # files: 20+20+15+60 = 115 > 100, largest first -> o2
        ("https://other/o2", EvictionReason.OVER_SIZE, "files.max_size 100 bytes"),
        ("i1:1", EvictionReason.OVER_COUNT, "oci_images.max_num 2"),
        # main: k2, k3, d1, o1, i2, i3 = 6 > 5, oldest first across kinds -> i2 (80 days)
        ("i2:1", EvictionReason.OVER_COUNT, "max_num 5"),
    ]
    assert remaining(entries, evictions) == [
        "https://kiwix/k2",
        "https://kiwix/k3",
        "https://drive/d1",
        "https://other/o1",
        "i3:1",
    ]


# --- ignore and disabled -------------------------------------------------------------------


def test_ignored_pattern_and_disabled_kind_are_evicted() -> None:
    policy = """\
oci_images:
  enabled: false
files:
  filters:
    - pattern: \\.tmp$
      ignore: true
"""
    entries = [
        make_entry("https://x/a.zim"),
        make_entry("https://x/b.tmp"),
        make_entry("alpine:3", kind=OCI),
    ]
    evictions = plan(entries, policy)
    assert remaining(entries, evictions) == ["https://x/a.zim"]
    assert reasons(evictions) == {
        "https://x/b.tmp": EvictionReason.IGNORED,
        "alpine:3": EvictionReason.IGNORED,
    }
    details = {e.entry.source: e.detail for e in evictions}
    assert details["https://x/b.tmp"] == "ignored by files.filters[0] (\\.tmp$)"
    assert "oci_images.enabled: false" in details["alpine:3"]


def test_disabled_cache_evicts_everything_but_what_the_build_uses() -> None:
    entries = [make_entry("https://x/a"), make_entry("alpine:3", kind=OCI)]
    evictions = plan(entries, "enabled: false\n", protected={"https://x/a"})
    assert remaining(entries, evictions) == ["https://x/a"]
    assert reasons(evictions) == {"alpine:3": EvictionReason.IGNORED}


# --- identified versions -------------------------------------------------------------------


def test_keep_identified_versions_for_images_by_added() -> None:
    entries = [
        make_entry("ghcr.io/offspot/kiwix-serve:3.5", kind=OCI, added=30),
        make_entry("ghcr.io/offspot/kiwix-serve:3.7", kind=OCI, added=5),
        make_entry("ghcr.io/offspot/kiwix-serve:dev", kind=OCI, added=10),
        make_entry("ghcr.io/offspot/kiwix-serve:3.5", kind=OCI, added=30, platform="linux/arm"),
        make_entry("localhost:5000/offspot/base:1", kind=OCI, added=9),
        make_entry("localhost:5000/offspot/base:2", kind=OCI, added=8),
        make_entry("ghcr.io/offspot/other:1", kind=OCI, added=50),
    ]
    evictions = plan(entries, "oci_images:\n  keep_identified_versions: 2\n")
    assert [(e.entry.key, e.reason) for e in evictions] == [
        ("ghcr.io/offspot/kiwix-serve:3.5|linux/arm64", EvictionReason.OLDER_VERSION)
    ]
    assert evictions[0].detail == "keeps 2, newest: ghcr.io/offspot/kiwix-serve:3.7"

    evictions = plan(entries, "keep_identified_versions: 1\n")
    assert sorted(e.entry.key for e in evictions) == [
        "ghcr.io/offspot/kiwix-serve:3.5|linux/arm64",
        "ghcr.io/offspot/kiwix-serve:dev|linux/arm64",
        "localhost:5000/offspot/base:1|linux/arm64",
    ]


def test_keep_identified_versions_for_zims_by_period() -> None:
    zim = "https://download.kiwix.org/zim/wikipedia/wikipedia_fr_all_maxi_{}.zim"
    entries = [
        make_entry(zim.format("2024-01"), added=100),
        make_entry(zim.format("2023-06"), added=1),  # the newest download, an older period
        make_entry(zim.format("2024-05"), added=40),
        make_entry("https://download.kiwix.org/zim/wikipedia/wikipedia_en_all_maxi_2023-01.zim"),
        make_entry("https://drive.offspot.it/base/offspot-base-1.0.0_2024-01.img"),
        make_entry("https://drive.offspot.it/base/other-2024-01.zim"),
    ]
    evictions = plan(entries, "files:\n  keep_identified_versions: 2\n")
    assert [(e.entry.source, e.reason) for e in evictions] == [
        (zim.format("2023-06"), EvictionReason.OLDER_VERSION)
    ]


def test_keep_identified_versions_of_a_filter_overrides_the_kind() -> None:
    zim = "https://kiwix/zim/test_{}.zim"
    policy = """\
keep_identified_versions: 1
files:
  filters:
    - pattern: ^https://kiwix/
      keep_identified_versions: 0
"""
    entries = [make_entry(zim.format("2024-01")), make_entry(zim.format("2024-02"))]
    assert plan(entries, policy) == []
    other = [make_entry("https://y/test_2024-01.zim"), make_entry("https://y/test_2024-02.zim")]
    assert remaining(other, plan(other, policy)) == ["https://y/test_2024-02.zim"]


@pytest.mark.parametrize(
    ("kind", "source", "key", "group"),
    [
        (OCI, "ghcr.io/offspot/kiwix-serve:3.7", "k|linux/arm64", "ghcr.io/offspot/kiwix-serve"),
        (OCI, "alpine", "alpine|linux/arm64", "alpine"),
        (OCI, "localhost:5000/a/b", "k|linux/arm64", "localhost:5000/a/b"),
        (OCI, "a/b@sha256:abcd", "k|linux/arm64", "a/b"),
        (FILES, "https://k/zim/w_fr_all_2024-05.zim", "", "https://k/zim/w_fr_all.zim"),
    ],
)
def test_version_groups(kind: EntryKind, source: str, key: str, group: str) -> None:
    identity = version_group(kind, source, key)
    assert identity is not None
    assert identity[0].partition("|")[0] == group


def test_files_without_a_period_have_no_version() -> None:
    assert version_group(FILES, "https://k/zim/w_fr_all.zim", "") is None
    assert version_group(FILES, "https://k/base_2024-01.img", "") is None


# --- incoming and protected ----------------------------------------------------------------


def test_incoming_entries_count_and_push_others_out() -> None:
    entries = [
        make_entry("https://x/a", size=40, used=5),
        make_entry("https://x/b", size=40, used=1),
    ]
    incoming = [Incoming(FILES, "https://x/new", "https://x/new", 30)]
    evictions = plan(entries, "max_size: 100\n", incoming=incoming)
    assert remaining(entries, evictions) == ["https://x/b"]
    assert evictions[0].reason is EvictionReason.OVER_SIZE


def test_incoming_entries_are_never_evicted_even_over_the_limit() -> None:
    entries = [make_entry("https://x/a", size=10)]
    incoming = [Incoming(FILES, "https://x/big", "https://x/big", 500)]
    evictions = plan(entries, "max_size: 100\n", incoming=incoming)
    assert remaining(entries, evictions) == []  # as close to the limit as possible


def test_uncacheable_incoming_entries_do_not_count() -> None:
    policy = "max_num: 1\nfiles:\n  filters:\n    - pattern: ^https://skip/\n      ignore: true\n"
    entries = [make_entry("https://x/a")]
    incoming = [Incoming(FILES, "https://skip/b", "https://skip/b", 1)]
    assert plan(entries, policy, incoming=incoming) == []


def test_incoming_entry_replaces_the_one_with_its_key() -> None:
    old = make_entry("https://x/a", size=40)
    entries = [old, make_entry("https://x/b", size=40)]
    incoming = [Incoming(FILES, "https://x/a", "https://x/a", 50)]
    evictions = plan(entries, "max_size: 100\n", incoming=incoming, protected={"https://x/a"})
    assert [(e.entry, e.reason) for e in evictions] == [(old, EvictionReason.OUTDATED)]


def test_incoming_newest_version_pushes_the_older_one_out() -> None:
    zim = "https://k/zim/w_{}.zim"
    entries = [make_entry(zim.format("2024-01"))]
    incoming = [Incoming(FILES, zim.format("2024-06"), zim.format("2024-06"), 1)]
    evictions = plan(entries, "keep_identified_versions: 1\n", incoming=incoming)
    assert reasons(evictions) == {zim.format("2024-01"): EvictionReason.OLDER_VERSION}
    image = [make_entry("a/b:1", kind=OCI, added=1)]
    incoming = [Incoming(OCI, "a/b:2", "a/b:2|linux/arm64", 1)]
    evictions = plan(image, "keep_identified_versions: 1\n", incoming=incoming)
    assert reasons(evictions) == {"a/b:1": EvictionReason.OLDER_VERSION}


def test_protected_entries_stay_and_others_go_instead() -> None:
    entries = [
        make_entry("https://x/lru", size=40, used=9, added=400),
        make_entry("https://x/next", size=40, used=5),
        make_entry("https://x/recent", size=40, used=1),
        make_entry("https://x/v_2024-01.zim", size=1, used=0),
        make_entry("https://x/v_2024-02.zim", size=1, used=0),
    ]
    policy = "max_size: 100\nmax_age: 1y\nkeep_identified_versions: 1\n"
    protected = {"https://x/lru", "https://x/v_2024-01.zim"}
    evictions = plan(entries, policy, protected=protected)
    assert remaining(entries, evictions) == [
        "https://x/lru",
        "https://x/recent",
        "https://x/v_2024-01.zim",
        "https://x/v_2024-02.zim",
    ]
    assert reasons(evictions) == {"https://x/next": EvictionReason.OVER_SIZE}


def test_an_entry_is_evicted_once_with_the_first_reason() -> None:
    policy = """\
max_num: 1
max_size: 1
max_age: 30d
keep_identified_versions: 1
files:
  filters:
    - pattern: ignored
      ignore: true
"""
    entries = [
        make_entry("https://x/ignored_2024-01.zim", added=40, size=5),
        make_entry("https://x/w_2024-01.zim", size=5),
        make_entry("https://x/w_2024-02.zim", size=5, used=3),
        make_entry("https://x/other", size=5, used=1),
    ]
    incoming = [Incoming(FILES, "https://x/other", "https://x/other", 1)]
    evictions = plan(entries, policy, incoming=incoming)
    assert [(e.entry.source, e.reason) for e in evictions] == [
        ("https://x/other", EvictionReason.OUTDATED),
        ("https://x/ignored_2024-01.zim", EvictionReason.TOO_OLD),
        ("https://x/w_2024-01.zim", EvictionReason.OLDER_VERSION),
        ("https://x/w_2024-02.zim", EvictionReason.OVER_COUNT),
    ]


def test_ignored_comes_after_too_old() -> None:
    policy = "max_age: 30d\nfiles:\n  filters:\n    - pattern: ^\n      ignore: true\n"
    entries = [make_entry("https://x/old", added=40), make_entry("https://x/new", added=1)]
    assert reasons(plan(entries, policy)) == {
        "https://x/old": EvictionReason.TOO_OLD,
        "https://x/new": EvictionReason.IGNORED,
    }


# --- the production policy -----------------------------------------------------------------


def test_production_policy() -> None:
    kiwix = "https://download.kiwix.org/zim/wikipedia/wikipedia_fr_all_maxi_{}.zim"
    entries = [
        make_entry(kiwix.format("2024-01"), size=5 * GiB, added=200),
        make_entry(kiwix.format("2024-05"), size=5 * GiB, added=20),
        make_entry("https://download.kiwix.org/zim/.hidden/dev/x.zim"),
        make_entry("https://drive.offspot.it/base/offspot-base-arm64-1.10.0.img.xz"),
        make_entry("https://example.org/file.txt"),
        make_entry("ghcr.io/offspot/kiwix-serve:3.7.0", kind=OCI, size=15 * GiB, added=5),
        make_entry("ghcr.io/offspot/kiwix-serve:3.6.0", kind=OCI, size=15 * GiB, added=50),
        make_entry("ghcr.io/offspot/base-httpd:1.0", kind=OCI, size=15 * GiB, used=3),
        make_entry("caddy:2.6", kind=OCI, size=12 * GiB, used=2),
        make_entry("nginx:1.25", kind=OCI, size=12 * GiB, used=1),
    ]
    evictions = plan(entries, PRODUCTION)
    assert reasons(evictions) == {
        kiwix.format("2024-01"): EvictionReason.OLDER_VERSION,
        "https://download.kiwix.org/zim/.hidden/dev/x.zim": EvictionReason.IGNORED,
        "https://example.org/file.txt": EvictionReason.IGNORED,
        "ghcr.io/offspot/kiwix-serve:3.6.0": EvictionReason.OLDER_VERSION,
        # the `^` image filter holds 20GiB: caddy (least recently used) goes
        "caddy:2.6": EvictionReason.OVER_SIZE,
    }
    assert next(e for e in evictions if e.entry.source == "caddy:2.6").detail == (
        "oci_images.filters[1].max_size 20 GiB"
    )


def test_describe_is_one_line_with_kind_source_size_and_reason() -> None:
    entry = make_entry("ghcr.io/offspot/kiwix-serve:3.6", kind=OCI, size=3 * 2**20)
    line = describe(Eviction(entry, EvictionReason.OLDER_VERSION, "keeps 1, newest: x:3.7"))
    assert line == (
        "oci_images ghcr.io/offspot/kiwix-serve:3.6 [3 MiB]: older version (keeps 1, newest: x:3.7)"
    )
    assert describe(Eviction(entry, EvictionReason.TOO_OLD)) == (
        "oci_images ghcr.io/offspot/kiwix-serve:3.6 [3 MiB]: too old"
    )

"""The cache policy: defaults, the spec and production policies, inheritance, and every bad
input named by its key path."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest

from image_creator.cache.entry import EntryKind
from image_creator.cache.policy import (
    DEFAULT_MAX_SIZE,
    DEFAULT_POLICY_YAML,
    EvictionStrategy,
    Policy,
    load_policy,
    parse_policy_text,
)
from image_creator.errors import ConfigError

FILES = EntryKind.FILES
OCI = EntryKind.OCI_IMAGES
GiB = 2**30

PRODUCTION = """\
enabled: true
max_size: 800GB
eviction: lru
keep_identified_versions: 1
oci_images:
  enabled: true
  eviction: lru
  filters:
    - pattern: ^ghcr.io/offspot/
      check_after: 90d
      eviction: lru
    - pattern: ^
      max_size: 20GiB
files:
  enabled: true
  eviction: lru
  filters:
    - pattern: ^https?://(mirror.)?download.kiwix.org/zim/.hidden
      ignore: true
    - pattern: ^https?://(mirror.)?download.kiwix.org/zim/
      check_after: 90d
      eviction: lru
    - pattern: ^https://drive.(offspot.it|farm.openzim.org)/
      check_after: 30d
      eviction: lru
    - pattern: ^
      ignore: true
"""

SPEC_SAMPLE = """\
---
enabled: true
max_size: 0
oci_images:
  eviction: oldest
files:
  enabled: false
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_policy_text(text)
    return caught.value.problems


# --- loading and defaults ------------------------------------------------------------------


def test_missing_policy_is_written_with_the_default(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    policy = load_policy(cache_dir)
    written = cache_dir / "policy.yaml"
    assert written.read_text(encoding="utf-8") == DEFAULT_POLICY_YAML
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert [path.name for path in cache_dir.iterdir()] == ["policy.yaml"]  # no temp left
    assert policy == parse_policy_text(DEFAULT_POLICY_YAML)
    assert policy.main.enabled
    assert policy.main.max_size == 10 * GiB
    assert policy.main.eviction is EvictionStrategy.LRU
    assert policy.files.rule.enabled and policy.oci_images.rule.enabled
    assert policy.files.filters == () and policy.oci_images.filters == ()


def test_existing_policy_is_read_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(SPEC_SAMPLE, encoding="utf-8")
    policy = load_policy(tmp_path)
    assert (tmp_path / "policy.yaml").read_text(encoding="utf-8") == SPEC_SAMPLE
    assert policy.main.max_size is None


def test_unreadable_policy_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").mkdir()
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path)
    assert caught.value.problems[0].startswith(f"{tmp_path / 'policy.yaml'}: cannot read")


def test_unwritable_cache_dir_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a directory", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path / "cache")
    assert caught.value.problems[0].startswith(
        f"{tmp_path / 'cache' / 'policy.yaml'}: cannot write the default cache policy: "
    )


def test_problems_carry_the_policy_path(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("max_size: lots\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path)
    assert caught.value.problems[0].startswith(f"{tmp_path / 'policy.yaml'}: max_size: ")


@pytest.mark.parametrize("text", ["", "---\n", "{}\n"])
def test_empty_policy_is_all_defaults(text: str) -> None:
    policy = parse_policy_text(text)
    assert policy == Policy()
    assert policy.main.max_size == DEFAULT_MAX_SIZE
    rule = policy.rule_for(FILES, "https://example.org/a.zim")
    assert rule.cacheable
    assert rule.check_after == timedelta(0)
    assert rule.max_age is None
    assert rule.max_size == DEFAULT_MAX_SIZE
    assert rule.keep_identified_versions is None
    assert rule.eviction is EvictionStrategy.LRU
    assert rule.filter_index is None
    assert rule.scope == "files"


def test_spec_sample_policy() -> None:
    policy = parse_policy_text(SPEC_SAMPLE)
    assert policy.main.max_size is None  # 0 disables
    assert policy.rule_for(OCI, "ghcr.io/offspot/kiwix-serve:dev").eviction is (
        EvictionStrategy.OLDEST
    )
    assert policy.rule_for(OCI, "ghcr.io/offspot/kiwix-serve:dev").cacheable
    files_rule = policy.rule_for(FILES, "https://download.kiwix.org/zim/a.zim")
    assert not files_rule.cacheable
    assert "files.enabled: false" in files_rule.reason


def test_disabled_cache_caches_nothing() -> None:
    policy = parse_policy_text("enabled: false\n")
    for kind, source in ((FILES, "https://a/b"), (OCI, "alpine:3")):
        rule = policy.rule_for(kind, source)
        assert not rule.cacheable
        assert "cache is disabled" in rule.reason


# --- the production policy -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "cacheable", "filter_index", "check_after"),
    [
        ("https://download.kiwix.org/zim/.hidden/dev/test_2024-01.zim", False, 0, None),
        ("http://mirror.download.kiwix.org/zim/.hidden/x.zim", False, 0, None),
        ("https://download.kiwix.org/zim/wikipedia/wikipedia_fr_all_maxi_2024-05.zim", True, 1, 90),
        (
            "http://mirror.download.kiwix.org/zim/gutenberg/gutenberg_fr_all_2023-10.zim",
            True,
            1,
            90,
        ),
        ("https://drive.offspot.it/base/offspot-base-arm64-1.10.0.img.xz", True, 2, 30),
        ("https://drive.farm.openzim.org/contents/x.tar", True, 2, 30),
        ("http://drive.offspot.it/base/x.img.xz", False, 3, None),  # http: not filter 2
        ("https://example.org/download.kiwix.org/zim/x.zim", False, 3, None),
        ("https://github.com/x/y/archive/main.zip", False, 3, None),
    ],
)
def test_production_policy_files(
    source: str, cacheable: bool, filter_index: int, check_after: int | None
) -> None:
    rule = parse_policy_text(PRODUCTION).rule_for(FILES, source)
    assert rule.cacheable is cacheable
    assert rule.filter_index == filter_index
    assert rule.scope == f"files.filters[{filter_index}]"
    if cacheable:
        assert rule.check_after == timedelta(days=check_after or 0)
        assert rule.keep_identified_versions == 1  # from the main level
        assert rule.eviction is EvictionStrategy.LRU
        assert rule.max_size == 800 * 10**9
        assert rule.max_age is None
        assert rule.reason == ""
    else:
        assert f"ignored by files.filters[{filter_index}]" in rule.reason


def test_production_policy_images() -> None:
    policy = parse_policy_text(PRODUCTION)
    offspot = policy.rule_for(OCI, "ghcr.io/offspot/kiwix-serve:3.7.0")
    assert offspot.cacheable
    assert offspot.filter_index == 0
    assert offspot.check_after == timedelta(days=90)
    assert offspot.max_size == 800 * 10**9
    assert offspot.keep_identified_versions == 1
    other = policy.rule_for(OCI, "docker.io/library/caddy:2.6.1-alpine")
    assert other.cacheable
    assert other.filter_index == 1
    assert other.check_after == timedelta(0)  # unset everywhere: check on every use
    assert other.max_size == 20 * GiB
    assert policy.main.max_size == 800 * 10**9
    assert policy.oci_images.filters[1].rule.max_size == 20 * GiB


# --- values, zeros and inheritance ---------------------------------------------------------


def test_values_are_parsed_into_final_types() -> None:
    policy = parse_policy_text(
        """\
max_size: 100GB
max_age: 1y
max_num: 50
check_after: 1d12h
keep_identified_versions: 2
eviction: Largest
files:
  max_size: 8GiB
  max_age: 8w
  max_num: 10
  filters:
    - pattern: /kiwix/
      max_size: 2G
      max_age: 30d
      max_num: 3
      check_after: 0
      keep_identified_versions: 0
      eviction: smallest
"""
    )
    assert policy.main.max_size == 100 * 10**9
    assert policy.main.max_age == timedelta(days=365)
    assert policy.main.max_num == 50
    assert policy.main.check_after == timedelta(days=1, hours=12)
    assert policy.main.eviction is EvictionStrategy.LARGEST
    assert policy.files.rule.max_size == 8 * GiB
    kiwix = policy.files.filters[0]
    assert kiwix.pattern.pattern == "/kiwix/"
    assert not kiwix.ignore
    assert kiwix.rule.max_num == 3
    assert kiwix.rule.keep_identified_versions == 0  # set: "keep all", not "inherit"

    rule = policy.rule_for(FILES, "https://mirror.example/kiwix/a.zim")  # searched, unanchored
    assert rule.filter_index == 0
    assert rule.max_size == 2 * 10**9
    assert rule.max_age == timedelta(days=30)
    assert rule.check_after == timedelta(0)  # 0 overrides the main 1d12h
    assert rule.keep_identified_versions is None  # 0 overrides the main 2: keep all
    assert rule.eviction is EvictionStrategy.SMALLEST

    outside = policy.rule_for(FILES, "https://example.org/a.zim")
    assert outside.filter_index is None
    assert outside.max_size == 8 * GiB
    assert outside.max_age == timedelta(weeks=8)
    assert outside.check_after == timedelta(days=1, hours=12)
    assert outside.keep_identified_versions == 2
    assert outside.eviction is EvictionStrategy.LARGEST  # files sets none: main's

    image = policy.rule_for(OCI, "alpine:3")
    assert (image.max_size, image.max_age) == (100 * 10**9, timedelta(days=365))


def test_zero_limits_mean_no_limit() -> None:
    policy = parse_policy_text(
        """\
max_size: 0
max_age: "0"
max_num: 0
oci_images:
  max_size: "0"
  filters:
    - pattern: .
      max_num: 0
      max_age: 0
"""
    )
    assert policy.main.max_size is None
    assert policy.main.max_age is None
    assert policy.main.max_num is None
    assert policy.oci_images.rule.max_size is None
    assert policy.oci_images.filters[0].rule.max_num is None
    assert policy.oci_images.filters[0].rule.max_age is None
    rule = policy.rule_for(OCI, "alpine:3")
    assert rule.max_size is None and rule.max_age is None


def test_first_matching_filter_applies() -> None:
    policy = parse_policy_text(
        """\
oci_images:
  eviction: newest
  filters:
    - pattern: ^ghcr.io/offspot/kiwix
      check_after: 1d
    - pattern: ^ghcr.io/offspot/
      check_after: 7d
      eviction: oldest
"""
    )
    kiwix = policy.rule_for(OCI, "ghcr.io/offspot/kiwix-serve:dev")
    assert (kiwix.filter_index, kiwix.check_after) == (0, timedelta(days=1))
    assert kiwix.eviction is EvictionStrategy.NEWEST  # filter 0 sets none: the kind's
    other = policy.rule_for(OCI, "ghcr.io/offspot/base-httpd:1.0")
    assert (other.filter_index, other.check_after) == (1, timedelta(days=7))
    assert other.eviction is EvictionStrategy.OLDEST
    # oci filters do not apply to files
    assert policy.rule_for(FILES, "ghcr.io/offspot/kiwix-serve:dev").filter_index is None


def test_sub_levels_within_limits_of_their_parents_are_fine() -> None:
    parse_policy_text(
        """\
max_size: 10GiB
max_num: 10
max_age: 1y
files:
  max_size: 10GiB
  filters:
    - pattern: a
      max_size: 5GiB
      max_num: 10
      max_age: 52w
oci_images:
  max_size: 0
  filters:
    - pattern: a
      max_size: 10GiB
"""
    )


# --- errors, each with its key path ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_size: lots\n", "policy.yaml: max_size: expected a size"),
        ("max_age: 3 fortnights\n", "policy.yaml: max_age: expected a duration"),
        (
            "files:\n  filters:\n    - pattern: a\n    - pattern: b\n      check_after: soon\n",
            "policy.yaml: files.filters[1].check_after: expected a duration",
        ),
        (
            "oci_images:\n  eviction: random\n",
            "policy.yaml: oci_images.eviction: unknown eviction strategy 'random'; "
            "expected one of: oldest, newest, largest, smallest, lru",
        ),
        (
            "files:\n  filters:\n    - max_num: 3\n",
            "policy.yaml: files.filters[0].pattern: required",
        ),
        (
            "files:\n  filters:\n    - pattern: '^https://(a'\n",
            "policy.yaml: files.filters[0].pattern: invalid regexp '^https://(a'",
        ),
        ("max_nums: 3\n", "policy.yaml: max_nums: unknown key (did you mean 'max_num'?)"),
        (
            "files:\n  filters:\n    - pattern: a\n      ignored: true\n",
            "policy.yaml: files.filters[0].ignored: unknown key (did you mean 'ignore'?)",
        ),
        (
            "oci_images:\n  filter: []\n",
            "policy.yaml: oci_images.filter: unknown key (did you mean 'filters'?)",
        ),
        ("files:\n  enabled: maybe\n", "policy.yaml: files.enabled: expected true or false"),
        ("max_num: -1\n", "policy.yaml: max_num: expected a whole number"),
        ("keep_identified_versions: 1.5\n", "policy.yaml: keep_identified_versions: expected"),
        ("files: [a]\n", "policy.yaml: files: expected a mapping"),
        ("files:\n  filters: a\n", "policy.yaml: files.filters: expected a list"),
        ("- a\n", "policy.yaml: (top): expected a mapping"),
        (
            "max_size: 10GiB\nfiles:\n  max_size: 20GiB\n",
            "policy.yaml: files.max_size: 20 GiB is larger than max_size (10 GiB)",
        ),
        (
            "files:\n  max_size: 20GiB\n",  # the main default is 10GiB
            "policy.yaml: files.max_size: 20 GiB is larger than max_size (10 GiB)",
        ),
        (
            "max_num: 5\noci_images:\n  max_num: 3\n"
            "  filters:\n    - pattern: a\n      max_num: 4\n",
            "policy.yaml: oci_images.filters[0].max_num: 4 is larger than oci_images.max_num (3)",
        ),
        (
            "max_age: 30d\nfiles:\n  filters:\n    - pattern: a\n      max_age: 60d\n",
            "policy.yaml: files.filters[0].max_age: 8 weeks and 4 days is larger than max_age "
            "(4 weeks and 2 days)",
        ),
        ("max_size: 1GiB\nmax_size: 2GiB\n", "policy.yaml:2:1: invalid YAML: duplicate key"),
    ],
)
def test_policy_errors_name_their_key(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(
        """\
max_size: 1GiB
eviction: fifo
oci_images:
  max_size: 2GiB
  filters:
    - check_after: 1d
    - pattern: "["
      max_age: forever
files:
  enable: false
"""
    )
    assert [problem.split(": ")[1] for problem in problems] == [
        "eviction",
        "oci_images.max_size",
        "oci_images.filters[0].pattern",
        "oci_images.filters[1].pattern",
        "oci_images.filters[1].max_age",
        "files.enable",
    ]
    assert "did you mean 'enabled'?" in problems[-1]

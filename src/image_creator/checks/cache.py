"""What the cache means for one build: which sources it holds, adds, or evicts."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from image_creator.cache.downloads import image_cache_key, is_cacheable_url, version_of
from image_creator.cache.entry import EntryKind
from image_creator.cache.eviction import describe
from image_creator.cache.policy import load_policy
from image_creator.cache.store import CacheStore
from image_creator.config.model import Download, Export
from image_creator.context import Context
from image_creator.plan import CacheForecast, CacheUse, Inventory
from image_creator.ui.base import Reporter
from image_creator.units import format_size


def check_cache(ctx: Context, inventory: Inventory) -> tuple[tuple[CacheUse, ...], CacheForecast]:
    """Which sources the cache holds, which it would add, what it would evict to make room;
    with --show-cache, the whole cache too. Reads only."""
    assert ctx.cache is not None  # called with --cache-dir only
    uses = cache_uses(inventory)
    expected = forecast(ctx.cache, uses)
    show_forecast(expected, ctx.reporter)
    if ctx.options.show_cache:
        show_cache(ctx.cache, ctx.reporter)
    return tuple(uses), expected


def open_cache(cache_dir: Path, *, read_only: bool) -> CacheStore:
    """The cache at ``cache_dir``; its policy is validated before anything is downloaded.

    ``read_only`` (--check, --show-cache) looks without creating or writing anything.
    """
    if not read_only:
        cache_dir.mkdir(parents=True, exist_ok=True)
    policy = load_policy(cache_dir, write_default=not read_only)
    return CacheStore(cache_dir, policy, read_only=read_only)


def cache_uses(inventory: Inventory) -> list[CacheUse]:
    uses: list[CacheUse] = []
    base = inventory.base
    if is_cacheable_url(base.image.url):
        uses.append(
            CacheUse(
                EntryKind.FILES,
                base.image.url,
                base.image.url,
                version_of(base.remote),
                base.download_size or 0,
            )
        )
    for image in inventory.images:
        origin = image.image.origin
        if isinstance(origin, Export):
            if is_cacheable_url(origin.url):
                uses.append(
                    CacheUse(
                        EntryKind.FILES,
                        origin.url,
                        origin.url,
                        version_of(image.remote),
                        image.filesize,
                    )
                )
            continue
        uses.append(
            CacheUse(
                EntryKind.OCI_IMAGES,
                image.image.ident,
                image_cache_key(image.image.ident),
                image.manifest_digest or "",
                image.filesize,
            )
        )
    for file in inventory.files:
        file_origin = file.entry.origin
        if isinstance(file_origin, Download) and is_cacheable_url(url := file_origin.url):
            uses.append(
                CacheUse(
                    EntryKind.FILES, url, url, version_of(file.remote), file.download_size or 0
                )
            )
    return uses


def forecast(store: CacheStore, uses: list[CacheUse]) -> CacheForecast:
    """What the build would do with the cache; reads only, changes nothing."""
    hits, additions, outdated, uncached = [], [], [], []
    for use in uses:
        rule = store.rule_for(use.kind, use.source)
        if not rule.cacheable:
            uncached.append(use)
            continue
        entry = store.lookup(use.kind, use.key)
        if entry is None:
            additions.append(use)
            continue
        if store.is_current(entry, rule, use.version):
            hits.append(use)
        else:
            outdated.append(use)
    partial = CacheForecast(
        hits=tuple(hits),
        additions=tuple(additions),
        outdated=tuple(outdated),
        uncached=tuple(uncached),
        evictions=(),
    )
    evictions = store.plan(incoming=partial.incoming, protected=partial.protected)
    return replace(partial, evictions=tuple(evictions))


def show_forecast(result: CacheForecast, reporter: Reporter) -> None:
    for use in result.hits:
        reporter.info(f"cache hit: {use.source}")
    for use in result.additions:
        reporter.info(f"cache: would add {use.source} ({format_size(use.size)})")
    for use in result.outdated:
        reporter.info(f"cache: outdated, would download again: {use.source}")
    for use in result.uncached:
        reporter.info(f"cache: not kept by the policy: {use.source}")
    for eviction in result.evictions:
        reporter.info(f"cache: would evict {describe(eviction)}")


def show_cache(store: CacheStore, reporter: Reporter) -> None:
    """Every entry, and what the policy would evict now and why."""
    now = store.clock()
    entries = store.entries()
    total = sum(entry.size for entry in entries)
    reporter.info(f"cache {store.root}: {len(entries)} entries, {format_size(total)}")
    for entry in sorted(entries, key=lambda item: (item.kind.value, item.source)):
        reporter.info(
            f"{entry.kind.value:<10} {format_size(entry.size):>10}  {entry.source}  "
            f"(added {_age(now - entry.added)} ago, last used {_age(now - entry.last_used)} ago, "
            f"used {entry.use_count}x)"
        )
    evictions = store.plan()
    if not evictions:
        reporter.info("the policy would evict nothing now")
    for eviction in evictions:
        reporter.info(f"would evict {describe(eviction)}")


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"

"""The cache's policy applied around a build: room made before it (knowing what the build
will add), the cache tidied after it (what the build used is kept)."""

from __future__ import annotations

from image_creator.cache.eviction import describe
from image_creator.context import Context
from image_creator.plan import Plan


def make_room_in_cache(ctx: Context, plan: Plan) -> None:
    assert ctx.cache is not None and plan.cache is not None  # with --cache-dir only
    for eviction in ctx.cache.evict(incoming=plan.cache.incoming, protected=plan.cache.protected):
        ctx.reporter.info(f"evicted {describe(eviction)}")


def tidy_cache(ctx: Context, plan: Plan) -> None:
    assert ctx.cache is not None  # with --cache-dir only
    for eviction in ctx.cache.evict(protected=[use.key for use in plan.cache_uses]):
        ctx.reporter.info(f"evicted {describe(eviction)}")

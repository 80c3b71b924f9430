"""The checks a run makes before it builds, in order; ``check(ctx)`` returns the Plan.

In check mode (``--check``, ``--show-cache``) what a build would refuse on this host is a
warning; a build stops on it. Anything wrong with the config or a source fails either way.
"""

from __future__ import annotations

from image_creator.checks.cache import check_cache
from image_creator.checks.host import check_host
from image_creator.checks.paths import check_output_path
from image_creator.checks.sizes import check_sizes
from image_creator.checks.sources import check_sources
from image_creator.checks.space import check_space
from image_creator.context import Context
from image_creator.plan import CacheForecast, CacheUse, Plan


def check(ctx: Context) -> Plan:
    check_output_path(ctx.options, ctx.config)
    with ctx.timeline.step("Checking host"):
        backend, reason = check_host(ctx)
    with ctx.timeline.step("Checking sources"):
        inventory = check_sources(ctx)
    with ctx.timeline.step("Computing sizes"):
        sizes = check_sizes(ctx, inventory)
    uses: tuple[CacheUse, ...] = ()
    forecast: CacheForecast | None = None
    if ctx.cache is not None:
        with ctx.timeline.step("Cache"):
            uses, forecast = check_cache(ctx, inventory)
    with ctx.timeline.step("Checking free space"):
        check_space(ctx, inventory, sizes, forecast, backend)
    return Plan(
        inventory=inventory,
        sizes=sizes,
        cache_uses=uses,
        cache=forecast,
        backend=backend,
        backend_reason=reason,
    )

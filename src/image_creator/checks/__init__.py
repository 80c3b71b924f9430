"""The checks a run makes before it builds, in order; ``check(ctx)`` returns the Plan.

In check mode (``--check``, ``--show-cache``) what a build would refuse on this host is a
warning; a build stops on it. Anything wrong with the config or a source fails either way.
"""

from __future__ import annotations

from image_creator.checks.cache import check_cache
from image_creator.checks.host import choose_backend, host_problems
from image_creator.checks.paths import check_output_path
from image_creator.checks.sizes import check_sizes
from image_creator.checks.sources import check_sources
from image_creator.checks.space import space_needs, space_shortages
from image_creator.context import Context
from image_creator.errors import HostError
from image_creator.options import Mode
from image_creator.plan import CacheForecast, CacheUse, Plan
from image_creator.sink import Backend


def check(ctx: Context) -> Plan:
    check_output_path(ctx.options, ctx.config)
    with ctx.timeline.step("Checking host"):
        backend, reason = choose_backend(ctx.options)
        if ctx.options.mode is not Mode.BUILD:
            ctx.reporter.info(f"a build would use the {backend} backend: {reason}")
        elif backend is Backend.ROOTLESS and not ctx.options.rootless:
            ctx.reporter.info(f"building rootless (no loop device, no mount): {reason}")
        settle(
            ctx,
            host_problems(backend),
            prefix="this host cannot build images: ",
            hint="install the listed tools"
            if backend is Backend.ROOTLESS
            else "run as root on a Linux host with loop devices and the listed tools",
        )
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
        rootless = backend is Backend.ROOTLESS
        needs = space_needs(ctx.options, inventory, sizes, forecast, rootless=rootless)
        settle(ctx, space_shortages(needs))
    return Plan(
        inventory=inventory,
        sizes=sizes,
        cache_uses=uses,
        cache=forecast,
        backend=backend,
        backend_reason=reason,
    )


def settle(ctx: Context, problems: list[str], *, prefix: str = "", hint: str | None = None) -> None:
    """What this host lacks: one error in a build, a warning each in check mode."""
    if not problems:
        return
    if ctx.options.mode is Mode.BUILD:
        raise HostError(prefix + "; ".join(problems), hint=hint)
    for problem in problems:
        ctx.reporter.warning(f"a build here would fail: {problem}")

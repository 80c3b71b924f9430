"""The whole run, read top to bottom: each step raises on failure."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from image_creator.build import build
from image_creator.cache.downloads import Downloads
from image_creator.cache.eviction import describe
from image_creator.checks.paths import check_output_path, check_report_path
from image_creator.config.loader import load_config
from image_creator.config.units import format_size
from image_creator.context import Context
from image_creator.errors import ImageCreatorError, exit_code_for
from image_creator.fetch import http
from image_creator.options import Options
from image_creator.report import Report, Timeline
from image_creator.steps.cache import cache_uses, forecast, open_cache, report_forecast, show_cache
from image_creator.steps.host import ensure_host_ready, host_problems
from image_creator.steps.output import default_build_dir
from image_creator.steps.sizes import ensure_space, plan_sizes, space_shortages
from image_creator.steps.sizes import report_sizes as show_sizes
from image_creator.steps.sources import Inventory, SizeFrom, inspect_sources
from image_creator.system.signals import AfterPublish
from image_creator.ui.base import Reporter


def run(options: Options, reporter: Reporter) -> None:
    """The whole run; with --report, its record is written whatever the outcome."""
    check_report_path(options)  # before anything: a --report refused is not written either
    timeline = Timeline(reporter)
    record = Report(mode="check" if options.check else "build", config_source=options.config_src)
    try:
        with ExitStack() as stack:
            _run(options, reporter, timeline, record, stack)
    except AfterPublish as exc:
        reporter.warning(f"{exc}: the build succeeded; {timeline.current or 'the rest'} cut short")
    except BaseException as exc:
        record.error = {
            "message": "; ".join(exc.lines()) if isinstance(exc, ImageCreatorError) else str(exc),
            "step": timeline.current,
            "exit_code": int(exit_code_for(exc)),
        }
        raise
    finally:
        if options.report is not None:
            record.write(options.report, timeline)


def _run(
    options: Options, reporter: Reporter, timeline: Timeline, record: Report, stack: ExitStack
) -> None:
    looking_only = options.check or options.show_cache
    cache = None
    if options.cache_dir is not None:
        cache = open_cache(options.cache_dir, read_only=looking_only)
    if cache is not None and options.show_cache and not options.config_src:
        show_cache(cache, reporter)
        return
    with timeline.step("Reading config"):
        loaded = load_config(
            options.config_src,
            read_url=http.read_config,
            release_url_template=options.release_url_template,
        )
        record.config_sha256 = loaded.sha256
        for warning in loaded.warnings:
            reporter.warning(warning)
    ctx = Context(
        options=options,
        config=loaded.config,
        reporter=reporter,
        stack=stack,
        timeline=timeline,
        record=record,
        downloads=Downloads(cache),
    )
    check_output_path(options, ctx.config)
    with timeline.step("Checking host"):
        problems = host_problems()
        if looking_only:
            for problem in problems:
                reporter.warning(f"a build here would fail: {problem}")
        else:
            ensure_host_ready(problems)
    with timeline.step("Checking sources"):
        ctx.inventory = inspect_sources(ctx.config, concurrency=options.concurrency, cache=cache)
        record.inventory = ctx.inventory
        report_sources(ctx.inventory, reporter)
    with timeline.step("Computing sizes"):
        ctx.sizes = plan_sizes(
            ctx.inventory, requested=ctx.config.output_size, max_size=options.max_size
        )
        record.sizes = ctx.sizes
        report_sizes(ctx)
    uses = cache_uses(ctx.inventory) if cache is not None else []
    cache_needs: dict[Path, int] = {}
    if cache is not None:
        with timeline.step("Cache"):
            expected = forecast(cache, uses)
            report_forecast(expected, reporter)
            if options.show_cache:
                show_cache(cache, reporter)
            cache_needs[cache.root] = sum(use.size for use in expected.incoming)
    with timeline.step("Checking free space"):
        check_free_space(ctx, also=cache_needs)
    if looking_only:
        reporter.info("check passed: nothing was downloaded or written")
        return
    if cache is not None:
        with timeline.step("Making room in the cache"):
            for eviction in cache.evict(incoming=expected.incoming, protected=expected.protected):
                reporter.info(f"evicted {describe(eviction)}")
    build(ctx)
    if cache is not None:
        with timeline.step("Tidying the cache"):
            for eviction in cache.evict(protected=[use.key for use in uses]):
                reporter.info(f"evicted {describe(eviction)}")


def report_sources(inventory: Inventory, reporter: Reporter) -> None:
    base = inventory.base
    download = format_size(base.download_size) if base.download_size is not None else "size unknown"
    reporter.info(f"base image {base.image.url}: {download}")
    for warning in base.warnings:
        reporter.warning(warning)
    for image in inventory.images:
        reporter.info(
            f"OCI image {image.image.ident}: {format_size(image.filesize)} tar, "
            f"{format_size(image.fullsize)} extracted (sizes from {image.sizes_from})"
        )
    for source in inventory.files:
        entry = source.entry
        origin = entry.url if entry.url is not None else "inline content"
        sized = format_size(source.expanded_size)
        if entry.via.is_archive and source.download_size is not None:
            sized = f"{format_size(source.download_size)} {entry.via.value}, {sized} expanded"
        if entry.via.is_archive or source.size_from is SizeFrom.DECLARED:
            sized += f" (size from {source.size_from}"
            sized += f"; {source.size_note})" if source.size_note else ")"
        reporter.info(f"{entry.to} <- {origin}: {sized}")
        for warning in source.warnings:
            reporter.warning(warning)


def report_sizes(ctx: Context) -> None:
    show_sizes(
        ctx.require_sizes(),
        ctx.reporter,
        requested=ctx.config.output_size,
        max_size=ctx.options.max_size,
    )


def check_free_space(ctx: Context, *, also: dict[Path, int]) -> None:
    """Room on every volume written to: the output's, the build folder's, the cache's
    (``also``); paths on one volume add up. A shortage is named by its paths."""
    sizes = ctx.require_sizes()
    inventory = ctx.require_inventory()
    needs: dict[Path, int] = dict(also)
    if ctx.options.output is not None:
        # The image is sparse: what lands on disk is the base image plus the content.
        needs[ctx.options.output.absolute()] = sizes.base_image + sizes.content
    exports = sum(image.fullsize for image in inventory.images if image.image.url is None)
    if exports:
        needs[default_build_dir(ctx.options)] = exports
    if ctx.options.check or ctx.options.show_cache:
        for shortage in space_shortages(needs):
            ctx.reporter.warning(f"a build here would fail: {shortage}")
    else:
        ensure_space(needs)

"""The whole run, dispatched on its mode: ``plan = check(ctx)``, then ``build(ctx, plan)``.

The record (``--report``) is assembled once at the end from what the run produced: the
config's digest, the plan, what the build did, the error and the steps' timings.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack

from image_creator.build import build
from image_creator.cache.downloads import Downloads
from image_creator.checks import check
from image_creator.checks.cache import open_cache, show_cache
from image_creator.checks.paths import check_report_path
from image_creator.config.loader import load_config
from image_creator.context import Context
from image_creator.fetch.client import HttpClient
from image_creator.options import Mode, Options
from image_creator.report import Outcome, error_record, report_document, write_report
from image_creator.system.signals import AfterPublish
from image_creator.timeline import Timeline
from image_creator.ui.base import Reporter


def run(options: Options, reporter: Reporter) -> None:
    """The whole run; with --report, its record is written whatever the outcome."""
    check_report_path(options)  # before anything: a --report refused is not written either
    timeline = Timeline(reporter)
    outcome = Outcome()
    try:
        with ExitStack() as stack:
            _run(options, reporter, timeline, stack, outcome)
    except AfterPublish as exc:
        reporter.warning(f"{exc}: the build succeeded; {timeline.current or 'the rest'} cut short")
    except BaseException as exc:
        outcome.error = error_record(exc, timeline.current)
        raise
    finally:
        if options.report is not None:
            write_report(options.report, report_document(options, outcome, timeline))


def _run(
    options: Options, reporter: Reporter, timeline: Timeline, stack: ExitStack, outcome: Outcome
) -> None:
    cache = None
    if options.cache_dir is not None:
        cache = open_cache(options.cache_dir, read_only=options.mode is not Mode.BUILD)
    if options.mode is Mode.SHOW_CACHE:
        assert cache is not None  # the CLI requires --cache-dir with --show-cache
        show_cache(cache, reporter)
        return
    # one client for the whole run: its connections are kept for the next request
    client = stack.enter_context(HttpClient(connections=options.concurrency + 2))
    with timeline.step("Reading config"):
        loaded = load_config(
            options.config_src,
            read_url=client.read_config,
            release_url_template=options.release_url_template,
        )
        outcome.config_sha256 = loaded.sha256
        for warning in loaded.warnings:
            reporter.warning(warning)
    ctx = Context(
        options=options,
        config=loaded.config,
        reporter=reporter,
        stack=stack,
        timeline=timeline,
        http=client,
        # -T bounds the connections of the files step, a file's segments included
        downloads=Downloads(
            client, cache, connections=threading.BoundedSemaphore(options.concurrency)
        ),
        cache=cache,
    )
    outcome.plan = check(ctx)
    if options.mode is Mode.CHECK:
        reporter.info("check passed: nothing was downloaded or written")
        return
    build(ctx, outcome.plan, outcome.built)

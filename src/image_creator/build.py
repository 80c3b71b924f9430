"""The image build, after the checks: every step in order, every resource released.

Resources are context managers entered the moment they exist: the partial image and the
build folder on the run's ExitStack (released last), the writable data filesystem (loop
device and mount, or the offline writer: ``plan.backend``) in a block, because it must be
closed and checked before the image can be published.
"""

from __future__ import annotations

import functools

from image_creator.context import Context
from image_creator.digests import ChecksumAlgo
from image_creator.errors import BuildError
from image_creator.fetch.checksums import hash_file
from image_creator.placement import placement_rounds, run_concurrently, run_in_rounds
from image_creator.plan import Built, Plan
from image_creator.sink import Backend
from image_creator.sizing import (
    measure_data_filesystem,
    plan_sizes,
    show_sizes,
)
from image_creator.steps.data_filesystem import writable_data_filesystem
from image_creator.steps.evict import make_room_in_cache, tidy_cache
from image_creator.steps.fetch_base_image import fetch_base_image
from image_creator.steps.place_files import place_file
from image_creator.steps.place_images import place_image
from image_creator.steps.publish import publish
from image_creator.steps.write_configs import write_image_config, write_offspot_config
from image_creator.system.image import grow_data_partition, grow_image_file
from image_creator.system.partitions import read_partition_table
from image_creator.system.signals import mark_published, releasing
from image_creator.units import format_size
from image_creator.workspace import (
    build_folder,
    default_build_dir,
    disk_faults,
    partial_output,
    probe_size,
)

BOOT_PARTITION_NUMBER = 1


def build(ctx: Context, plan: Plan, built: Built) -> None:
    """Every build step in order; ``built`` tells what was done as it is done."""
    options, config, reporter = ctx.options, ctx.config, ctx.reporter
    inventory, sizes = plan.inventory, plan.sizes
    assert options.output is not None  # the CLI requires OUTPUT unless --check
    if ctx.cache is not None:
        with ctx.timeline.step("Making room in the cache"):
            make_room_in_cache(ctx, plan)
    image = ctx.stack.enter_context(
        partial_output(options.output, keep=options.keep, reporter=reporter)
    )
    build_dir = ctx.stack.enter_context(build_folder(default_build_dir(options), reporter=reporter))
    # released first: a failure is put down to a full host volume before anything is removed
    ctx.stack.enter_context(disk_faults(image))
    probe_size(image, sizes.output)

    with ctx.timeline.step("Fetching base image"):
        with reporter.progress("base image", inventory.base.download_size) as advance:
            base = fetch_base_image(inventory.base, image, ctx.downloads, on_progress=advance)
        built.base = base
        reporter.info(f"{config.base.url}: {format_size(base.image_size)} once decompressed")

    with ctx.timeline.step("Sizing the data filesystem"):
        # the exact size, from the base's real data filesystem (the check may only have had
        # an upper bound); output.size and --max-size are checked again against it
        rootless = plan.backend is Backend.ROOTLESS
        table, filesystem = measure_data_filesystem(image, rootless=rootless)
        sizes = plan_sizes(
            inventory,
            requested=config.output_size,
            max_size=options.max_size,
            filesystem=filesystem,
            table=table,
        )
        built.sizes = sizes
        show_sizes(sizes, reporter, requested=config.output_size)

    with ctx.timeline.step(f"Growing image to {format_size(sizes.output)}"):
        grow_image_file(image, sizes.output)
        data_partition = grow_data_partition(image)

    with writable_data_filesystem(
        ctx, image, data_partition, backend=plan.backend, sizes=sizes, build_dir=build_dir
    ) as sink:
        if inventory.images:
            with ctx.timeline.step("Pulling OCI images"):
                exports = build_dir / "exports"
                exports.mkdir()
                built.images = run_concurrently(
                    (
                        functools.partial(
                            place_image,
                            source,
                            sink,
                            build_dir=exports,
                            downloads=ctx.downloads,
                            reporter=reporter,
                        )
                        for source in inventory.images
                    ),
                    workers=options.concurrency,
                )
        if inventory.files:
            with ctx.timeline.step("Writing files"):
                files = inventory.files
                order = placement_rounds([(f.entry.to, f.entry.via.is_archive) for f in files])
                everything = sum(f.download_size or 0 for f in files) or None
                with reporter.overall("all files", everything):
                    built.files = run_in_rounds(
                        [
                            functools.partial(
                                place_file, source, sink, downloads=ctx.downloads, reporter=reporter
                            )
                            for source in files
                        ],
                        order,
                        workers=options.concurrency,
                    )
        if config.write_config:
            write_image_config(sink, config.raw)

    if config.offspot:
        with ctx.timeline.step("Writing offspot.yaml"):
            boot = read_partition_table(image).partition(BOOT_PARTITION_NUMBER)
            if boot is None:
                raise BuildError("the base image has no boot partition (1) for offspot.yaml")
            write_offspot_config(image, boot.start_bytes, config.offspot)

    with ctx.timeline.step("Publishing"), releasing():
        # the commit point: a signal before it fails the run with nothing published, a
        # signal after it only cuts short what follows (see signals.AfterPublish)
        publish(image, options.output, overwrite=options.overwrite)
        mark_published()
        built.output = options.output
    reporter.info(f"image ready: {options.output} ({format_size(sizes.output)})")
    if options.report is not None:
        with ctx.timeline.step("Computing the image's sha256"):
            built.output_sha256 = hash_file(options.output, ChecksumAlgo.SHA256)
    if ctx.cache is not None:
        with ctx.timeline.step("Tidying the cache"):
            tidy_cache(ctx, plan)

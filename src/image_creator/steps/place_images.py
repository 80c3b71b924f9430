"""OCI images into /data/images/: pulled for linux/arm64/v8, or downloaded from their url.

Pulled images are the platform manifest the check verified, pulled by its digest; they are
kept in the cache (as exported tars, keyed by reference and platform, versioned by that
digest) when the policy allows it.
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath

from image_creator.cache.downloads import Downloads, copy_file, image_cache_key
from image_creator.config.model import DATA_ROOT, IMAGES_DIR, Export
from image_creator.fetch import oci
from image_creator.fetch.oci import ExportedImage
from image_creator.placement import CancellableReader
from image_creator.plan import ImageSource, PlacedImage
from image_creator.sink import Sink
from image_creator.ui.base import Reporter
from image_creator.units import CHUNK

IMAGES_FOLDER = IMAGES_DIR.relative_to(DATA_ROOT)


def place_image(
    source: ImageSource,
    sink: Sink,
    cancelled: threading.Event,
    *,
    build_dir: Path,
    downloads: Downloads,
    reporter: Reporter,
) -> PlacedImage:
    """The image's docker-load tar at /data/images/NAME.tar, verified layer by layer."""
    image = source.image
    target = IMAGES_FOLDER / oci.export_filename(image.ident)
    origin = image.origin
    label = origin.url if isinstance(origin, Export) else image.ident
    # a host path: the export and its verification read and write a file
    with sink.local_file(target) as staging:
        if isinstance(origin, Export):
            with (
                reporter.progress(image.ident, source.filesize) as advance,
                downloads.open(
                    origin.url, remote=source.remote, on_progress=advance, cancelled=cancelled
                ) as fetched,
            ):
                reader = CancellableReader(fetched.stream, cancelled)
                with staging.open("wb") as file:
                    while chunk := reader.read(CHUNK):
                        file.write(chunk)
                # verified before the cache keeps it
                exported = oci.verify_export(staging, label=label)
                oci.check_tag(exported, image.ident, label=label)
            return _placed(target, exported, fetched.from_cache)
        with downloads.image_tar(
            image.ident,
            image_cache_key(image.ident),
            version=source.manifest_digest or "",
            size=source.filesize,
        ) as slot:
            if slot.cached_path is not None:
                copy_file(slot.cached_path, staging)
                return _placed(target, oci.verify_export(staging, label=label), from_cache=True)
            with reporter.progress(f"pulling {image.ident}", None) as advance:
                # the manifest the check verified, whatever the tag names by now
                exported = oci.export_image(
                    image.ident,
                    staging,
                    client=downloads.client,
                    build_dir=build_dir,
                    manifest_digest=source.manifest_digest,
                    on_progress=advance,
                    cancelled=cancelled,
                )
            slot.keep(staging)
            return _placed(target, exported, from_cache=False)


def _placed(target: PurePosixPath, exported: ExportedImage, from_cache: bool) -> PlacedImage:
    return PlacedImage(
        tar_name=target.name,
        size=exported.size,
        architecture=exported.architecture,
        from_cache=from_cache,
    )

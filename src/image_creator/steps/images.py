"""OCI images into /data/images/: pulled for linux/arm64/v8, or downloaded from their url."""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath

from image_creator.fetch import http, oci
from image_creator.fetch.oci import ExportedImage
from image_creator.steps.placement import CancellableReader, destination, staged
from image_creator.steps.sources import ImageSource
from image_creator.ui.base import Reporter

IMAGES_FOLDER = PurePosixPath("images")
CHUNK = 1024 * 1024


def place_image(
    source: ImageSource,
    root: Path,
    build_dir: Path,
    reporter: Reporter,
    cancelled: threading.Event,
) -> ExportedImage:
    """The image's docker-load tar at /data/images/NAME.tar, verified layer by layer."""
    image = source.image
    target = destination(root, IMAGES_FOLDER / oci.export_filename(image.ident))
    with staged(target) as staging:
        if image.url is None:
            with reporter.progress(f"pulling {image.ident}", None):
                oci.export_image(image.ident, staging, build_dir=build_dir)
        else:
            with (
                reporter.progress(image.ident, source.filesize) as advance,
                http.open_stream(image.url, on_progress=advance) as raw,
                staging.open("wb") as file,
            ):
                reader = CancellableReader(raw, cancelled)
                while chunk := reader.read(CHUNK):
                    file.write(chunk)
        return oci.verify_export(staging, label=image.url or image.ident)

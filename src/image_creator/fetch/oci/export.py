"""An image pulled for linux/arm64/v8 into a docker-load tar, every blob verified."""

from __future__ import annotations

import gzip
import hashlib
import tempfile
import threading
import zlib
from pathlib import Path

import docker_export

from image_creator.errors import Interrupted, SourceError
from image_creator.fetch.client import HttpClient
from image_creator.fetch.oci.documents import (
    GZIP_MEDIA_SUFFIXES,
    PLAIN_TAR_MEDIA_SUFFIXES,
    Descriptor,
    PlatformManifest,
    describe_error,
    shown,
)
from image_creator.fetch.oci.inspect import image_config, inflated_size, platform_manifest
from image_creator.fetch.oci.registry import NETWORK_ERRORS, Registry
from image_creator.fetch.oci.tar import ExportedImage, verify_export
from image_creator.progress import ProgressCallback, no_progress
from image_creator.units import CHUNK

# What a layer may inflate to beyond the size its gzip trailer (ISIZE) gives: the size the
# check planned for. A trailer is exact for the single-member gzip streams registries serve.
LAYER_SLACK = 1024 * 1024


def export_image(
    ident: str,
    target: Path,
    *,
    client: HttpClient,
    build_dir: Path,
    manifest_digest: str | None = None,
    on_progress: ProgressCallback = no_progress,
    cancelled: threading.Event | None = None,
) -> ExportedImage:
    """Pull ``ident`` for linux/arm64/v8 into the docker-load tar ``target``, verified.

    With ``manifest_digest`` (the one a check verified), that manifest is pulled, whatever
    the tag names now; without it, the one the index names. When ``cancelled`` is set, the
    transfer under way is cut and Interrupted raised.
    """
    try:
        registry = Registry(ident, client, cancelled)
        manifest = platform_manifest(registry, manifest_digest)
        config = image_config(registry, manifest)
        _write_export(
            registry, manifest, config, target, build_dir=build_dir, on_progress=on_progress
        )
    # EOFError, zlib.error: a layer that is not the gzip stream its media type says
    except (*NETWORK_ERRORS, ValueError, EOFError, zlib.error) as exc:
        raise SourceError(f"{ident}: export failed: {describe_error(exc)}") from exc
    return verify_export(target, label=ident, config_digest=manifest.config.digest)


def _write_export(
    registry: Registry,
    manifest: PlatformManifest,
    config: bytes,
    target: Path,
    *,
    build_dir: Path,
    on_progress: ProgressCallback,
) -> None:
    """docker-export's tar layout, from blobs downloaded and verified here. Every name comes
    from a checked digest: layer folders are hashes of them, the config is ``<hex>.json``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(suffix=".tmp", prefix=target.stem, dir=build_dir) as work:
        image_dir = Path(work)
        parent_id = layer_id = ""
        members: list[str] = []
        for number, layer in enumerate(manifest.layers):
            layer_id = docker_export.make_layer_id(parent_id, {"digest": layer.digest})
            layer_dir = image_dir / layer_id
            layer_dir.mkdir()
            _download_layer(registry, layer, number, layer_dir, on_progress)
            members.append(f"{layer_id}/layer.tar")
            parent_id = docker_export.write_layer_metadata(
                layer_dir=layer_dir,
                layer_id=layer_id,
                parent_id=parent_id,
                layer={"digest": layer.digest},
                manifest=manifest.document,
            )
        image = registry.image
        docker_export.bundle_image(
            image=image,
            image_dir=image_dir,
            target=target,
            manifest=[
                {
                    "Config": f"{manifest.config.digest.removeprefix('sha256:')}.json",
                    "RepoTags": [f"{image.reg_fullname}:{image.tag}"],
                    "Layers": members,
                }
            ],
            config=config,
            latest_layer_id=layer_id,
        )


def _download_layer(
    registry: Registry,
    layer: Descriptor,
    number: int,
    layer_dir: Path,
    on_progress: ProgressCallback,
) -> None:
    """``layer_dir/layer.tar``: the blob hashed as downloaded (never more than its size),
    checked against its digest, then decompressed."""
    ident, what = registry.ident, f"layers[{number}]"
    plain = layer.media_type.endswith(PLAIN_TAR_MEDIA_SUFFIXES)
    if not plain and not layer.media_type.endswith(GZIP_MEDIA_SUFFIXES):
        raise SourceError(f"{ident}: {what} is {shown(layer.media_type)}, not a (gzip) tar")
    blob = layer_dir / ("layer.tar" if plain else "layer_gzip.tar")
    digest = hashlib.sha256()
    received = 0
    url = registry.url("blobs", layer.digest)
    with registry.watched() as watch:
        with (
            registry.get(url, what=what, watch=watch) as response,
            blob.open("wb") as file,
            registry.reporting_cuts(watch, what, url),
        ):
            # read1: what has arrived, so that the watch sees a slow link's progress; the
            # blob as served (its digest is over these bytes, whatever the encoding says)
            while chunk := response.raw.read1(CHUNK, decode_content=False):
                received += len(chunk)
                watch.received(len(chunk))
                if received > layer.size:
                    raise SourceError(
                        f"{ident}: {what} does not match its digest {layer.digest}: "
                        f"more than the {layer.size} bytes the manifest gives"
                    )
                digest.update(chunk)
                file.write(chunk)
                on_progress(len(chunk))
        error = registry.cut_error(watch, what, url) if watch.was_cut is not None else None
        if error is not None:
            raise error
    actual = f"sha256:{digest.hexdigest()}"
    if actual != layer.digest:
        raise SourceError(
            f"{ident}: {what} does not match its digest {layer.digest} (got {actual})"
        )
    if not plain:
        _inflate_layer(registry, layer, what, blob, layer_dir / "layer.tar")


def _inflate_layer(
    registry: Registry, layer: Descriptor, what: str, blob: Path, target: Path
) -> None:
    """``target``: the verified gzip ``blob`` decompressed, never past the size its trailer
    gives (the size the check planned) plus LAYER_SLACK: a small blob may inflate to
    anything, and the build folder is on the host's disk."""
    with blob.open("rb") as file:
        file.seek(-4, 2)
        planned = inflated_size(int.from_bytes(file.read(4), "little"), layer.size)
    limit = planned + LAYER_SLACK
    written = 0
    with gzip.open(blob, "rb") as source, target.open("wb") as sink:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise SourceError(
                    f"{registry.ident}: {what} ({layer.digest}) inflates past the {planned} "
                    f"bytes its gzip trailer gives (and {LAYER_SLACK} bytes of slack); refused"
                )
            sink.write(chunk)
            if registry.cancelled is not None and registry.cancelled.is_set():
                raise Interrupted("cancelled")
    blob.unlink()

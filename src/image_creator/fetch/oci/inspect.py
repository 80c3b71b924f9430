"""What the registry says of an image for linux/arm64/v8, verified, without its layers."""

from __future__ import annotations

import requests
from docker_export import Platform

from image_creator.config.model import OCI_PLATFORM
from image_creator.errors import SourceError
from image_creator.fetch import watch as watching
from image_creator.fetch.client import HttpClient
from image_creator.fetch.oci.documents import (
    GZIP_MEDIA_SUFFIXES,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    PLAIN_TAR_MEDIA_SUFFIXES,
    Descriptor,
    PlatformManifest,
    RemoteImage,
    Shape,
    checked_digest,
    describe_error,
    platform,
    shown,
    verify_document,
)
from image_creator.fetch.oci.registry import NETWORK_ERRORS, Registry


def _platform_digest(registry: Registry) -> str:
    """The digest the image's index names for linux/arm64/v8 (well-formed)."""
    image, ident = registry.image, registry.ident
    wanted = platform()
    reference = image.digest or image.tag
    if image.digest:
        checked_digest(image.digest, label=f"{ident}: the digest in the reference")
    raw = registry.read(
        registry.url("manifests", reference),
        accept=INDEX_MEDIA_TYPES,
        what="the index",
        limit=MAX_MANIFEST_BYTES,
    )
    if image.digest:
        verify_document(raw, image.digest, label=f"{ident}: the index")
    shape = Shape(ident, "index")
    index = shape.mapping(shape.parse(raw), "the document")
    if "manifests" not in index:
        # A single-platform image: docker-export takes those as linux/amd64.
        raise SourceError(
            f"{ident}: no {wanted} image in the registry (single-platform image, linux/amd64)"
        )
    available: list[str] = []
    for number, value in enumerate(shape.sequence(index["manifests"], "manifests")):
        entry = shape.mapping(value, f"manifests[{number}]")
        if not entry.get("platform"):
            continue
        payload = shape.mapping(entry["platform"], f"manifests[{number}].platform")
        for key in ("os", "architecture", "variant"):
            if key in payload:
                shape.text(payload[key], f"manifests[{number}].platform.{key}")
        candidate = Platform.from_payload(payload)
        if candidate == wanted:
            return shape.digest(entry.get("digest"), f"manifests[{number}].digest")
        available.append(str(candidate))
    raise SourceError(
        f"{ident}: no {wanted} image in the registry; "
        f"it has: {', '.join(available) or 'no platform at all'}"
    )


def platform_manifest(registry: Registry, digest: str | None) -> PlatformManifest:
    """The linux/arm64/v8 manifest: the one named ``digest``, else the one the index names."""
    ident = registry.ident
    if digest is None:
        digest = _platform_digest(registry)
    checked_digest(digest, label=f"{ident}: the {OCI_PLATFORM} manifest's digest")
    what = f"the {OCI_PLATFORM} manifest"
    raw = registry.read(
        registry.url("manifests", digest),
        accept=MANIFEST_MEDIA_TYPES,
        what=what,
        limit=MAX_MANIFEST_BYTES,
    )
    verify_document(raw, digest, label=f"{ident}: {what}")
    shape = Shape(ident, f"{OCI_PLATFORM} manifest")
    document = shape.mapping(shape.parse(raw), "the document")
    config = shape.descriptor(document.get("config"), "config")
    listed = shape.sequence(document.get("layers"), "layers")
    if not listed:
        raise SourceError(f"{ident}: the {OCI_PLATFORM} manifest has no layers")
    layers = tuple(shape.descriptor(layer, f"layers[{n}]") for n, layer in enumerate(listed))
    return PlatformManifest(digest=digest, document=document, config=config, layers=layers)


def image_config(registry: Registry, manifest: PlatformManifest) -> bytes:
    """The image config, verified against ``config.digest``, listing one diff_id a layer."""
    ident = registry.ident
    raw = registry.read(
        registry.url("blobs", manifest.config.digest),
        what="the image config",
        limit=MAX_CONFIG_BYTES,
    )
    verify_document(raw, manifest.config.digest, label=f"{ident}: the image config")
    shape = Shape(ident, "image config")
    config = shape.mapping(shape.parse(raw), "the document")
    rootfs = shape.mapping(config.get("rootfs"), "rootfs")
    diff_ids = shape.sequence(rootfs.get("diff_ids"), "rootfs.diff_ids")
    if len(diff_ids) != len(manifest.layers):
        raise SourceError(
            f"{ident}: the image config lists {len(diff_ids)} layers, "
            f"the manifest {len(manifest.layers)}"
        )
    return raw


def _uncompressed_layer_size(registry: Registry, layer: Descriptor, number: int) -> int:
    """A layer's decompressed size without downloading it.

    A gzip member ends with ISIZE, its uncompressed length modulo 2^32, so a 4-byte ranged read
    of the blob gives it exactly (layers of 4 GiB and more are corrected by the compressed size).
    """
    ident, size = registry.ident, layer.size
    if layer.media_type.endswith(PLAIN_TAR_MEDIA_SUFFIXES):
        return size
    if not layer.media_type.endswith(GZIP_MEDIA_SUFFIXES):
        raise SourceError(
            f"{ident}: layer {layer.digest} is {shown(layer.media_type)}; give filesize and "
            "fullsize for this image in the config (get-oci-sizes prints them)"
        )
    if size < 4:
        raise SourceError(f"{ident}: layers[{number}] is {size} bytes, too small for gzip")
    url = registry.url("blobs", layer.digest)
    what = f"the end of layers[{number}]"
    with (
        registry.watched(deadline=watching.TEXT_DEADLINE) as watch,
        registry.reporting_cuts(watch, what, url),
    ):
        response = registry.send(
            url,
            watch,
            retries=registry.client.policy.quick_retries,
            headers={**registry.headers, "Range": f"bytes={size - 4}-{size - 1}"},
        )
        with response:
            if response.status_code != requests.codes.partial_content:
                raise SourceError(
                    f"{ident}: the registry does not serve ranges "
                    f"(HTTP {response.status_code}); "
                    "give filesize and fullsize for this image in the config"
                )
            tail = response.raw.read(4)
    if len(tail) != 4:
        raise SourceError(
            f"{ident}: the registry served {len(tail)} bytes for 4 of layers[{number}]"
        )
    return inflated_size(int.from_bytes(tail, "little"), size)


def inflated_size(isize: int, compressed: int) -> int:
    """A gzip stream's uncompressed size from its ISIZE (the size modulo 2^32)."""
    while isize < _least_inflated(compressed):  # wrapped around 2^32: 4 GiB or more
        isize += 1 << 32
    return isize


def _least_inflated(compressed: int) -> int:
    """The least a gzip stream of ``compressed`` bytes can decompress to. Incompressible data
    grows a little when gzipped (about 0.03% with zlib; 0.1% is allowed, plus the header and
    trailer), so a blob slightly larger than its ISIZE is no sign of a wrap."""
    return compressed - compressed // 1024 - 1024


def inspect_image(ident: str, client: HttpClient) -> RemoteImage:
    """The registry's description of ``ident`` for linux/arm64/v8 (no layer is downloaded):
    the manifest and the config are verified against their digests."""
    try:
        registry = Registry(ident, client)
        manifest = platform_manifest(registry, None)
        image_config(registry, manifest)
        layers = tuple(
            _uncompressed_layer_size(registry, layer, number)
            for number, layer in enumerate(manifest.layers)
        )
    except (*NETWORK_ERRORS, ValueError) as exc:
        raise SourceError(f"{ident}: {describe_error(exc)}") from exc
    return RemoteImage(
        ident=ident,
        manifest_digest=manifest.digest,
        layers_uncompressed=layers,
        config_size=manifest.config.size,
    )

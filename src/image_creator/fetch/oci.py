"""OCI images: inspect in the registry (digest, sizes) and export for linux/arm64/v8.

Pulling goes through docker-export (docker-load tar format). It does not verify layers,
so every export is checked here against the image config's diff_ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker_export
import requests
from docker_export import Image, Platform, RegistryAuth

from image_creator.config.model import OCI_PLATFORM
from image_creator.config.units import round_up
from image_creator.errors import SourceError
from image_creator.ui.base import ProgressCallback, no_progress

logger = logging.getLogger(__name__)

GZIP_MEDIA_SUFFIXES = ("gzip", "tar.gzip", "+gzip")
PLAIN_TAR_MEDIA_SUFFIXES = (".tar", "layer.v1.tar")
# Upper bound for what docker-export adds around the layers: a tar header for each member,
# each layer's VERSION and json, manifest.json, repositories, and the end-of-archive blocks.
_EXPORT_OVERHEAD_PER_LAYER = 8 * 1024
_EXPORT_OVERHEAD_FIXED = 32 * 1024
_TAR_BLOCK = 512


@dataclass(frozen=True)
class RemoteImage:
    """An image as the registry describes it for our platform."""

    ident: str
    manifest_digest: str
    layers_uncompressed: tuple[int, ...]
    config_size: int

    @property
    def extracted_size(self) -> int:
        """Bytes of the layers once decompressed (what the image occupies once loaded)."""
        return sum(self.layers_uncompressed)

    @property
    def export_size(self) -> int:
        """Upper bound for the size of docker-export's tar of this image."""
        padded = sum(round_up(size, _TAR_BLOCK) + _TAR_BLOCK for size in self.layers_uncompressed)
        return (
            padded
            + round_up(self.config_size, _TAR_BLOCK)
            + _EXPORT_OVERHEAD_PER_LAYER * len(self.layers_uncompressed)
            + _EXPORT_OVERHEAD_FIXED
        )


def platform() -> Platform:
    return Platform.parse(OCI_PLATFORM)


def parse_ident(ident: str) -> Image:
    return Image.parse(ident)


def export_filename(ident: str) -> str:
    """The tar's file name: docker-export's, so two versions of one image never collide."""
    return str(docker_export.get_export_filename(parse_ident(ident), platform()))


def _describe(exc: Exception) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text or type(exc).__name__


def _platform_manifest(image: Image, auth: RegistryAuth) -> tuple[str, dict[str, Any]]:
    """(digest, manifest) of the image for our platform; lists the platforms when absent."""
    wanted = platform()
    index = docker_export.get_manifests(image, auth)
    if "manifests" not in index:
        # A single-platform image: docker-export takes those as linux/amd64.
        raise SourceError(
            f"{image}: no {wanted} image in the registry (single-platform image, linux/amd64)"
        )
    available: list[str] = []
    for entry in index.get("manifests", []):
        if not entry.get("platform"):
            continue
        candidate = Platform.from_payload(entry["platform"])
        if candidate == wanted:
            digest = str(entry["digest"])
            return digest, docker_export.get_layers_manifest_for(image, auth, digest)
        available.append(str(candidate))
    raise SourceError(
        f"{image}: no {wanted} image in the registry; "
        f"it has: {', '.join(available) or 'no platform at all'}"
    )


def _uncompressed_layer_size(
    image: Image, auth: RegistryAuth, layer: dict[str, Any], session: requests.Session
) -> int:
    """A layer's decompressed size without downloading it.

    A gzip member ends with ISIZE, its uncompressed length modulo 2^32, so a 4-byte ranged read
    of the blob gives it exactly (layers of 4 GiB and more are corrected by the compressed size).
    """
    media_type = str(layer.get("mediaType", ""))
    size = int(layer["size"])
    if media_type.endswith(PLAIN_TAR_MEDIA_SUFFIXES):
        return size
    if not media_type.endswith(GZIP_MEDIA_SUFFIXES):
        raise SourceError(
            f"{image}: layer {layer['digest']} is {media_type}; give filesize and fullsize "
            "for this image in the config (get-oci-sizes prints them)"
        )
    url = f"https://{image.registry}/v2/{image.fullname}/blobs/{layer['digest']}"
    response = session.get(
        url,
        headers={**auth.headers, "Range": f"bytes={size - 4}-{size - 1}"},
        timeout=docker_export.REQUEST_TIMEOUT,
        stream=True,
    )
    with response:
        if response.status_code != 206:
            raise SourceError(
                f"{image}: the registry does not serve ranges (HTTP {response.status_code}); "
                "give filesize and fullsize for this image in the config"
            )
        tail = response.raw.read(4)
    isize = int.from_bytes(tail, "little")
    while isize < size:  # wrapped around 2^32: a layer of 4 GiB or more
        isize += 1 << 32
    return isize


def inspect_image(ident: str) -> RemoteImage:
    """The registry's description of ``ident`` for linux/arm64/v8 (no layer is downloaded)."""
    image = parse_ident(ident)
    try:
        auth = RegistryAuth.init(image)
        auth.authenticate()
        digest, manifest = _platform_manifest(image, auth)
        with requests.Session() as session:
            layers = tuple(
                _uncompressed_layer_size(image, auth, layer, session)
                for layer in manifest.get("layers", [])
            )
    except SourceError:
        raise
    except (requests.RequestException, OSError, ValueError, KeyError) as exc:
        raise SourceError(f"{ident}: {_describe(exc)}") from exc
    if not layers:
        raise SourceError(f"{ident}: the {OCI_PLATFORM} manifest has no layers")
    return RemoteImage(
        ident=ident,
        manifest_digest=digest,
        layers_uncompressed=layers,
        config_size=int(manifest.get("config", {}).get("size", 0)),
    )


class _ReporterBar:
    """Stands in for docker-export's own progress bar (which draws on the terminal whatever
    the UI): layer downloads go to the progress callback of the pulling thread instead."""

    def __init__(self, total: int | None = None) -> None:
        self._advance: ProgressCallback = getattr(_pulling, "advance", no_progress)

    def callback(self, bytes_amount: int) -> None:
        self._advance(bytes_amount)

    def finish(self) -> None:
        pass


_pulling = threading.local()


def export_image(
    ident: str, target: Path, *, build_dir: Path, on_progress: ProgressCallback = no_progress
) -> ExportedImage:
    """Pull ``ident`` for linux/arm64/v8 into the docker-load tar ``target``, verified."""
    image = parse_ident(ident)
    docker_export.VisualProgressBar = _ReporterBar
    _pulling.advance = on_progress
    try:
        # Check the platform first: docker-export's own error does not list alternatives.
        auth = RegistryAuth.init(image)
        auth.authenticate()
        _platform_manifest(image, auth)
        docker_export.export(image=image, platform=platform(), to=target, build_dir=build_dir)
    except SourceError:
        raise
    except (requests.RequestException, OSError, ValueError, KeyError) as exc:
        raise SourceError(f"{ident}: export failed: {_describe(exc)}") from exc
    finally:
        _pulling.advance = no_progress
    return verify_export(target, label=ident)


@dataclass(frozen=True)
class ExportedImage:
    repo_tags: tuple[str, ...]
    architecture: str
    size: int
    extracted_size: int


def verify_export(tar_path: Path, *, label: str) -> ExportedImage:
    """Check every layer of a docker-load tar against its config's diff_ids; describe the image."""
    try:
        with tarfile.open(tar_path) as tar:
            manifest = _read_json(tar, "manifest.json")[0]
            config = _read_json(tar, manifest["Config"])
            expected = list(config.get("rootfs", {}).get("diff_ids", []))
            actual = [_sha256_member(tar, name) for name in manifest["Layers"]]
            extracted = sum(member.size for member in tar.getmembers() if member.isfile())
    except (tarfile.TarError, OSError, KeyError, IndexError, ValueError) as exc:
        raise SourceError(f"{label}: not a readable image tar: {_describe(exc)}") from exc
    if expected != actual:
        raise SourceError(
            f"{label}: layers do not match the image config "
            f"(expected diff_ids {expected}, got {actual})"
        )
    return ExportedImage(
        repo_tags=tuple(manifest.get("RepoTags") or ()),
        architecture=str(config.get("architecture", "")),
        size=tar_path.stat().st_size,
        extracted_size=extracted,
    )


def same_reference(first: str, second: str) -> bool:
    """Whether two image references name the same image (``alpine:3`` is
    ``docker.io/library/alpine:3``), as docker compares them."""
    try:
        return str(parse_ident(first)) == str(parse_ident(second))
    except ValueError:
        return False


def check_tag(exported: ExportedImage, ident: str, *, label: str) -> None:
    """A downloaded tar must be tagged ``ident``: the device loads every tar in /data/images
    with ``docker load``, which names the image by its first RepoTag, and the compose file
    asks for ``ident``."""
    if not exported.repo_tags:
        raise SourceError(
            f"{label}: the image tar has no tag (manifest.json RepoTags is empty), so the "
            f"device cannot find it as {ident}",
            hint=f"export it by name: docker save {ident} (or skopeo copy to docker-archive:"
            f"FILE:{ident})",
        )
    tag = exported.repo_tags[0]
    if not same_reference(tag, ident):
        raise SourceError(
            f"{label}: the image tar is tagged {tag}, not {ident}: the device would load it "
            f"as {tag}",
            hint=f"set ident: {tag} in the config, or export the tar as {ident}",
        )


def _read_json(tar: tarfile.TarFile, name: str) -> Any:
    member = tar.extractfile(name.lstrip("/")) or tar.extractfile(name)
    if member is None:
        raise KeyError(name)
    return json.load(member)


def _sha256_member(tar: tarfile.TarFile, name: str) -> str:
    member = tar.extractfile(name)
    if member is None:
        raise KeyError(name)
    digest = hashlib.sha256()
    while chunk := member.read(1 << 20):
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"

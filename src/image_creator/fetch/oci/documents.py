"""Registry documents: image names, digests, and the shape of the index, the platform
manifest and the image config, every value checked before it is used."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import docker_export
from docker_export import Image, Platform

from image_creator.config.model import OCI_PLATFORM
from image_creator.errors import SourceError
from image_creator.units import round_up

GZIP_MEDIA_SUFFIXES = ("gzip", "tar.gzip", "+gzip")
PLAIN_TAR_MEDIA_SUFFIXES = (".tar", "layer.v1.tar")
INDEX_MEDIA_TYPES = ", ".join((docker_export.CT_DOCKER_MANIFEST_LIST, docker_export.CT_OCI_INDEXES))
MANIFEST_MEDIA_TYPES = ", ".join((docker_export.CT_DOCKER_MANIFEST, docker_export.CT_OCI_MANIFEST))
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# The distribution spec lets registries refuse manifests over 4 MiB; configs are small too.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_SHOWN = 80  # characters of a registry's value quoted in an error
# Upper bound for what docker-export adds around the layers: a tar header for each member,
# each layer's VERSION and json, manifest.json, repositories, and the end-of-archive blocks.
EXPORT_OVERHEAD_PER_LAYER = 8 * 1024
EXPORT_OVERHEAD_FIXED = 32 * 1024
TAR_BLOCK = 512


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
        padded = sum(round_up(size, TAR_BLOCK) + TAR_BLOCK for size in self.layers_uncompressed)
        return (
            padded
            + round_up(self.config_size, TAR_BLOCK)
            + EXPORT_OVERHEAD_PER_LAYER * len(self.layers_uncompressed)
            + EXPORT_OVERHEAD_FIXED
        )


@dataclass(frozen=True)
class Descriptor:
    """A blob as a manifest names it; ``digest`` is well-formed."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class PlatformManifest:
    """The linux/arm64/v8 manifest, verified against ``digest`` and read."""

    digest: str
    document: dict[str, Any]  # as served (docker-export copies it into the last layer's json)
    config: Descriptor
    layers: tuple[Descriptor, ...]


def platform() -> Platform:
    return Platform.parse(OCI_PLATFORM)


def parse_ident(ident: str) -> Image:
    return Image.parse(ident)


def export_filename(ident: str) -> str:
    """The tar's file name: docker-export's, so two versions of one image never collide."""
    return str(docker_export.get_export_filename(parse_ident(ident), platform()))


def describe_error(exc: Exception) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text or type(exc).__name__


def shown(value: object) -> str:
    """A registry's value in one line of ASCII (control characters escaped), shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 3]}..."


def _sha256_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Shape:
    """Reads one registry document, refusing any value of the wrong type with its path."""

    ident: str
    document: str  # "index", "linux/arm64/v8 manifest", "image config"

    def malformed(self, path: str, expected: str, value: object) -> SourceError:
        return SourceError(
            f"{self.ident}: the registry's {self.document} is malformed: {path}: "
            f"expected {expected}, got {shown(value)}"
        )

    def parse(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise SourceError(
                f"{self.ident}: the registry's {self.document} is not JSON: {describe_error(exc)}"
            ) from exc

    def mapping(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.malformed(path, "an object", value)
        return value

    def sequence(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.malformed(path, "a list", value)
        return value

    def text(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            raise self.malformed(path, "a string", value)
        return value

    def size(self, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.malformed(path, "a size in bytes", value)
        return value

    def digest(self, value: object, path: str) -> str:
        return checked_digest(
            self.text(value, path),
            label=f"{self.ident}: the registry's {self.document} gives {path}",
        )

    def descriptor(self, value: object, path: str) -> Descriptor:
        fields = self.mapping(value, path)
        return Descriptor(
            digest=self.digest(fields.get("digest"), f"{path}.digest"),
            size=self.size(fields.get("size"), f"{path}.size"),
            media_type=self.text(fields.get("mediaType", ""), f"{path}.mediaType"),
        )


def checked_digest(digest: str, *, label: str) -> str:
    """``digest`` if it is ``sha256:<64 hex digits>`` (what a file or URL may be named after)."""
    if not DIGEST.fullmatch(digest):
        raise SourceError(f"{label}: {shown(digest)} is not sha256:<64 hex digits>")
    return digest


def verify_document(data: bytes, digest: str, *, label: str) -> None:
    actual = _sha256_of(data)
    if actual != digest:
        raise SourceError(f"{label} does not match its digest {digest} (got {actual})")

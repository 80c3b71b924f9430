"""Write small OCI image layouts (an index of per-platform images) without Docker.

The layout is pushed to the test registry with ``skopeo copy --all oci:DIR:TAG docker://...``.
Everything is deterministic (fixed timestamps, gzip without mtime, sorted JSON), so the same
files give the same digests, and changing a file changes them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = "1970-01-01T00:00:00Z"

# one layer: path inside the image -> content
LayerFiles = Mapping[str, bytes]
LayersSpec = Sequence[LayerFiles] | Callable[["OciPlatform"], Sequence[LayerFiles]]


@dataclass(frozen=True, order=True)
class OciPlatform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> OciPlatform:
        """``linux/arm64/v8`` or ``linux/amd64``."""
        parts = text.split("/")
        if len(parts) not in (2, 3):
            raise ValueError(f"not a platform: {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    @property
    def arch_name(self) -> str:
        """e.g. ``arm64v8``: what the default layer writes into etc/arch."""
        return self.architecture + self.variant

    def payload(self) -> dict[str, str]:
        payload = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            payload["variant"] = self.variant
        return payload


ARM64 = OciPlatform("linux", "arm64", "v8")
AMD64 = OciPlatform("linux", "amd64")
ARMV7 = OciPlatform("linux", "arm", "v7")


@dataclass(frozen=True)
class PlatformImage:
    """One platform's image inside a layout."""

    platform: OciPlatform
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]  # of the compressed blobs
    diff_ids: tuple[str, ...]  # of the uncompressed tars (what the config lists)
    files: Mapping[str, bytes]  # every layer merged, later layers winning


@dataclass(frozen=True)
class OciLayout:
    path: Path
    tag: str
    index_digest: str
    images: tuple[PlatformImage, ...]

    def image_for(self, platform: OciPlatform | str) -> PlatformImage:
        wanted = OciPlatform.parse(platform) if isinstance(platform, str) else platform
        for image in self.images:
            if image.platform == wanted:
                return image
        raise KeyError(f"{self.tag} has no {wanted} image")


def default_layers(tag: str) -> Callable[[OciPlatform], Sequence[LayerFiles]]:
    """One layer saying which platform and tag it is (so every image has distinct digests)."""

    def layers(platform: OciPlatform) -> Sequence[LayerFiles]:
        return [
            {
                "hello.txt": f"hello from {platform.arch_name} ({tag})\n".encode(),
                "etc/arch": f"{platform.arch_name}\n".encode(),
            }
        ]

    return layers


def layer_tar(files: LayerFiles) -> bytes:
    """An uncompressed, reproducible tar of ``files`` (parent folders are implied)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _write_blob(layout: Path, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    digest = _sha256(data)
    blob = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def build_layout(
    path: Path,
    tag: str,
    *,
    platforms: Sequence[OciPlatform] = (ARM64, AMD64),
    layers: LayersSpec | None = None,
) -> OciLayout:
    """Write an OCI layout at ``path`` holding one index (tagged ``tag``) of ``platforms``.

    ``layers`` is a list of layers (each a mapping of file -> content) used for every platform,
    or a function giving each platform its layers; the default is :func:`default_layers`.
    A single platform still gets an index: docker-export only reads multi-platform payloads.
    """
    if not platforms:
        raise ValueError("an image needs at least one platform")
    layers_for = default_layers(tag) if layers is None else layers
    path.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    descriptors: list[dict[str, Any]] = []
    images: list[PlatformImage] = []
    for platform in platforms:
        platform_layers = layers_for(platform) if callable(layers_for) else layers_for
        layer_descriptors: list[dict[str, Any]] = []
        diff_ids: list[str] = []
        merged: dict[str, bytes] = {}
        for files in platform_layers:
            raw = layer_tar(files)
            diff_ids.append(_sha256(raw))
            layer_descriptors.append(_write_blob(path, gzip.compress(raw, mtime=0), OCI_LAYER_GZIP))
            merged.update(files)
        config = {
            **platform.payload(),
            "created": EPOCH,
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": EPOCH, "created_by": "tests/support/oci_layout.py"}]
            * len(diff_ids),
        }
        config_descriptor = _write_blob(path, _json(config), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": layer_descriptors,
        }
        manifest_descriptor = _write_blob(
            path, _json(manifest), OCI_MANIFEST, platform=platform.payload()
        )
        descriptors.append(manifest_descriptor)
        images.append(
            PlatformImage(
                platform=platform,
                manifest_digest=manifest_descriptor["digest"],
                config_digest=config_descriptor["digest"],
                layer_digests=tuple(layer["digest"] for layer in layer_descriptors),
                diff_ids=tuple(diff_ids),
                files=merged,
            )
        )

    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    index_descriptor = _write_blob(
        path,
        _json(index),
        OCI_INDEX,
        annotations={"org.opencontainers.image.ref.name": tag},
    )
    (path / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [index_descriptor]})
    )
    return OciLayout(
        path=path, tag=tag, index_digest=index_descriptor["digest"], images=tuple(images)
    )


def retagged(source: Path, target: Path, tags: list[str] | None) -> Path:
    """A copy of the docker-load tar ``source`` whose manifest.json says ``RepoTags: tags``
    (None: no tag at all, as an image saved by its id)."""
    with tarfile.open(source) as tar_in, tarfile.open(target, "w") as tar_out:
        for member in tar_in.getmembers():
            handle = tar_in.extractfile(member) if member.isfile() else None
            if member.name == "manifest.json":
                assert handle is not None
                manifest = json.load(handle)
                for image in manifest:
                    image["RepoTags"] = tags
                data = json.dumps(manifest).encode()
                member.size = len(data)
                handle = io.BytesIO(data)
            tar_out.addfile(member, handle)
    return target

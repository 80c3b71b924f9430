"""A docker-load tar checked: its layers against the config's diff_ids, its tag."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_creator.errors import SourceError
from image_creator.fetch.oci.documents import describe_error, parse_ident, shown
from image_creator.units import CHUNK


@dataclass(frozen=True)
class ExportedImage:
    repo_tags: tuple[str, ...]
    architecture: str
    size: int
    extracted_size: int


def verify_export(tar_path: Path, *, label: str, config_digest: str | None = None) -> ExportedImage:
    """Check every layer of a docker-load tar against its config's diff_ids; describe the image.

    With ``config_digest``, the tar's config must be that blob, named after it.
    """
    try:
        with tarfile.open(tar_path) as tar:
            manifest = _read_json(tar, "manifest.json")[0]
            if config_digest is not None:
                _check_config_member(tar, manifest["Config"], config_digest, label=label)
            config = _read_json(tar, manifest["Config"])
            expected = list(config.get("rootfs", {}).get("diff_ids", []))
            actual = [_sha256_member(tar, name) for name in manifest["Layers"]]
            extracted = sum(member.size for member in tar.getmembers() if member.isfile())
    except (tarfile.TarError, OSError, KeyError, IndexError, ValueError) as exc:
        raise SourceError(f"{label}: not a readable image tar: {describe_error(exc)}") from exc
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


def _check_config_member(tar: tarfile.TarFile, name: str, digest: str, *, label: str) -> None:
    if name != f"{digest.removeprefix('sha256:')}.json":
        raise SourceError(f"{label}: the image tar's config is {shown(name)}, not {digest}")
    actual = _sha256_member(tar, name)
    if actual != digest:
        raise SourceError(f"{label}: the image tar's config does not match its digest {digest}")


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
    while chunk := member.read(CHUNK):
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"

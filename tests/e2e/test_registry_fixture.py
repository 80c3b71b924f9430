"""The session registry serves the pushed images to docker-export, per platform."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from docker_export import (
    Image,
    Platform,
    V2ImageNotFoundError,
    export,
    get_export_filename,
    get_image_digest,
)

from tests.support.oci_layout import AMD64, ARM64
from tests.support.registry import ImageSpec, Registry

pytestmark = pytest.mark.registry


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    handle = tar.extractfile(name)
    assert handle is not None, name
    return handle.read()


def _read_export(path: Path) -> tuple[dict[str, Any], dict[str, Any], list[bytes]]:
    """manifest entry, image config and layer tars of a `docker save`-style tar."""
    with tarfile.open(path) as tar:
        manifest = json.loads(_member(tar, "manifest.json"))[0]
        config = json.loads(_member(tar, manifest["Config"]))
        layers = [_member(tar, layer) for layer in manifest["Layers"]]
    return manifest, config, layers


def _layer_files(layer: bytes, tmp_path: Path) -> dict[str, bytes]:
    path = tmp_path / "layer.tar"
    path.write_bytes(layer)
    with tarfile.open(path) as tar:
        return {
            member.name: _member(tar, member.name) for member in tar.getmembers() if member.isfile()
        }


def test_export_arm64_of_multiarch_image(registry_env: Registry, tmp_path: Path) -> None:
    pushed = registry_env["test/hello:1.0"]
    image = Image.parse(pushed.ref)
    platform = Platform.parse("linux/arm64/v8")
    out = tmp_path / get_export_filename(image, platform)

    export(image=image, platform=platform, to=out, build_dir=tmp_path / "build")

    manifest, config, layers = _read_export(out)
    assert manifest["RepoTags"] == [f"{registry_env.host}/test/hello:1.0"]
    assert (config["os"], config["architecture"], config.get("variant")) == (
        "linux",
        "arm64",
        "v8",
    )
    # docker-export does not verify digests: check the layers against the config ourselves
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    assert diff_ids == config["rootfs"]["diff_ids"]
    expected = pushed.image_for(ARM64)
    assert tuple(diff_ids) == expected.diff_ids
    assert _layer_files(layers[0], tmp_path) == {
        "hello.txt": b"hello from arm64v8 (1.0)\n",
        "etc/arch": b"arm64v8\n",
    }
    assert dict(expected.files) == _layer_files(layers[0], tmp_path)


def test_export_amd64_and_tags_differ(registry_env: Registry, tmp_path: Path) -> None:
    image = Image.parse(registry_env["test/hello:2.0"].ref)
    platform = Platform.parse("linux/amd64")
    out = tmp_path / "hello2.tar"

    export(image=image, platform=platform, to=out, build_dir=tmp_path / "build")

    _, config, layers = _read_export(out)
    assert config["architecture"] == "amd64"
    assert _layer_files(layers[0], tmp_path)["hello.txt"] == b"hello from amd64 (2.0)\n"
    assert (
        registry_env["test/hello:2.0"].image_for(AMD64).manifest_digest
        != registry_env["test/hello:1.0"].image_for(AMD64).manifest_digest
    )


def test_registry_digests_match_the_pushed_layout(registry_env: Registry) -> None:
    pushed = registry_env["test/hello:1.0"]
    image = Image.parse(pushed.ref)
    for platform in (ARM64, AMD64):
        digest = get_image_digest(image, Platform.parse(str(platform)))
        assert digest == pushed.image_for(platform).manifest_digest


def test_amd64_only_image_has_no_arm64(registry_env: Registry, tmp_path: Path) -> None:
    pushed = registry_env["test/amd64only:1.0"]
    assert pushed.platforms == (AMD64,)
    with pytest.raises(V2ImageNotFoundError):
        export(
            image=Image.parse(pushed.ref),
            platform=Platform.parse("linux/arm64/v8"),
            to=tmp_path / "never.tar",
            build_dir=tmp_path / "build",
        )
    assert not (tmp_path / "never.tar").exists()


def test_push_custom_image_with_own_layers(registry_env: Registry, tmp_path: Path) -> None:
    pushed = registry_env.push(
        ImageSpec(
            "test/custom-layers",
            "0.1",
            platforms=(ARM64,),
            layers=[{"srv/a.txt": b"first\n"}, {"srv/a.txt": b"second\n", "srv/b.txt": b"b\n"}],
        )
    )
    assert pushed.image_for(ARM64).files == {"srv/a.txt": b"second\n", "srv/b.txt": b"b\n"}
    out = tmp_path / "custom.tar"
    export(
        image=Image.parse(pushed.ref),
        platform=Platform.parse("linux/arm64/v8"),
        to=out,
        build_dir=tmp_path / "build",
    )
    _, config, layers = _read_export(out)
    assert len(layers) == len(config["rootfs"]["diff_ids"]) == 2
    assert _layer_files(layers[0], tmp_path) == {"srv/a.txt": b"first\n"}
    assert _layer_files(layers[1], tmp_path)["srv/a.txt"] == b"second\n"


def test_unknown_tag_is_an_error(registry_env: Registry, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="404"):
        export(
            image=Image.parse(registry_env.ref("test/hello:9.9")),
            platform=Platform.parse("linux/arm64/v8"),
            to=tmp_path / "never.tar",
            build_dir=tmp_path / "build",
        )

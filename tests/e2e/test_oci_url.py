"""OCI images given as a downloadable tar (``oci_images[].url``) must carry the tag the
device will look for: it runs ``docker load`` on every tar in /data/images, which names the
image by ``manifest.json[0].RepoTags[0]``, and its compose file asks for ``ident``."""

from __future__ import annotations

import contextlib
import json
import sys
import tarfile
from pathlib import Path

import docker_export
import pytest
import yaml
from docker_export import Image, Platform

from image_creator.cli import main
from image_creator.demo import BaseImageLayout, make_base_image
from image_creator.fetch.oci import export_filename
from image_creator.ui.base import NullReporter
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage
from tests.support.leaks import assert_no_leaks
from tests.support.oci_layout import retagged
from tests.support.registry import Registry
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> BaseImageLayout:
    require_tools("sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "debugfs")
    return make_base_image(tmp_path_factory.mktemp("base") / "base.img")


@pytest.fixture
def exported(registry_env: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """test/hello:1.0 for arm64, exported by docker-export (tagged with its reference)."""
    monkeypatch.setattr(docker_export, "progressbar", None)  # its bars would bind capsys
    target = tmp_path / "export" / "hello.tar"
    target.parent.mkdir()
    with contextlib.redirect_stdout(sys.stderr):
        docker_export.export(
            image=Image.parse(registry_env["test/hello:1.0"].ref),
            platform=Platform.parse("linux/arm64/v8"),
            to=target,
            build_dir=target.parent / "build",
        )
    return target


def build(
    tmp_path: Path, base: BaseImageLayout, ident: str, url: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, Path]:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"base": str(base.path), "oci_images": [{"ident": ident, "url": url}]},
        )
    )
    output = tmp_path / "out" / "hotspot.img"
    output.parent.mkdir(exist_ok=True)
    code = main([str(config), str(output)], reporter=NullReporter())
    return code, capsys.readouterr().err, output


def test_a_tar_tagged_with_its_ident_is_placed(
    base_image: BaseImageLayout,
    exported: Path,
    registry_env: Registry,
    http_server: HttpServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_root()
    ident = registry_env["test/hello:1.0"].ref
    url = http_server.add("/images/hello.tar", exported.read_bytes())
    code, stderr, output = build(tmp_path, base_image, ident, url, capsys)
    assert code == 0, stderr
    tree = BuiltImage.open(output).dump_data(tmp_path / "dump")
    placed = tree / "images" / export_filename(ident)
    assert placed.read_bytes() == exported.read_bytes()
    with tarfile.open(placed) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        assert json.load(handle)[0]["RepoTags"] == [ident]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (None, "the image tar has no tag (manifest.json RepoTags is empty)"),
        (["example.org/someone/else:9"], "the image tar is tagged example.org/someone/else:9"),
    ],
)
def test_a_tar_without_the_right_tag_is_refused(
    base_image: BaseImageLayout,
    exported: Path,
    registry_env: Registry,
    http_server: HttpServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tags: list[str] | None,
    expected: str,
) -> None:
    require_root()
    ident = registry_env["test/hello:1.0"].ref
    data = retagged(exported, tmp_path / "retagged.tar", tags).read_bytes()
    url = http_server.add("/images/hello.tar", data)
    code, stderr, output = build(tmp_path, base_image, ident, url, capsys)
    assert code == 4, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and url in errors[0] and expected in errors[0], stderr
    assert "hint: " in stderr and "Traceback" not in stderr
    assert not output.exists()
    assert_no_leaks(output)

"""A base given as a release number is verified against the md5 published beside it.

Real releases sit on a MirrorBrain server that serves ``<image>.md5`` (``md5sum`` text). The
release URL is pointed at the loopback server with IMAGE_CREATOR_BASE_URL_TEMPLATE.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_creator.cli import main
from image_creator.config.model import BASE_URL_TEMPLATE_ENV
from image_creator.demo import BaseImageLayout, make_base_image
from image_creator.ui.base import NullReporter
from tests.support.httpserver import HttpServer
from tests.support.leaks import assert_no_leaks
from tests.support.requirements import require_root, require_tools

VERSION = "1.4.2"
IMAGE_PATH = f"/base/offspot-base-arm64-{VERSION}.img.xz"


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> BaseImageLayout:
    require_tools("sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "xz")
    return make_base_image(tmp_path_factory.mktemp("base") / "base.img", xz=True)


@pytest.fixture
def release(
    http_server: HttpServer, base_image: BaseImageLayout, monkeypatch: pytest.MonkeyPatch
) -> HttpServer:
    assert base_image.xz_path is not None
    http_server.add_file(IMAGE_PATH, base_image.xz_path)
    monkeypatch.setenv(
        BASE_URL_TEMPLATE_ENV, http_server.url("/base/offspot-base-arm64-{version}.img.xz")
    )
    return http_server


def md5_text(data: bytes) -> bytes:
    return f"{hashlib.md5(data).hexdigest()}  offspot-base-arm64-{VERSION}.img.xz\n".encode()


def run(
    tmp_path: Path, *options: str, output: Path | None = None
) -> tuple[int, NullReporter, dict[str, Any]]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"base": VERSION}))
    report = tmp_path / "report.json"
    reporter = NullReporter()
    outputs = [str(output)] if output is not None else []
    code = main(["--report", str(report), *options, str(config), *outputs], reporter=reporter)
    return code, reporter, json.loads(report.read_text())


def test_check_reads_the_published_md5(
    release: HttpServer, base_image: BaseImageLayout, tmp_path: Path
) -> None:
    assert base_image.xz_path is not None
    release.add(f"{IMAGE_PATH}.md5", md5_text(base_image.xz_path.read_bytes()))
    code, reporter, report = run(tmp_path, "--check")
    assert code == 0
    assert not [line for line in reporter.messages if "no checksum" in line]
    assert report["base"] == {**report["base"], "checksum": "pending"}  # will be verified
    assert any(record.path == f"{IMAGE_PATH}.md5" for record in release.requests)


def test_a_release_without_md5_is_a_warning(release: HttpServer, tmp_path: Path) -> None:
    code, reporter, report = run(tmp_path, "--check")
    assert code == 0
    assert report["base"] == {**report["base"], "checksum": "none"}
    warnings = [line for line in reporter.messages if "no checksum" in line]
    assert len(warnings) == 1, reporter.messages
    assert f"base {VERSION}: no checksum to verify it with" in warnings[0]
    assert f"{IMAGE_PATH}.md5" in warnings[0]


def test_a_build_fails_when_the_release_does_not_match_its_md5(
    release: HttpServer, tmp_path: Path
) -> None:
    require_root()
    require_tools("losetup", "e2fsck", "resize2fs")
    release.add(f"{IMAGE_PATH}.md5", md5_text(b"another image"))
    output = tmp_path / "out" / "hotspot.img"
    output.parent.mkdir()
    code, _, report = run(tmp_path, output=output)
    assert code == 4
    error = report["error"]
    assert isinstance(error, dict)
    assert "md5" in str(error["message"]) and IMAGE_PATH in str(error["message"])
    assert not output.exists()
    assert_no_leaks(output)

"""A volume without room for what goes there is named before anything is written."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import make_base_image
from image_creator.ui.console import ConsoleReporter
from tests.support.httpserver import HttpServer
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root
MIB = 2**20


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs."""
    require_root()
    volume = tmp_path / "small"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(volume)], check=True)
    try:
        yield volume
    finally:
        subprocess.run(["umount", str(volume)], check=True)


@pytest.fixture
def config(http_server: HttpServer, tmp_path: Path) -> Path:
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy")
    base = tmp_path / "base.img"
    make_base_image(base)
    http_server.add("/base.img", base.read_bytes())
    http_server.add("/big.zim", bytes(20 * MIB))
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": http_server.url("/base.img"),
                "files": [{"url": http_server.url("/big.zim"), "to": "/data/big.zim"}],
            }
        )
    )
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, reporter=ConsoleReporter(out, interactive=False))
    return code, out.getvalue(), capsys.readouterr().err


def test_short_output_volume_fails_the_build(
    config: Path, small_volume: Path, http_server: HttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    output = small_volume / "out.img"
    code, _, err = run([str(config), str(output)], capsys)
    assert code == 2
    assert f"not enough free space for {output}" in err
    assert list(small_volume.iterdir()) == []
    assert http_server.content_gets("/big.zim") == []


def test_short_cache_volume_is_named_and_check_only_warns(
    config: Path, small_volume: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--cache-dir", str(small_volume / "cache"), str(config)]
    code, _, err = run([*argv, str(tmp_path / "out.img")], capsys)
    assert code == 2
    assert f"not enough free space for {small_volume / 'cache'}" in err
    assert not (tmp_path / "out.img").exists()
    code, out, _ = run(["--check", *argv], capsys)
    assert code == 0
    assert "a build here would fail: not enough free space for" in out

"""Real orders, end to end: configs rendered by offspot-config's ``ConfigBuilder`` as the Kiwix
Hotspot ordering service renders them, checked and built with the worker's options, then read
back as the device would read them (without mounting anything).

Every source is local: the base image, ZIMs, archives, icons and readers come from the test
HTTP server, every image from the test registry (see tests/support/orders.py).
"""

from __future__ import annotations

import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_creator.cli import main
from image_creator.demo import make_base_image
from image_creator.ui.base import NullReporter
from tests.support import device
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage
from tests.support.orders import (
    EXPLICIT_OUTPUT_SIZE,
    ORDERS,
    OrderImage,
    OrderWorld,
    install_world,
    push_order_images,
    serve_world,
)
from tests.support.registry import LOOPBACK_NO_PROXY, Registry
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

BUILD_TOOLS = ("losetup", "e2fsck", "resize2fs", "tune2fs", "dumpe2fs", "mcopy", "debugfs")


@pytest.fixture(scope="module")
def order_images(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, OrderImage]]:
    """Stand-ins for every image an order can name, pushed once for the module and measured."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(registry.ca))
        patch.setenv("NO_PROXY", LOOPBACK_NO_PROXY)
        patch.setenv("no_proxy", LOOPBACK_NO_PROXY)
        yield push_order_images(registry, tmp_path_factory.mktemp("order-images"))


@dataclass(frozen=True)
class BaseImage:
    xz: bytes
    rootfs_size: int  # the bytes before the data partition, what the service calls rootfs_size


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> BaseImage:
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz")
    path = tmp_path_factory.mktemp("order-base") / "base.img"
    layout = make_base_image(path, xz=True)
    assert layout.xz_path is not None
    xz = layout.xz_path.read_bytes()
    assert lzma.decompress(xz) == path.read_bytes()
    return BaseImage(xz=xz, rootfs_size=layout.data.start_bytes)


@pytest.fixture
def world(
    http_server: HttpServer,
    registry_env: Registry,
    order_images: dict[str, OrderImage],
    base_image: BaseImage,
    monkeypatch: pytest.MonkeyPatch,
) -> OrderWorld:
    served = serve_world(
        http_server, order_images, base_xz=base_image.xz, rootfs_size=base_image.rootfs_size
    )
    install_world(monkeypatch, served)
    return served


def render(order: str, world: OrderWorld, folder: Path) -> tuple[Path, bytes]:
    """The order's YAML exactly as ConfigBuilder.render() returns it, written to a file."""
    text = ORDERS[order](world)
    config = folder / f"{order}.yaml"
    config.write_bytes(text.encode("utf-8"))
    return config, config.read_bytes()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv, reporter=NullReporter())
    return code, capsys.readouterr().err


def worker_build(
    config: Path, output: Path, cache: Path, build_dir: Path, *extra: str
) -> list[str]:
    """The worker's command line: image-creator --max-size 1TB --debug --cache-dir CACHE
    --build-dir TMP CONFIG OUT."""
    build_dir.mkdir(parents=True, exist_ok=True)
    return [
        "--max-size",
        "1TB",
        "--debug",
        "--cache-dir",
        str(cache),
        "--build-dir",
        str(build_dir),
        *extra,
        str(config),
        str(output),
    ]


def error_lines(stderr: str) -> str:
    """The error and hint lines of a run (its debug log is long)."""
    lines = [line for line in stderr.splitlines() if line.startswith(("error:", "hint:"))]
    return "\n".join(lines) or stderr[-3000:]


def read_back(output: Path, config_bytes: bytes, world: OrderWorld, dump: Path) -> list[str]:
    """Every problem found in the built image, as the device would meet them."""
    document = device.load_offspot_yaml(config_bytes.decode("utf-8"))
    built = BuiltImage.open(output)
    problems: list[str] = []
    try:
        built.fsck_data()
    except Exception as exc:  # report with the others
        problems.append(f"e2fsck of the data partition: {exc}")
    tree = built.dump_data(dump)
    problems += device.check_offspot_yaml(built.boot_file("offspot.yaml"), document)
    problems += device.check_image_loader(tree, document)
    problems += device.check_image_config(tree, config_bytes)
    problems += device.check_files(tree, document, world)
    problems += device.check_no_macos_junk(tree)
    return problems


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_real_order_checks_builds_and_reads_back(
    order: str, world: OrderWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_root()
    require_tools(*BUILD_TOOLS)
    config, config_bytes = render(order, world, tmp_path)
    if order in ("full", "sized"):
        # the case these orders are here for: an app's volume folder is also where its
        # archive extracts, so the builder puts a .touch inside the archive's destination
        inside = device.entries_inside_archives(device.load_offspot_yaml(config_bytes.decode()))
        assert "/data/contents/magoe.offspot.kiwix.org/.touch" in inside
        if order == "full":  # and edupi's archive goes into the file manager's volume
            assert "/data/contents/file-manager.offspot.kiwix.org/.touch" in inside

    code, stderr = run_cli(["--check", str(config)], capsys)
    assert code == 0, f"--check failed ({code}):\n{error_lines(stderr)}"

    output = tmp_path / "out" / "hotspot.img"
    output.parent.mkdir()
    argv = worker_build(config, output, tmp_path / "cache", tmp_path / "build")
    code, stderr = run_cli(argv, capsys)
    assert code == 0, f"build failed ({code}):\n{error_lines(stderr)}"
    assert sorted(path.name for path in output.parent.iterdir()) == ["hotspot.img"]
    if order == "sized":
        assert output.stat().st_size == EXPLICIT_OUTPUT_SIZE

    problems = read_back(output, config_bytes, world, tmp_path / "dump")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("order", ["zim_only", "full"])
def test_real_order_second_build_takes_everything_from_the_cache(
    order: str, world: OrderWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_root()
    require_tools(*BUILD_TOOLS)
    config, config_bytes = render(order, world, tmp_path)
    cache = tmp_path / "cache"
    first = tmp_path / "first" / "hotspot.img"
    first.parent.mkdir()
    code, stderr = run_cli(worker_build(config, first, cache, tmp_path / "build1"), capsys)
    assert code == 0, f"first build failed ({code}):\n{error_lines(stderr)}"

    world.server.clear_log()
    second = tmp_path / "second" / "hotspot.img"
    second.parent.mkdir()
    report = tmp_path / "second.json"
    argv = worker_build(config, second, cache, tmp_path / "build2", "--report", str(report))
    code, stderr = run_cli(argv, capsys)
    assert code == 0, f"second build failed ({code}):\n{error_lines(stderr)}"

    problems: list[str] = []
    for record in world.server.content_gets():
        if record.path.endswith(".md5"):
            # not content: the digest the cached copy is verified against as it is copied
            # (a cache's own record of a digest is not trusted, see docs/security.md)
            continue
        if record.range is not None:
            problems.append(f"{record.path}: read again (Range: {record.range})")
        else:
            problems.append(f"{record.path}: downloaded again")
    recorded = json.loads(report.read_text())
    problems += [
        f"{item['ident']}: image not taken from the cache"
        for item in recorded["oci_images"]
        if not item["from_cache"]
    ]
    problems += [
        f"{item['source']}: file not taken from the cache"
        for item in recorded["files"]
        if item["source"] is not None and not item["from_cache"]
    ]
    problems += read_back(second, config_bytes, world, tmp_path / "dump")
    assert not problems, "\n".join(problems)

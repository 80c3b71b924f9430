"""Builds with --cache-dir, end to end: what is downloaded, what is reused, what is refreshed."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_creator.cache.entry import EntryKind
from image_creator.cache.policy import load_policy
from image_creator.cache.store import CacheStore
from image_creator.cli import main
from image_creator.demo import make_base_image
from image_creator.ui.base import NullReporter
from tests.support.archives import tar_bytes, zip_bytes
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage, tree_digests
from tests.support.leaks import clean_leftovers, find_leftovers
from tests.support.registry import Registry
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root
IMAGE_CREATOR = Path(sys.executable).parent / "image-creator"

ZIM = b"ZIM\x04" + bytes(range(256)) * 2000
TREE = {"index.html": b"<p>cached</p>\n", "a/b.txt": b"b" * 3000}


@pytest.fixture
def served(http_server: HttpServer, tmp_path: Path) -> HttpServer:
    require_root()
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz", "debugfs", "losetup")
    base = tmp_path / "base" / "base.img"
    make_base_image(base, xz=True)
    http_server.add("/base.img.xz", base.with_name("base.img.xz").read_bytes())
    http_server.add("/zim/wiki_2024-01.zim", ZIM)
    http_server.add("/site.tar.gz", tar_bytes(TREE, "gz"))
    http_server.add("/site.zip", zip_bytes(TREE))
    return http_server


def write_config(path: Path, server: HttpServer, images: list[str]) -> Path:
    config: dict[str, Any] = {
        "base": server.url("/base.img.xz"),
        "oci_images": images,
        "files": [
            {
                "url": server.url("/zim/wiki_2024-01.zim"),
                "to": "/data/contents/zims/wiki.zim",
                "checksum": {"algo": "sha-256", "value": hashlib.sha256(ZIM).hexdigest()},
            },
            {
                "url": server.url("/site.tar.gz"),
                "to": "/data/contents/site",
                "via": "gztar",
                "size": 100_000,
            },
            {
                "url": server.url("/site.zip"),
                "to": "/data/contents/site-zip",
                "via": "zip",
                "checksum": {
                    "algo": "md5",
                    "value": hashlib.md5(zip_bytes(TREE)).hexdigest(),
                },
            },
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def build(config: Path, output: Path, cache: Path) -> int:
    return main(
        ["-X", "--cache-dir", str(cache), str(config), str(output)], reporter=NullReporter()
    )


def data_digests(image: Path, dump: Path) -> dict[str, str]:
    return tree_digests(BuiltImage.open(image).dump_data(dump))


def test_second_build_downloads_nothing(
    served: HttpServer, registry_env: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    image_ref = registry_env["test/hello:1.0"].ref
    config = write_config(tmp_path / "config.yaml", served, [image_ref])

    assert build(config, tmp_path / "first.img", cache) == 0
    first_gets = served.content_gets()
    assert {record.path for record in first_gets} == {
        "/base.img.xz",
        "/zim/wiki_2024-01.zim",
        "/site.tar.gz",
        "/site.zip",
    }
    assert (cache / "policy.yaml").is_file()
    store = CacheStore(cache, load_policy(cache))
    entries = {entry.source: entry for entry in store.entries()}
    assert set(entries) == {
        served.url("/base.img.xz"),
        served.url("/zim/wiki_2024-01.zim"),
        served.url("/site.tar.gz"),
        served.url("/site.zip"),
        image_ref,
    }
    assert entries[image_ref].kind is EntryKind.OCI_IMAGES
    zim_entry = entries[served.url("/zim/wiki_2024-01.zim")]
    assert (cache / "entries" / zim_entry.entry_id).read_bytes() == ZIM
    assert zim_entry.digests == {"sha-256": hashlib.sha256(ZIM).hexdigest()}
    assert list((cache / "tmp").iterdir()) == []

    served.clear_log()
    assert build(config, tmp_path / "second.img", cache) == 0
    assert served.content_gets() == []
    first = data_digests(tmp_path / "first.img", tmp_path / "d1")
    assert first == data_digests(tmp_path / "second.img", tmp_path / "d2")
    assert first["contents/site-zip/a/b.txt"] == hashlib.sha256(TREE["a/b.txt"]).hexdigest()
    used = {entry.source: entry.use_count for entry in store.entries()}
    assert set(used.values()) == {2}


def test_corrupt_entry_is_downloaded_again(served: HttpServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = write_config(tmp_path / "config.yaml", served, [])
    assert build(config, tmp_path / "first.img", cache) == 0
    store = CacheStore(cache, load_policy(cache))
    zim = store.lookup(EntryKind.FILES, served.url("/zim/wiki_2024-01.zim"))
    assert zim is not None
    content = cache / "entries" / zim.entry_id
    damaged = bytearray(content.read_bytes())
    damaged[100] ^= 0xFF
    content.write_bytes(bytes(damaged))

    served.clear_log()
    assert build(config, tmp_path / "second.img", cache) == 0
    assert [record.path for record in served.content_gets()] == ["/zim/wiki_2024-01.zim"]
    assert content.read_bytes() == ZIM
    assert data_digests(tmp_path / "second.img", tmp_path / "d")["contents/zims/wiki.zim"] == (
        hashlib.sha256(ZIM).hexdigest()
    )


@pytest.mark.parametrize(("check_after", "fetched_again"), [("0", True), ("30d", False)])
def test_changed_source_is_refreshed_after_check_after(
    served: HttpServer, tmp_path: Path, check_after: str, fetched_again: bool
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "policy.yaml").write_text(f"files:\n  check_after: {check_after}\n")
    site = served.url("/site.tar.gz")
    config = write_config(tmp_path / "config.yaml", served, [])
    assert build(config, tmp_path / "first.img", cache) == 0

    new_tree = {**TREE, "index.html": b"<p>new version</p>\n"}
    served.add("/site.tar.gz", tar_bytes(new_tree, "gz"))  # a new ETag
    served.clear_log()
    assert build(config, tmp_path / "second.img", cache) == 0
    # fetched whole again only when changed (its new size is learnt with ranged reads first)
    assert _full_gets(served) == (["/site.tar.gz"] if fetched_again else [])
    if not fetched_again:
        assert served.content_gets() == []
    index = data_digests(tmp_path / "second.img", tmp_path / "d")["contents/site/index.html"]
    expected = (new_tree if fetched_again else TREE)["index.html"]
    assert index == hashlib.sha256(expected).hexdigest()
    store = CacheStore(cache, load_policy(cache))
    assert store.lookup(EntryKind.FILES, site) is not None


def _full_gets(server: HttpServer) -> list[str]:
    """Paths fetched whole (ranged reads of a partition table are not downloads)."""
    return sorted(record.path for record in server.content_gets() if record.range is None)


def test_four_concurrent_builds_share_one_cache(
    served: HttpServer, registry_env: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    image_ref = registry_env["test/hello:2.0"].ref
    config = write_config(tmp_path / "config.yaml", served, [image_ref])
    served.fault("/zim/wiki_2024-01.zim", slow=200_000)  # long enough for the others to queue
    outputs = [tmp_path / f"build{index}" / "out.img" for index in range(4)]
    processes = []
    for output in outputs:
        output.parent.mkdir()
        processes.append(
            subprocess.Popen(
                [str(IMAGE_CREATOR), "--cache-dir", str(cache), str(config), str(output)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        results = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (log, _) in zip(processes, results, strict=True):
        assert process.returncode == 0, log
    for output in outputs:
        assert not find_leftovers(output).mounts
    assert _full_gets(served) == [
        "/base.img.xz",
        "/site.tar.gz",
        "/site.zip",
        "/zim/wiki_2024-01.zim",
    ]
    store = CacheStore(cache, load_policy(cache))
    entries = store.entries()
    assert len(entries) == 5
    assert {entry.use_count for entry in entries} == {4}
    for entry in entries:
        content = cache / "entries" / entry.entry_id
        assert content.stat().st_size == entry.size
    assert list((cache / "tmp").iterdir()) == []
    digests = [
        data_digests(output, tmp_path / f"dump{index}") for index, output in enumerate(outputs)
    ]
    assert all(digest == digests[0] for digest in digests)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGKILL])
def test_build_killed_while_downloading_adds_no_entry(
    served: HttpServer, tmp_path: Path, signal_number: int
) -> None:
    cache = tmp_path / "cache"
    config = write_config(tmp_path / "config.yaml", served, [])
    served.fault("/zim/wiki_2024-01.zim", slow=20_000)  # about 25 seconds for the whole file
    output = tmp_path / "out" / "killed.img"
    output.parent.mkdir()
    process = subprocess.Popen(
        [str(IMAGE_CREATOR), "--cache-dir", str(cache), str(config), str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(path.stat().st_size > 0 for path in (cache / "tmp").glob("*")):
            assert process.poll() is None, "the build ended before downloading"
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        process.send_signal(signal_number)
        process.wait(timeout=60)
    finally:
        process.kill()
        clean_leftovers(output)  # SIGKILL leaves the mount and the loop device behind
    store = CacheStore(cache, load_policy(cache))
    assert served.url("/zim/wiki_2024-01.zim") not in {entry.source for entry in store.entries()}
    if signal_number == signal.SIGTERM:
        assert process.returncode == 130
        assert list((cache / "tmp").iterdir()) == []
    # the next build does not take the leftover for an entry, downloads it, and tidies tmp/
    served.clear_faults()
    assert build(config, tmp_path / "next.img", cache) == 0
    assert served.url("/zim/wiki_2024-01.zim") in {entry.source for entry in store.entries()}
    assert list((cache / "tmp").iterdir()) == []

"""A build whose large plain file is fetched in segments, end to end: the image, the cache
entry and the report are those of a single-connection download; nothing is left behind."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from image_creator.cache.entry import CacheEntry, EntryKind
from image_creator.cache.policy import load_policy
from image_creator.cache.store import CacheStore
from image_creator.cli import main
from image_creator.demo import make_base_image
from image_creator.fetch import segmented
from image_creator.ui.base import NullReporter
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage, tree_digests
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

ZIM = b"ZIM\x04" + random.Random(7).randbytes(3 * 1024 * 1024 + 999)
ZIM_SHA256 = hashlib.sha256(ZIM).hexdigest()
SCHEMA = Path(__file__).parents[2] / "src" / "image_creator" / "schemas" / "report.schema.json"


@pytest.fixture
def served(http_server: HttpServer, tmp_path: Path) -> HttpServer:
    require_root()
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz", "debugfs", "losetup")
    base = tmp_path / "base" / "base.img"
    make_base_image(base, xz=True)
    http_server.add("/base.img.xz", base.with_name("base.img.xz").read_bytes())
    http_server.add("/zim/big.zim", ZIM)
    return http_server


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split a 3 MiB file the way a large one is."""
    monkeypatch.setattr(segmented, "MIN_SEGMENT", 512 * 1024)
    monkeypatch.setattr(segmented, "MIN_STEAL", 64 * 1024)


def write_config(path: Path, server: HttpServer) -> Path:
    config: dict[str, Any] = {
        "base": server.url("/base.img.xz"),
        "files": [
            {
                "url": server.url("/zim/big.zim"),
                "to": "/data/contents/zims/big.zim",
                "checksum": {"algo": "sha-256", "value": ZIM_SHA256},
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def build(config: Path, output: Path, cache: Path, report: Path) -> int:
    options = ["-X", "-T", "5", "--cache-dir", str(cache), "--report", str(report)]
    return main([*options, str(config), str(output)], reporter=NullReporter())


def file_report(report: Path) -> dict[str, Any]:
    document = json.loads(report.read_text())
    jsonschema.validate(document, json.loads(SCHEMA.read_text()))
    [entry] = document["files"]
    assert isinstance(entry, dict)
    return entry


def zim_entry(cache: Path, server: HttpServer) -> CacheEntry:
    entry = CacheStore(cache, load_policy(cache)).lookup(
        EntryKind.FILES, server.url("/zim/big.zim")
    )
    assert entry is not None
    return entry


def leftovers(root: Path) -> list[Path]:
    """Temporary names a download may leave: ``.NAME.xxxxxxxx.part`` and cache temporaries."""
    return [path for path in root.rglob("*") if path.name.endswith(".part")] + list(
        (root / "cache" / "tmp").iterdir()
    )


@pytest.mark.mounted_only  # a rootless build fetches a file on one connection
def test_a_large_file_comes_in_segments_and_lands_like_a_single_download(
    served: HttpServer, small_segments: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served.fault("/zim/big.zim", slow=2 * 1024 * 1024)  # per connection
    config = write_config(tmp_path / "config.yaml", served)
    cache = tmp_path / "cache"
    assert build(config, tmp_path / "first.img", cache, tmp_path / "first.json") == 0

    gets = served.content_gets("/zim/big.zim")
    assert len(gets) >= 2
    assert all(record.status == 206 and record.range for record in gets)
    assert sum(record.body_length for record in gets) >= len(ZIM)
    data = tree_digests(BuiltImage.open(tmp_path / "first.img").dump_data(tmp_path / "d1"))
    assert data["contents/zims/big.zim"] == ZIM_SHA256
    report = file_report(tmp_path / "first.json")
    assert report["connections"] >= 2
    assert report["mirrors"] == [{"url": served.url("/zim/big.zim"), "bytes": len(ZIM)}]
    assert report["checksum"] == "verified"
    segmented_entry = zim_entry(cache, served)
    assert (cache / "entries" / segmented_entry.entry_id).read_bytes() == ZIM
    assert leftovers(tmp_path) == []

    # the same build on one connection makes the same cache entry
    monkeypatch.setattr(segmented, "MIN_SEGMENT", 1 << 40)
    single_cache = tmp_path / "single-cache"
    served.clear_log()
    assert build(config, tmp_path / "single.img", single_cache, tmp_path / "single.json") == 0
    assert [record.range for record in served.content_gets("/zim/big.zim")] == [None]
    single_entry = zim_entry(single_cache, served)
    for name in ("size", "xxh3", "digests", "version", "key", "source", "kind"):
        assert getattr(segmented_entry, name) == getattr(single_entry, name), name
    assert file_report(tmp_path / "single.json")["connections"] == 1

    # and the cached copy serves the next build
    served.clear_log()
    assert build(config, tmp_path / "second.img", cache, tmp_path / "second.json") == 0
    assert served.content_gets("/zim/big.zim") == []
    assert file_report(tmp_path / "second.json")["connections"] == 0
    assert leftovers(tmp_path) == []


def test_a_server_without_ranges_gets_one_connection(
    served: HttpServer, small_segments: None, tmp_path: Path
) -> None:
    served.fault("/zim/big.zim", no_range=True)
    config = write_config(tmp_path / "config.yaml", served)
    assert build(config, tmp_path / "out.img", tmp_path / "cache", tmp_path / "r.json") == 0
    assert [(r.status, r.range) for r in served.content_gets("/zim/big.zim")] == [(200, None)]
    data = tree_digests(BuiltImage.open(tmp_path / "out.img").dump_data(tmp_path / "d"))
    assert data["contents/zims/big.zim"] == ZIM_SHA256
    assert file_report(tmp_path / "r.json")["connections"] == 1
    assert leftovers(tmp_path) == []


def test_a_mirror_dropping_connections_mid_segment_still_gives_the_file(
    served: HttpServer, small_segments: None, tmp_path: Path
) -> None:
    # the probe's HEAD is answered first: then three GETs are cut after 200 KiB
    served.fault("/zim/big.zim", drop_after=200 * 1024, times=4, slow=2 * 1024 * 1024)
    config = write_config(tmp_path / "config.yaml", served)
    assert build(config, tmp_path / "out.img", tmp_path / "cache", tmp_path / "r.json") == 0
    dropped = [r for r in served.requests_for("/zim/big.zim") if r.body_length == 200 * 1024]
    assert len(dropped) >= 2
    data = tree_digests(BuiltImage.open(tmp_path / "out.img").dump_data(tmp_path / "d"))
    assert data["contents/zims/big.zim"] == ZIM_SHA256
    entry = zim_entry(tmp_path / "cache", served)
    assert (tmp_path / "cache" / "entries" / entry.entry_id).read_bytes() == ZIM
    assert leftovers(tmp_path) == []


@pytest.mark.mounted_only  # a rootless build fetches a file on one connection
def test_a_bad_download_in_segments_leaves_nothing(
    served: HttpServer, small_segments: None, tmp_path: Path
) -> None:
    # another file of the same size and validators: the checksum catches it at the end
    served.fault("/zim/big.zim", corrupt=(2_000_000, 2_000_001))
    config = write_config(tmp_path / "config.yaml", served)
    assert build(config, tmp_path / "out.img", tmp_path / "cache", tmp_path / "r.json") != 0
    assert len(served.content_gets("/zim/big.zim")) >= 2
    entry = CacheStore(tmp_path / "cache", load_policy(tmp_path / "cache")).lookup(
        EntryKind.FILES, served.url("/zim/big.zim")
    )
    assert entry is None
    assert not (tmp_path / "out.img").exists()
    assert leftovers(tmp_path) == []

"""--show-cache: the cache's entries and what the policy would evict, changing nothing."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from image_creator.cache.downloads import version_of
from image_creator.cache.entry import EntryKind
from image_creator.cache.policy import load_policy
from image_creator.cache.store import CacheStore
from image_creator.cli import main
from image_creator.demo import make_base_image
from image_creator.fetch.client import HttpClient
from image_creator.ui.console import ConsoleReporter
from tests.support.httpserver import HttpServer
from tests.support.requirements import require_tools


def fill(store: CacheStore, source: str, content: bytes, version: str = "") -> None:
    with store.slot(EntryKind.FILES, source, source, version=version) as slot:
        assert slot.writer is not None
        slot.writer.write(content)
        slot.writer.complete = True


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, reporter=ConsoleReporter(out, interactive=False))
    return code, out.getvalue()


def test_show_cache_lists_entries_and_evictions(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "policy.yaml").write_text("max_num: 2\neviction: oldest\n")
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    store = CacheStore(cache, load_policy(cache), clock=lambda: clock[0])
    for index in range(3):
        clock[0] += timedelta(days=1)
        fill(store, f"https://example.org/file{index}.zim", b"x" * (1000 * (index + 1)))
    before = snapshot(cache)
    code, output = run(["--cache-dir", str(cache), "--show-cache"])
    assert code == 0
    assert "3 entries" in output
    for index in range(3):
        assert f"https://example.org/file{index}.zim" in output
    evicted = [line for line in output.splitlines() if "would evict" in line]
    assert len(evicted) == 1
    assert "file0.zim" in evicted[0]
    assert "over count" in evicted[0]
    assert snapshot(cache) == before


def test_check_with_show_cache_forecasts_for_a_config(
    http_server: HttpServer, tmp_path: Path
) -> None:
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy")
    base = tmp_path / "base.img"
    make_base_image(base)
    base_url = http_server.add("/base.img", base.read_bytes())
    cached_url = http_server.add("/cached.zim", b"cached" * 100)
    new_url = http_server.add("/new.zim", b"new" * 100)
    cache = tmp_path / "cache"
    store = CacheStore(cache, load_policy(cache))
    fill(store, cached_url, b"cached" * 100, version_of(HttpClient().probe(cached_url)))
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": base_url,
                "files": [
                    {"url": cached_url, "to": "/data/cached.zim"},
                    {"url": new_url, "to": "/data/new.zim"},
                ],
            }
        )
    )
    before = snapshot(cache)
    code, output = run(["--check", "--show-cache", "--cache-dir", str(cache), str(config)])
    assert code == 0, output
    assert f"cache hit: {cached_url}" in output
    assert f"cache: would add {new_url}" in output
    assert f"cache: would add {base_url}" in output
    assert snapshot(cache) == before
    assert http_server.content_gets("/cached.zim") == []


def test_looking_creates_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code, output = run(["--cache-dir", str(cache), "--show-cache"])
    assert code == 0, output
    assert "0 entries" in output
    assert not cache.exists()

"""A cache folder tampered with on disk, then a build: nothing outside the cache is touched,
no wrong bytes reach the image, every dropped entry is named, nothing crashes.

Whoever can write the cache folder can write anything in it: metadata naming host paths,
content replaced (with metadata claiming the right checksums), symlinks, folders and FIFOs
where files should be. The cache derives every path from its key, opens nothing through a
link, and verifies a config checksum on the bytes it copies, not on the metadata's word.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import xxhash
import yaml

from image_creator.cache.entry import EntryKind
from image_creator.cache.folder import id_for
from image_creator.cli import main
from image_creator.demo import make_base_image
from image_creator.errors import ExitCode
from image_creator.ui.base import NullReporter
from tests.support.canary import Canary, snapshot
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage, tree_digests
from tests.support.leaks import assert_no_leaks
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

ZIM = b"ZIM\x04" + bytes(range(256)) * 400  # checked by a sha-256 in the config
README = b"no checksum for this one\n" * 40  # no checksum: the cache is all there is
OTHER = bytes(reversed(ZIM))  # what a tamperer puts in instead: same size, other bytes


@pytest.fixture
def served(http_server: HttpServer, tmp_path: Path) -> HttpServer:
    require_root()
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz", "debugfs", "losetup")
    base = tmp_path / "base" / "base.img"
    make_base_image(base, xz=True)
    http_server.add("/base.img.xz", base.with_name("base.img.xz").read_bytes())
    http_server.add("/zim/wiki.zim", ZIM)
    http_server.add("/readme.txt", README)
    return http_server


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    return Canary.plant(tmp_path / "host")


class Setup:
    """A config, a cache filled by a first build, and the means to tamper with it."""

    def __init__(self, server: HttpServer, tmp_path: Path) -> None:
        self.server = server
        self.tmp_path = tmp_path
        self.cache = tmp_path / "cache"
        self.config = tmp_path / "config.yaml"
        config: dict[str, Any] = {
            "base": server.url("/base.img.xz"),
            "files": [
                {
                    "url": server.url("/zim/wiki.zim"),
                    "to": "/data/contents/zims/wiki.zim",
                    "checksum": {"algo": "sha-256", "value": hashlib.sha256(ZIM).hexdigest()},
                },
                {"url": server.url("/readme.txt"), "to": "/data/contents/readme.txt"},
            ],
        }
        self.config.write_text(yaml.safe_dump(config))
        self.zim = server.url("/zim/wiki.zim")
        self.readme = server.url("/readme.txt")
        self.base = server.url("/base.img.xz")

    def content(self, url: str) -> Path:
        return self.cache / "entries" / id_for(EntryKind.FILES, url)

    def meta(self, url: str) -> Path:
        return self.content(url).with_name(f"{self.content(url).name}.json")

    def rewrite_meta(self, url: str, **changes: Any) -> None:
        document = json.loads(self.meta(url).read_text())
        document.update(changes)
        self.meta(url).write_text(json.dumps(document))

    def build(self, name: str) -> int:
        self.server.clear_log()
        argv = ["-X", "--cache-dir", str(self.cache), str(self.config), str(self.tmp_path / name)]
        return main(argv, reporter=NullReporter())

    def downloaded(self) -> list[str]:
        """Paths downloaded whole (ranged reads of headers are not downloads)."""
        return sorted(r.path for r in self.server.content_gets() if r.range is None)

    def data(self, name: str) -> dict[str, str]:
        image = self.tmp_path / name
        return tree_digests(BuiltImage.open(image).dump_data(self.tmp_path / f"{name}.dump"))


def xxh3(data: bytes) -> str:
    return str(xxhash.xxh3_128(data).hexdigest())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def setup(served: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Setup:
    prepared = Setup(served, tmp_path)
    assert prepared.build("first.img") == 0
    assert prepared.content(prepared.zim).read_bytes() == ZIM
    assert prepared.content(prepared.readme).read_bytes() == README
    capsys.readouterr()
    return prepared


def assert_right_image(setup: Setup, name: str) -> None:
    data = setup.data(name)
    assert data["contents/zims/wiki.zim"] == sha256(ZIM)
    assert data["contents/readme.txt"] == sha256(README)


def warnings_of(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "unexpected" not in err, err
    return err.splitlines()


def assert_dropped(lines: list[str], entry: Path) -> None:
    """A one-line warning names the entry (by its path in the cache) and says it went."""
    named = [line for line in lines if entry.name in line and "dropped" in line]
    assert named, f"no warning dropping {entry.name}: {lines}"


@pytest.mark.parametrize(
    "aim",
    ["absolute", "relative"],
)
@pytest.mark.parametrize("claims", ["damaged", "the canary's size and digest"])
def test_metadata_naming_a_host_file_neither_deletes_nor_copies_it(
    setup: Setup, canary: Canary, capsys: pytest.CaptureFixture[str], aim: str, claims: str
) -> None:
    target = canary.root / "etc" / "passwd"
    if aim == "absolute":
        ident = str(target)
    else:  # from entries/, up to the filesystem root, then down to the canary
        ident = "../" * len(setup.content(setup.readme).parent.parts) + str(target).lstrip("/")
    secret = target.read_bytes()
    for url in (setup.zim, setup.readme):
        if claims == "damaged":
            setup.rewrite_meta(url, ident=ident, xxh3="0" * 32)
        else:  # what a hit on the host file would need: its size, xxh3, sha-256
            setup.rewrite_meta(
                url,
                ident=ident,
                size=len(secret),
                xxh3=xxh3(secret),
                digests={"sha-256": sha256(secret)},
            )

    assert setup.build("second.img") == 0
    lines = warnings_of(capsys)
    canary.assert_unchanged()
    assert_no_leaks(setup.tmp_path / "never-built.img")
    assert setup.downloaded() == ["/readme.txt", "/zim/wiki.zim"]
    assert_right_image(setup, "second.img")
    assert_dropped(lines, setup.content(setup.zim))
    assert_dropped(lines, setup.content(setup.readme))
    assert setup.content(setup.readme).read_bytes() == README  # kept again, its own
    assert json.loads(setup.meta(setup.zim).read_text())["ident"] == setup.content(setup.zim).name


def test_metadata_of_another_source_is_dropped(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """The readme's metadata, put beside the zim's content: it describes another entry."""
    readme = json.loads(setup.meta(setup.readme).read_text())
    setup.meta(setup.zim).write_text(json.dumps(readme))
    setup.content(setup.zim).write_bytes(README)

    assert setup.build("second.img") == 0
    assert_dropped(warnings_of(capsys), setup.content(setup.zim))
    assert setup.downloaded() == ["/zim/wiki.zim"]
    assert_right_image(setup, "second.img")


def test_other_bytes_with_the_right_checksum_claimed_never_reach_the_image(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Content replaced; the metadata claims the config's sha-256 and a recomputed xxh3.
    The checksum is verified on the bytes copied: the build fails, naming the URL, the
    entry is dropped, and the next build downloads it again."""
    setup.content(setup.zim).write_bytes(OTHER)
    setup.rewrite_meta(setup.zim, xxh3=xxh3(OTHER), digests={"sha-256": sha256(ZIM)})

    assert setup.build("second.img") == ExitCode.INVALID_SOURCES
    lines = warnings_of(capsys)
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1
    assert setup.zim in errors[0]
    assert "cached copy" in errors[0]
    assert_dropped(lines, setup.content(setup.zim))
    assert not setup.content(setup.zim).exists()
    assert not setup.meta(setup.zim).exists()
    assert_no_leaks(setup.tmp_path / "second.img")

    assert setup.build("third.img") == 0
    assert setup.downloaded() == ["/zim/wiki.zim"]
    assert_right_image(setup, "third.img")
    assert setup.content(setup.zim).read_bytes() == ZIM


@pytest.mark.parametrize("which", ["readme", "zim"])
def test_content_as_a_symlink_to_a_host_file_is_not_followed(
    setup: Setup, canary: Canary, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    url = setup.readme if which == "readme" else setup.zim
    target = canary.root / "var" / "lib" / "data.bin"
    secret = target.read_bytes()
    content = setup.content(url)
    content.unlink()
    content.symlink_to(target)
    setup.rewrite_meta(
        url, size=len(secret), xxh3=xxh3(secret), digests={"sha-256": sha256(secret)}
    )

    assert setup.build("second.img") == 0
    lines = warnings_of(capsys)
    canary.assert_unchanged()
    assert_dropped(lines, content)
    assert setup.downloaded() == [f"/{url.split('/', 3)[3]}"]
    assert_right_image(setup, "second.img")
    assert not content.is_symlink()
    assert_no_leaks(setup.tmp_path / "never-built.img")


def plant_foreign_things(setup: Setup, canary: Canary) -> dict[str, Path]:
    """Everything the cache did not put there; returns the entries it touches."""
    entries = setup.cache / "entries"
    (entries / "notes.txt").write_text("left by someone\n")
    (entries / "some-folder").mkdir()
    (entries / "some-folder" / "file").write_text("x")
    (entries / ("f" * 32)).symlink_to(canary.root / "etc" / "shadow")
    (entries / f"{'e' * 32}.json").symlink_to(canary.root / "etc" / "passwd")
    (setup.cache / "tmp" / "stray-folder").mkdir()
    (setup.cache / "tmp" / f"{'d' * 32}.partial").symlink_to(canary.root / "home")
    (setup.cache / "stray.bin").write_bytes(b"stray")
    # a folder where the readme's content file should be
    readme = setup.content(setup.readme)
    readme.unlink()
    readme.mkdir()
    (readme / "inside").write_text("kept")
    # the zim's metadata is a FIFO: opening it to read would block forever
    zim_meta = setup.meta(setup.zim)
    zim_meta.unlink()
    os.mkfifo(zim_meta)
    # the base image's metadata is huge, not JSON
    setup.meta(setup.base).write_bytes(b"[" * (1024 * 1024))
    # a lock file is a dangling link into the canary: opening it would create a host file
    lock = setup.cache / "locks" / f"{setup.content(setup.zim).name}.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(canary.root / "etc" / "created-by-lock")
    return {"readme": readme, "zim": setup.content(setup.zim), "base": setup.content(setup.base)}


def test_foreign_files_are_ignored_or_dropped_never_followed(
    setup: Setup, canary: Canary, capsys: pytest.CaptureFixture[str]
) -> None:
    touched = plant_foreign_things(setup, canary)

    assert setup.build("second.img") == 0
    lines = warnings_of(capsys)
    canary.assert_unchanged()
    assert_no_leaks(setup.tmp_path / "never-built.img")
    assert_right_image(setup, "second.img")
    assert setup.downloaded() == ["/base.img.xz", "/readme.txt", "/zim/wiki.zim"]
    assert_dropped(lines, touched["zim"])
    assert_dropped(lines, touched["base"])
    # the folder cannot be replaced by an entry: the readme is not kept, and that is told
    assert any(touched["readme"].name in line and "not kept" in line for line in lines), lines
    assert (touched["readme"] / "inside").read_text() == "kept"
    assert any("notes.txt" in line and "ignored" in line for line in lines), lines
    assert setup.meta(setup.zim).is_file()  # a new entry replaced the FIFO
    assert setup.content(setup.zim).read_bytes() == ZIM
    assert (setup.cache / "entries" / "notes.txt").read_text() == "left by someone\n"
    for line in lines:
        assert "\n" not in line and len(line) < 1000


def test_looking_at_a_tampered_cache_writes_nothing(
    setup: Setup, canary: Canary, capsys: pytest.CaptureFixture[str]
) -> None:
    plant_foreign_things(setup, canary)
    setup.rewrite_meta(setup.readme, ident=str(canary.root / "etc" / "passwd"))
    before = snapshot(setup.cache)

    assert main(["--cache-dir", str(setup.cache), "--show-cache"], reporter=NullReporter()) == 0
    show_lines = warnings_of(capsys)
    assert (
        main(
            ["--check", "--cache-dir", str(setup.cache), str(setup.config)], reporter=NullReporter()
        )
        == 0
    )
    check_lines = warnings_of(capsys)

    assert snapshot(setup.cache) == before
    canary.assert_unchanged()
    for lines in (show_lines, check_lines):
        assert any("ignored" in line and setup.content(setup.zim).name in line for line in lines)
        assert not any("dropped" in line for line in lines)

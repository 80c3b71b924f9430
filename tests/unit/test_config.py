"""The config loader: every form the spec allows, every bad input named by its key path."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from image_creator.cli import parse_options
from image_creator.config.document import parse_yaml
from image_creator.config.loader import LoadedConfig, load_config, parse_config
from image_creator.config.model import (
    BASE_URL_TEMPLATE_ENV,
    ChecksumKind,
    Download,
    Export,
    Inline,
    Pull,
    Via,
)
from image_creator.digests import ChecksumAlgo
from image_creator.errors import ConfigError

SPEC_SAMPLE = """\
---
base: 1.0.0
output:
  size: 8G
oci_images:
- ghcr.io/offspot/kiwix-serve:dev
files:
- url: http://download.kiwix.org/zim/wikipedia_fr_test.zim
  to: /data/contents/zims/wikipedia_fr_test.zim
  via: direct
- to: /data/conf/message.txt
  content: |
    hello world
wite_config: true
offspot:
  timezone: Africa/Bamako
  ap:
    ssid: Kiwix Offspot
    as-gateway: true
    domain: demo
    tld: offspot
  containers:
    services:
      kiwix:
        container_name: kiwix
        image: ghcr.io/offspot/kiwix-serve:dev
        command: /bin/sh -c "kiwix-serve /data/*.zim"
        volumes:
          - "/data/contents/zims:/data:ro"
        ports:
          - "80:80"
"""

REAL_WORLD = """\
base:
  source: https://drive.offspot.it/base/offspot-base-arm64-1.10.0.img.xz
  rootfs_size: 3GiB
  checksum:
    algo: sha-256
    value: https://drive.offspot.it/base/offspot-base-arm64-1.10.0.img.xz.sha256
    kind: url
output:
  size: auto
oci_images:
- ident: ghcr.io/offspot/kiwix-serve:3.7.0
  url: null
  filesize: 52090880
  fullsize: 51982543
- id: ghcr.io/offspot/file-manager:1.4
  url: https://drive.offspot.it/oci/file-manager.tar
files:
- url: https://download.kiwix.org/zim/wikipedia_en_all_maxi_2024-01.zim
  to: /data/contents/zims/wikipedia_en_all_maxi_2024-01.zim
  checksum:
    algo: md5
    value: https://download.kiwix.org/zim/wikipedia_en_all_maxi_2024-01.zim.md5
    kind: url
- url: https://example.org/site.zip
  to: /data/contents/site
  via: zip
  size: 2.5GB
- to: /data/conf/logo.png
  content: aGVsbG8=
  via: base64
write_config: true
offspot: {}
"""


def parse(text: str, tmp_path: Path | None = None) -> LoadedConfig:
    return parse_config(
        parse_yaml(text, "cfg.yaml"), label="cfg.yaml", base_dir=tmp_path or Path("/srv")
    )


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.lines()


def test_spec_sample_parses_and_warns_about_the_misspelled_key() -> None:
    loaded = parse(SPEC_SAMPLE)
    config = loaded.config
    assert config.base.url == "https://drive.offspot.it/base/offspot-base-arm64-1.0.0.img.xz"
    assert config.base.version == "1.0.0"
    assert config.output_size == 8_000_000_000
    assert [image.ident for image in config.oci_images] == ["ghcr.io/offspot/kiwix-serve:dev"]
    assert config.files[0].to == PurePosixPath("/data/contents/zims/wikipedia_fr_test.zim")
    assert config.files[0].relative_to_data == PurePosixPath("contents/zims/wikipedia_fr_test.zim")
    assert config.files[1].origin == Inline(b"hello world\n")
    assert config.write_config is False
    assert config.offspot["ap"]["ssid"] == "Kiwix Offspot"
    assert loaded.warnings == (
        "cfg.yaml: wite_config: unknown key, ignored (did you mean 'write_config'?)",
    )


def test_real_world_forms_parse() -> None:
    config = parse(REAL_WORLD).config
    assert config.base.root_size == 3 * 2**30
    assert config.base.checksum is not None
    assert config.base.checksum.kind is ChecksumKind.URL
    assert config.base.is_xz
    assert config.output_size is None
    first, second = config.oci_images
    assert (first.origin, first.filesize, first.fullsize) == (Pull(), 52090880, 51982543)
    assert second.ident == "ghcr.io/offspot/file-manager:1.4"
    assert second.origin == Export("https://drive.offspot.it/oci/file-manager.tar")
    assert config.files[0].checksum is not None
    assert config.files[0].checksum.algo is ChecksumAlgo.MD5
    assert config.files[1].via is Via.ZIP
    assert config.files[1].size == 2_500_000_000
    assert config.files[2].origin == Inline(b"hello")
    assert config.write_config is True


@pytest.mark.parametrize(
    ("version", "expected"),
    [("1.2.1", "1.2.1"), ("1.10.0", "1.10.0"), ("12.0.3-rc1", "12.0.3-rc1")],
)
def test_base_versions_map_to_the_release_url(version: str, expected: str) -> None:
    assert parse(f"base: {version}\n").config.base.url.endswith(
        f"/offspot-base-arm64-{expected}.img.xz"
    )


def test_base_url_template_is_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = parse_config(
        {"base": "1.2.1"},
        label="cfg.yaml",
        base_dir=Path("/srv"),
        release_url_template="http://127.0.0.1:9/base-{version}.img",
    )
    assert loaded.config.base.url == "http://127.0.0.1:9/base-1.2.1.img"
    # the CLI reads it from the environment, into the run's options
    monkeypatch.setenv(BASE_URL_TEMPLATE_ENV, "http://127.0.0.1:9/base-{version}.img")
    options = parse_options(["--check", "config.yaml"])
    assert options.release_url_template == "http://127.0.0.1:9/base-{version}.img"


def test_local_paths_become_file_urls_relative_to_the_config(tmp_path: Path) -> None:
    loaded = parse("base: images/base.img\nfiles:\n- to: /data/a\n  url: a.txt\n", tmp_path)
    assert loaded.config.base.url == (tmp_path / "images/base.img").as_uri()
    assert loaded.config.files[0].origin == Download((tmp_path / "a.txt").as_uri())


def test_content_wins_over_url() -> None:
    loaded = parse("base: 1.2.1\nfiles:\n- to: /data/a\n  url: http://x/a\n  content: hi\n")
    entry = loaded.config.files[0]
    assert entry.origin == Inline(b"hi")
    assert loaded.warnings == (
        "cfg.yaml: files[0].url: ignored: content is given and wins over url",
    )


def test_sizes_are_decimal_or_binary() -> None:
    assert parse("base: 1.2.1\noutput: {size: 8GiB}\n").config.output_size == 8 * 2**30
    assert parse("base: 1.2.1\noutput: {size: 4000000000}\n").config.output_size == 4 * 10**9


def test_destinations_are_normalised() -> None:
    entry = parse("base: 1.2.1\nfiles:\n- to: /data//a/./b\n  content: x\n").config.files[0]
    assert entry.to == PurePosixPath("/data/a/b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("output: {size: 1G}\n", "cfg.yaml: base: required"),
        ("base: 1.2.1\nfiles:\n- to: /data/../etc/x\n  content: a\n", "files[0].to: '..'"),
        ("base: 1.2.1\nfiles:\n- to: /etc/x\n  content: a\n", "files[0].to: must be inside /data"),
        ("base: 1.2.1\nfiles:\n- to: /data\n  content: a\n", "files[0].to: must be inside /data"),
        ("base: 1.2.1\nfiles:\n- to: /database/x\n  content: a\n", "files[0].to: must be inside"),
        ("base: 1.2.1\nfiles:\n- to: data/x\n  content: a\n", "files[0].to: must be an absolute"),
        ("base: 1.2.1\nfiles:\n- to: /data/x\n  url: http://a/b\n  via: rar\n", "files[0].via"),
        ("base: 1.2.1\noutput: {size: 12 parsecs}\n", "output.size: expected a size"),
        (
            "base: 1.2.1\nfiles:\n- to: /data/x\n  url: http://a/b\n"
            "  checksum: {algo: crc, value: a}\n",
            "files[0].checksum.algo: unknown value 'crc'",
        ),
        (
            "base: 1.2.1\nfiles:\n- to: /data/x\n  url: http://a/b\n"
            "  checksum: {algo: md5, value: zz}\n",
            "files[0].checksum.value: not a md5 hex digest",
        ),
        (
            "base: 1.2.1\nfiles:\n- to: /data/x\n  content: a\n- to: /data/x\n  content: b\n",
            "files[1].to: /data/x is already the destination of files[0]",
        ),
        ("base: 1.2.1\nfiles:\n- to: /data/x\n", "files[0]: needs a url or a content"),
        (
            "base: 1.2.1\nfiles:\n- {to: /data/site, url: http://a/s.bin}\n"
            "- {to: /data/site/deep/extra.txt, content: x}\n",
            "files[1].to: /data/site/deep/extra.txt needs /data/site to be a folder, "
            "but files[0] writes a file there",
        ),
        (
            "base: 1.2.1\nfiles:\n- {to: /data/images, url: http://a/b.tar, via: tar}\n",
            "files[0].to: /data/images: /data/images holds the OCI images the build places",
        ),
        (
            "base: 1.2.1\nfiles:\n- {to: /data/images/x.tar, url: http://a/x.tar}\n",
            "files[0].to: /data/images/x.tar: /data/images holds the OCI images",
        ),
        (
            "base: 1.2.1\nwrite_config: true\nfiles:\n- {to: /data/image.yaml, content: x}\n",
            "files[0].to: /data/image.yaml: write_config puts the config's copy there",
        ),
        (
            "base: 1.2.1\nwrite_config: true\nfiles:\n- {to: /data/conf/image.yaml, content: x}\n",
            "files[0].to: /data/conf/image.yaml: write_config puts the config's copy there",
        ),
        (
            "base: 1.2.1\nwrite_config: true\nfiles:\n- {to: /data/conf, content: x}\n",
            "files[0].to: /data/conf: write_config needs this folder for the config's copy",
        ),
        ("base: ftp://host/base.img\n", "base: unsupported URL scheme 'ftp'"),
        ("base: {source: 1.2.1, root_size: many}\n", "base.root_size: expected a size"),
        ("base: 1.2\n", "base: version 1.2 must be a full release number"),
        ("base: 1.2.1\nwrite_config: yes please\n", "write_config: expected true or false"),
        ("base: 1.2.1\noci_images:\n- a/b/c/d:1\n", "oci_images[0]: not an image reference"),
        ("base: 1.2.1\noci_images: [{id: 12}]\n", "oci_images[0].id: expected a non-empty string"),
        ("base: 1.2.1\nfiles: {to: /data/x}\n", "files: expected a list"),
        (
            "base: 1.2.1\nfiles:\n- to: /data/x\n  url: http://a/b\n  via: base64\n",
            "files[0].via: 'base64' applies to content",
        ),
        (
            "base: 1.2.1\nfiles:\n- to: /data/x\n  content: a\n  via: zip\n",
            "files[0].via: 'zip' needs a url",
        ),
    ],
)
def test_bad_configs_name_the_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in line for line in found), found
    assert all(line.startswith("cfg.yaml: ") for line in found)


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        "base: 1.2.1\nfiles:\n- to: /etc/x\n  content: a\n- to: /data/y\n  url: http://a/b\n"
        "  via: nope\noutput: {size: huge}\n"
    )
    assert len(found) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("base: [1, 2\n", "cfg.yaml:2:1: invalid YAML"),
        ("base: 1.2.1\nbase: 1.2.2\n", "cfg.yaml:2:1: invalid YAML: duplicate key 'base'"),
        ("- just\n- a list\n", "cfg.yaml: expected a mapping at the top, got a list"),
    ],
)
def test_malformed_documents(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(parse_yaml(text, "cfg.yaml"), label="cfg.yaml", base_dir=Path("/"))
    assert info.value.lines() == [expected] or expected in info.value.lines()[0]


def test_load_config_reads_files_and_urls(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base: base.img\n")
    assert load_config(str(path), read_url=lambda url: b"").config.base.url == (
        (tmp_path / "base.img").as_uri()
    )
    remote = load_config("http://127.0.0.1:1/c.yaml", read_url=lambda url: b"base: 1.2.1\n")
    assert remote.config.base.version == "1.2.1"
    relative = load_config(
        "http://127.0.0.1:1/configs/c.yaml",
        read_url=lambda url: b"base: images/base.img\nfiles:\n- {to: /data/a, url: /a.txt}\n",
    )
    assert relative.config.base.url == "http://127.0.0.1:1/configs/images/base.img"
    assert relative.config.files[0].origin == Download(Path("/a.txt").as_uri())
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "missing.yaml"), read_url=lambda url: b"")


def test_base64_content_is_decoded() -> None:
    payload = bytes(range(256))
    encoded = base64.b64encode(payload).decode()
    text = f"base: 1.2.1\nfiles:\n- to: /data/bin\n  via: base64\n  content: {encoded}\n"
    assert parse(text).config.files[0].origin == Inline(payload)


def test_entries_may_sit_inside_an_archive_destination() -> None:
    # what ConfigBuilder writes for an app with a download and a volume
    loaded = parse(
        "base: 1.2.1\nfiles:\n- {to: /data/contents/app, url: http://a/app.zip, via: zip}\n"
        "- {to: /data/contents/app/.touch, content: '-'}\n"
        "- {to: /data/contents/app/sub, url: http://a/sub.tar, via: tar}\n"
    )
    assert [str(entry.to) for entry in loaded.config.files] == [
        "/data/contents/app",
        "/data/contents/app/.touch",
        "/data/contents/app/sub",
    ]
    assert loaded.warnings == ()


def test_negative_sizes_mean_unknown() -> None:
    # offspot-config writes -1 (unknown) and -2 (its HEAD request failed)
    loaded = parse(
        "base: 1.2.1\nfiles:\n- {to: /data/a, url: http://a/a, size: -1}\n"
        "- {to: /data/b, url: http://a/b.zip, via: zip, size: -2}\n"
        "oci_images:\n- {ident: 'ghcr.io/offspot/x:1', filesize: -1, fullsize: -1}\n"
    )
    assert [entry.size for entry in loaded.config.files] == [None, None]
    assert (loaded.config.oci_images[0].filesize, loaded.config.oci_images[0].fullsize) == (
        None,
        None,
    )
    assert set(loaded.warnings) == {
        f"cfg.yaml: {key}: {value} means unknown: the size is taken from the source"
        for key, value in (
            ("files[0].size", -1),
            ("files[1].size", -2),
            ("oci_images[0].filesize", -1),
            ("oci_images[0].fullsize", -1),
        )
    }


def test_output_size_is_rounded_up_to_whole_sectors() -> None:
    loaded = parse("base: 1.2.1\noutput: {size: 1001}\n")
    assert loaded.config.output_size == 1024
    assert loaded.warnings == (
        "cfg.yaml: output.size: 1001 bytes is not a whole number of 512-byte sectors; "
        "rounded up to 1024",
    )


def test_the_config_is_kept_byte_for_byte(tmp_path: Path) -> None:
    raw = b"---\n# rendered by a generator\nbase: 1.2.1   # trailing comment\nwrite_config: true\n"
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    loaded = load_config(str(path), read_url=lambda url: b"")
    assert loaded.config.raw == raw
    assert loaded.sha256 == hashlib.sha256(raw).hexdigest()
    assert load_config("http://127.0.0.1:1/c.yaml", read_url=lambda url: raw).config.raw == raw
    path.write_bytes(b"base: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path), read_url=lambda url: b"")


def test_without_write_config_the_copies_paths_are_free() -> None:
    loaded = parse(
        "base: 1.2.1\nfiles:\n- {to: /data/image.yaml, content: x}\n"
        "- {to: /data/conf, url: http://a/conf.zip, via: zip}\n"
    )
    assert [str(entry.to) for entry in loaded.config.files] == ["/data/image.yaml", "/data/conf"]
    with_copy = parse(
        "base: 1.2.1\nwrite_config: true\n"
        "files:\n- {to: /data/conf, url: http://a/c.zip, via: zip}\n"
    )
    assert [str(entry.to) for entry in with_copy.config.files] == ["/data/conf"]


def test_yaml_merge_keys_work_as_in_compose_files(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "base: 1.2.1\n"
        "offspot:\n"
        "  containers:\n"
        "    x-defaults: &defaults {restart: unless-stopped, pull_policy: never}\n"
        "    services:\n"
        "      kiwix: {<<: *defaults, image: 'ghcr.io/offspot/kiwix-serve:3.7.0'}\n"
        "      files: {<<: *defaults, restart: always}\n"
    )
    services = load_config(str(path), read_url=lambda url: b"").config.offspot["containers"]
    assert services["services"]["kiwix"]["restart"] == "unless-stopped"
    assert services["services"]["files"] == {"restart": "always", "pull_policy": "never"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("? [a, b]\n: 1\nbase: 1.2.1\n", "invalid YAML: a list cannot be a key"),
        ("base: 1.2.1\nx: " + "9" * 5000 + "\n", "invalid YAML: Exceeds the limit"),
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", "invalid YAML: nested too deeply"),
        ("base: 1.2.1\nx: !!timestamp 2024-13-45\n", "invalid YAML: month must be in 1..12"),
        ("base: 'http://[oops/base.img'\n", "base: not a valid URL (Invalid IPv6 URL)"),
        ('base: 1.2.1\nfiles: [{to: "/data/a\\0b", content: x}]\n', "contains a NUL character"),
        (
            'base: 1.2.1\nfiles: [{to: /data/a, content: "\\ud800"}]\n',
            "files[0].content: is not valid Unicode text",
        ),
        ("base: 1.2.1\noutput: {size: " + "9" * 45 + "}\n", "larger than any file can be"),
        (
            "base: 1.2.1\nfiles: [{to: /data/" + "n" * 256 + ", content: x}]\n",
            "files[0].to: a name may have at most 255 bytes",
        ),
    ],
)
def test_inputs_that_used_to_crash_are_named_config_errors(
    text: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), read_url=lambda url: b"")
    assert any(expected in line for line in info.value.lines()), info.value.lines()
    assert all(len(line) <= 500 and "\n" not in line for line in info.value.lines())


def test_a_broken_base_url_template_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"base": "1.2.1"},
            label="cfg.yaml",
            base_dir=Path("/srv"),
            release_url_template="https://mirror/{release}.img",
        )
    assert info.value.lines() == [
        "cfg.yaml: base: IMAGE_CREATOR_BASE_URL_TEMPLATE='https://mirror/{release}.img' is not "
        "a URL template with {version} (KeyError: 'release')"
    ]


def _bounded(function: Callable[[], object], seconds: float = 30) -> BaseException | None:
    """Run ``function`` in a thread; fail the test if it blocks (a FIFO read would)."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            function()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, "blocked: the read never returned"
    return outcome[0]


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_config_path_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = {"fifo": tmp_path / "config.fifo", "device": Path("/dev/zero"), "folder": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    error = _bounded(lambda: load_config(str(path), read_url=lambda url: b""))
    assert isinstance(error, ConfigError)
    expected = {"fifo": "a FIFO", "device": "a character device", "folder": "a directory"}[kind]
    assert error.lines() == [f"{path}: cannot read config: is {expected}, not a regular file"]


def test_a_config_over_16_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as file:
        file.truncate(16 * 2**20 + 1)
    with pytest.raises(ConfigError, match="cannot read config: larger than 16777216 bytes"):
        load_config(str(path), read_url=lambda url: b"")

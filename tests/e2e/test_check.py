"""`image-creator --check` end to end: ``cli.main`` against a local HTTP server and registry.

A check reads the config, looks at the host, asks every source for its size (HEAD, small
ranged GETs, registry manifests) and computes the image size: it must download no content,
write nothing, need no root, and name the culprit of every failure.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker_export import Image, Platform, export

import image_creator
import image_creator.checks.sizes as checked_sizes
from image_creator.__about__ import __version__
from image_creator.cli import main
from image_creator.demo import DEFAULT_DATA_FILES, BaseImageLayout, make_base_image
from image_creator.plan import Inventory, SizePlan
from image_creator.sizing import plan_sizes
from image_creator.system.ext4_geometry import Ext4Geometry
from image_creator.ui.base import NullReporter, Reporter
from image_creator.ui.console import ConsoleReporter
from image_creator.units import format_size
from tests.support.archives import tar_bytes, zip_bytes
from tests.support.httpserver import HttpServer, RequestRecord
from tests.support.oci_layout import ARM64
from tests.support.registry import ImageSpec, PushedImage, Registry
from tests.support.requirements import require_tools
from tests.support.users import reachable_by_everyone

MIB = 2**20
FS_BLOCK = 4096
AUTO_ALIGNMENT = MIB  # steps/sizes.py
# The largest read a check may make of a content source (the xz head steps start at 64 KiB).
SMALL_RANGE = 64 * 1024
# the console script of the environment running the tests (.venv/bin/image-creator)
IMAGE_CREATOR_BIN = Path(sys.executable).parent / "image-creator"

# Random bytes do not compress: a source read in full would show in the request log.
BASE_NOISE = random.Random(1).randbytes(2 * MIB)
DIRECT_FILE = random.Random(2).randbytes(300_000)
ARCHIVE_FILES: Mapping[str, bytes] = {
    "index.html": b"<!doctype html><title>site</title>\n",
    "data/noise.bin": random.Random(3).randbytes(200_000),
}
ARCHIVE_EXPANDED = "1MiB"
MESSAGE = "hello world\n"

BASE_PATH = "/base/offspot-base.img.xz"
BASE_SHA256_PATH = "/base/offspot-base.img.xz.sha256"
DIRECT_PATH = "/zim/wikipedia_test.zim"
GZTAR_PATH = "/archives/site.tar.gz"
ZIP_PATH = "/archives/site.zip"
CONTENT_PATHS = (DIRECT_PATH, GZTAR_PATH, ZIP_PATH)


# sources --------------------------------------------------------------------


@dataclass(frozen=True)
class BaseImageFiles:
    layout: BaseImageLayout
    xz: Path
    xz_sha256: str


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> BaseImageFiles:
    """A small Offspot-like base image with 2 MiB of noise on its data partition, xz'ed."""
    require_tools("sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "xz")
    folder = tmp_path_factory.mktemp("base")
    layout = make_base_image(
        folder / "offspot-base.img",
        data_files={**DEFAULT_DATA_FILES, "contents/noise.bin": BASE_NOISE},
        xz=True,
    )
    assert layout.xz_path is not None
    digest = hashlib.sha256(layout.xz_path.read_bytes()).hexdigest()
    return BaseImageFiles(layout=layout, xz=layout.xz_path, xz_sha256=digest)


GZTAR = tar_bytes(ARCHIVE_FILES, "gz")
ZIP = zip_bytes(ARCHIVE_FILES)


@dataclass(frozen=True)
class Served:
    """Every source of the valid config, on the test HTTP server."""

    server: HttpServer
    base: BaseImageFiles
    base_url: str
    base_sha256_url: str
    direct_url: str
    gztar_url: str
    zip_url: str


@pytest.fixture
def served(http_server: HttpServer, base_image: BaseImageFiles) -> Served:
    return Served(
        server=http_server,
        base=base_image,
        base_url=http_server.add_file(BASE_PATH, base_image.xz),
        base_sha256_url=http_server.add(
            BASE_SHA256_PATH,
            f"{base_image.xz_sha256}  offspot-base.img.xz\n".encode(),
            content_type="text/plain",
        ),
        direct_url=http_server.add(DIRECT_PATH, DIRECT_FILE),
        gztar_url=http_server.add(GZTAR_PATH, GZTAR),
        zip_url=http_server.add(ZIP_PATH, ZIP),
    )


def http_config(served: Served) -> dict[str, Any]:
    """The valid config's HTTP part: base with a checksum URL, direct, gztar, zip, content."""
    return {
        "base": {
            "source": served.base_url,
            "checksum": {"algo": "sha-256", "kind": "url", "value": served.base_sha256_url},
        },
        "output": {"size": "auto"},
        "files": [
            {
                "url": served.direct_url,
                "to": "/data/contents/zims/wikipedia_test.zim",
                "checksum": {"algo": "sha-256", "value": hashlib.sha256(DIRECT_FILE).hexdigest()},
            },
            {
                "url": served.gztar_url,
                "to": "/data/contents/site-tar",
                "via": "gztar",
                "size": ARCHIVE_EXPANDED,
            },
            {
                "url": served.zip_url,
                "to": "/data/contents/site-zip",
                "via": "zip",
                "size": ARCHIVE_EXPANDED,
            },
            {"to": "/data/conf/message.txt", "content": MESSAGE},
        ],
        "write_config": True,
        "offspot": {"timezone": "Africa/Bamako"},
    }


def write_config(folder: Path, document: Mapping[str, Any], name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(dict(document), sort_keys=False), encoding="utf-8")
    return path


def layer_sizes(pushed: PushedImage) -> list[int]:
    """Uncompressed bytes of each linux/arm64/v8 layer, read from the pushed OCI layout."""
    blobs = pushed.layout.path / "blobs" / "sha256"
    return [
        len(gzip.decompress((blobs / digest.removeprefix("sha256:")).read_bytes()))
        for digest in pushed.image_for(ARM64).layer_digests
    ]


# running main ----------------------------------------------------------------


# socketserver prints this when a client drops a kept-alive connection (requests closes one
# whose error body it did not read): the test server's noise, not the command's output.
_SERVER_THREAD_NOISE = re.compile(
    r"-{40}\nException occurred during processing of request from [^\n]*\n"
    r"Traceback \(most recent call last\):\n(?:[ ^~]+[^\n]*\n)*"
    r"(?:ConnectionResetError|BrokenPipeError|ConnectionAbortedError)[^\n]*\n-{40}\n"
)


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    messages: tuple[str, ...]  # the NullReporter's, when one was used

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]

    def assert_clean_failure(self, code: int) -> None:
        """Exit ``code``, at least one ``error:`` line, no traceback anywhere."""
        assert self.code == code, (self.code, self.stderr)
        assert self.errors, self.stderr
        assert "Traceback" not in self.stdout + self.stderr
        assert "unexpected" not in self.stderr, self.stderr


def run_main(
    argv: Sequence[str], capsys: pytest.CaptureFixture[str], reporter: Reporter | None = None
) -> Outcome:
    null = NullReporter()
    try:
        code = main(list(argv), reporter=reporter or null)
    except SystemExit as exc:  # argparse refuses options this way
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(
        code=code,
        stdout=captured.out,
        stderr=_SERVER_THREAD_NOISE.sub("", captured.err),
        messages=tuple(null.messages) if reporter is None else (),
    )


@dataclass
class Planned:
    """What the size check handed to plan_sizes, and what it got back (exact byte counts)."""

    inventories: list[Inventory] = field(default_factory=list)
    plans: list[SizePlan] = field(default_factory=list)


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> Planned:
    """Spy on the size check, without changing it."""
    record = Planned()

    def spy(
        inventory: Inventory,
        *,
        requested: int | None,
        max_size: int | None,
        filesystem: Ext4Geometry | None,
    ) -> SizePlan:
        record.inventories.append(inventory)
        plan = plan_sizes(inventory, requested=requested, max_size=max_size, filesystem=filesystem)
        record.plans.append(plan)
        return plan

    monkeypatch.setattr(checked_sizes, "plan_sizes", spy)
    return record


def _range_length(record: RequestRecord) -> int:
    assert record.range is not None
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", record.range.strip())
    assert match, f"not a bounded range: {record.range!r}"
    return int(match.group(2)) - int(match.group(1)) + 1


def assert_no_content_downloaded(server: HttpServer, *, text_paths: Sequence[str] = ()) -> None:
    """Only HEADs and small ranged GETs; ``text_paths`` (checksum files) may be read whole."""
    assert server.requests
    for record in server.requests:
        if record.method == "HEAD":
            continue
        assert record.method == "GET", record
        if record.path in text_paths:
            assert record.body_length < 1024, record
            continue
        assert record.range is not None, f"GET without Range: {record}"
        assert _range_length(record) <= SMALL_RANGE, record
        assert record.body_length <= SMALL_RANGE, record


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


# the valid config --------------------------------------------------------------


@pytest.mark.registry
def test_check_valid_config_reports_sources_and_sizes_and_touches_nothing(
    served: Served,
    registry_env: Registry,
    planned: Planned,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hello1 = registry_env["test/hello:1.0"]
    hello2 = registry_env["test/hello:2.0"]
    document = {
        **http_config(served),
        "oci_images": [hello1.ref, {"ident": hello2.ref}],
    }
    config = write_config(tmp_path, document)
    workdir = tmp_path / "out"
    workdir.mkdir()
    output = workdir / "hotspot.img"
    before = listing(tmp_path)

    stream = io.StringIO()
    outcome = run_main(
        ["--check", str(config), str(output)],
        capsys,
        reporter=ConsoleReporter(stream, interactive=False),
    )

    assert outcome.code == 0, outcome.stderr
    assert outcome.errors == []
    printed = stream.getvalue().splitlines()
    layout = served.base.layout

    # every source, with its size
    xz_size = served.base.xz.stat().st_size
    assert f"    base image {served.base_url}: {format_size(xz_size)}" in printed
    assert (
        f"    /data/contents/zims/wikipedia_test.zim <- {served.direct_url}: "
        f"{format_size(len(DIRECT_FILE))}"
    ) in printed
    assert (
        f"    /data/contents/site-tar <- {served.gztar_url}: "
        f"{format_size(len(GZTAR))} gztar, {format_size(MIB)} expanded (size from declared)"
    ) in printed
    assert (
        f"    /data/contents/site-zip <- {served.zip_url}: "
        f"{format_size(len(ZIP))} zip, {format_size(MIB)} expanded (size from declared)"
    ) in printed
    assert f"    /data/conf/message.txt <- inline content: {format_size(len(MESSAGE))}" in printed
    [inventory] = planned.inventories
    images = {source.image.ident: source for source in inventory.images}
    assert set(images) == {hello1.ref, hello2.ref}
    for pushed in (hello1, hello2):
        source = images[pushed.ref]
        assert source.sizes_from == "registry"
        assert source.manifest_digest == pushed.image_for(ARM64).manifest_digest
        assert (
            f"    OCI image {pushed.ref}: {format_size(source.filesize)} tar, "
            f"{format_size(source.fullsize)} extracted (sizes from registry)"
        ) in printed

    # the image size: read from the base image's partition table, auto-aligned
    [plan] = planned.plans
    assert plan.before_data == layout.data.start_bytes
    assert plan.existing_data == layout.data.size_bytes
    assert plan.base_image == layout.size
    expected_content = (
        -(-len(DIRECT_FILE) // FS_BLOCK) * FS_BLOCK
        + 2 * MIB  # two archives expanded to 1 MiB each
        + FS_BLOCK  # the message
        + sum(
            -(-source.filesize // FS_BLOCK) * FS_BLOCK + source.fullsize
            for source in images.values()
        )
    )
    assert plan.content == expected_content
    assert plan.output == plan.minimum
    assert plan.output >= layout.size
    assert plan.output >= layout.data.end_bytes + expected_content
    assert plan.output % AUTO_ALIGNMENT == 0
    [size_line] = [line for line in printed if line.startswith("    image size: ")]
    assert f"({plan.output} bytes, auto)" in size_line
    assert printed[-1] == "    check passed: nothing was downloaded or written"

    # nothing created, nothing downloaded
    assert not output.exists()
    assert listing(tmp_path) == before
    assert_no_content_downloaded(served.server, text_paths=(BASE_SHA256_PATH,))
    assert served.server.content_gets(DIRECT_PATH) == []
    # archives: their end only (gzip's ISIZE, the zip's central directory), in ranged reads
    for path, data in ((GZTAR_PATH, GZTAR), (ZIP_PATH, ZIP)):
        reads = served.server.content_gets(path)
        assert reads and all(record.status == 206 for record in reads), path
        assert sum(record.body_length for record in reads) < len(data), path
    base_reads = served.server.content_gets(BASE_PATH)
    assert base_reads, "the partition table must come from ranged reads of the base image"
    assert all(record.status == 206 for record in base_reads)
    assert base_reads[0].range == f"bytes=0-{SMALL_RANGE - 1}"
    assert sum(record.body_length for record in base_reads) < xz_size // 10
    [checksum_read] = served.server.content_gets(BASE_SHA256_PATH)
    assert checksum_read.method == "GET"


def test_check_leaves_an_existing_output_untouched_with_overwrite(
    served: Served, planned: Planned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, http_config(served))
    output = tmp_path / "hotspot.img"
    old_image = random.Random(4).randbytes(100_000)
    output.write_bytes(old_image)
    os.utime(output, ns=(1_000_000_000, 1_000_000_000))
    before = listing(tmp_path)

    outcome = run_main(["--check", "-X", str(config), str(output)], capsys)

    assert outcome.code == 0, outcome.stderr
    assert output.read_bytes() == old_image
    assert output.stat().st_mtime_ns == 1_000_000_000
    assert listing(tmp_path) == before
    assert "check passed: nothing was downloaded or written" in outcome.messages
    assert_no_content_downloaded(served.server, text_paths=(BASE_SHA256_PATH,))
    [plan] = planned.plans
    assert plan.output % AUTO_ALIGNMENT == 0
    assert plan.output >= served.base.layout.size


@pytest.mark.registry
def test_registry_sizes_match_the_real_layers_and_export(
    registry_env: Registry,
    served: Served,
    planned: Planned,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pushed = registry_env["test/hello:1.0"]
    document = {"base": served.base_url, "oci_images": [{"ident": pushed.ref}]}
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    assert outcome.code == 0, outcome.stderr

    [inventory] = planned.inventories
    [source] = inventory.images
    assert source.sizes_from == "registry"
    assert source.fullsize == sum(layer_sizes(pushed))

    exported = tmp_path / "export" / "hello.tar"
    exported.parent.mkdir()
    export(
        image=Image.parse(pushed.ref),
        platform=Platform.parse("linux/arm64/v8"),
        to=exported,
        build_dir=tmp_path / "export-build",
    )
    actual = exported.stat().st_size
    assert source.filesize >= actual
    # an upper bound, not a wild guess: within a few tar blocks of overhead per member
    assert source.filesize - actual < 128 * 1024
    # the extracted size is the layers themselves, as they sit in the exported tar
    with tarfile.open(exported) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)[0]
        in_tar = [tar.getmember(name).size for name in manifest["Layers"]]
    assert in_tar == layer_sizes(pushed)


@pytest.mark.registry
def test_an_incompressible_layer_is_sized_as_it_is(
    registry_env: Registry,
    served: Served,
    planned: Planned,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """gzip makes random data slightly larger: its ISIZE is below the blob's size, which is no
    wrap past 4 GiB (it used to be planned 4 GiB larger)."""
    noise = random.Random(11).randbytes(24 * 2**20)
    pushed = registry_env.push(
        ImageSpec("test/noise", "1.0", platforms=(ARM64,), layers=[{"noise.bin": noise}])
    )
    document = {"base": served.base_url, "oci_images": [pushed.ref]}
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    assert outcome.code == 0, outcome.stderr
    [source] = planned.inventories[0].images
    assert source.fullsize == sum(layer_sizes(pushed))
    assert source.fullsize < 25 * 2**20


@pytest.mark.registry
def test_sizes_given_in_the_config_win_over_the_registry(
    registry_env: Registry,
    served: Served,
    planned: Planned,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pushed = registry_env["test/hello:2.0"]
    document = {
        "base": served.base_url,
        "oci_images": [{"ident": pushed.ref, "filesize": 5_000_000, "fullsize": "6MB"}],
    }
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    assert outcome.code == 0, outcome.stderr
    [source] = planned.inventories[0].images
    assert (source.filesize, source.fullsize, source.sizes_from) == (5_000_000, 6_000_000, "config")


# failing sources -------------------------------------------------------------------


def test_missing_file_url(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = served.server.url("/zim/nope.zim")
    document = {"base": served.base_url, "files": [{"url": missing, "to": "/data/nope.zim"}]}
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(4)
    [line] = outcome.errors
    assert missing in line
    assert "404" in line


def test_missing_base_image(
    http_server: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = http_server.url("/base/nope.img.xz")
    outcome = run_main(["--check", str(write_config(tmp_path, {"base": missing}))], capsys)
    outcome.assert_clean_failure(4)
    [line] = outcome.errors
    assert missing in line
    assert "404" in line
    assert http_server.content_gets() == []


@pytest.mark.registry
def test_missing_registry_image(
    registry_env: Registry, served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = registry_env.ref("test/nope:1.0")
    document = {"base": served.base_url, "oci_images": [missing]}
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(4)
    assert any(missing in line and "404" in line for line in outcome.errors), outcome.stderr


@pytest.mark.registry
def test_registry_image_without_arm64_lists_its_platforms(
    registry_env: Registry, served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    amd64only = registry_env["test/amd64only:1.0"]
    document = {"base": served.base_url, "oci_images": [amd64only.ref]}
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(4)
    [line] = outcome.errors
    assert amd64only.ref in line
    assert "linux/arm64/v8" in line
    assert "it has: linux/amd64" in line


def test_unreadable_checksum_url(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = served.server.url("/zim/wikipedia_test.zim.sha256")
    document = {
        "base": served.base_url,
        "files": [
            {
                "url": served.direct_url,
                "to": "/data/a.zim",
                "checksum": {"algo": "sha-256", "kind": "url", "value": missing},
            }
        ],
    }
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(4)
    [line] = outcome.errors
    assert missing in line
    assert "404" in line


def test_checksum_url_that_is_not_a_digest(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_digest = served.server.add(
        "/base/offspot-base.img.xz.md5", b"<html>Not here</html>\n", content_type="text/html"
    )
    document = {
        "base": {
            "source": served.base_url,
            "checksum": {"algo": "md5", "kind": "url", "value": not_a_digest},
        }
    }
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(4)
    [line] = outcome.errors
    assert not_a_digest in line
    assert "not a hexadecimal checksum" in line


def test_checksum_url_with_a_digest_of_the_wrong_length(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md5_url = served.server.add("/zim/a.zim.md5", b"d41d8cd98f00b204e9800998ecf8427e  a.zim\n")
    document = {
        "base": served.base_url,
        "files": [
            {
                "url": served.direct_url,
                "to": "/data/a.zim",
                "checksum": {"algo": "sha-256", "kind": "url", "value": md5_url},
            }
        ],
    }
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(4)
    [line] = outcome.errors
    assert md5_url in line
    assert "sha-256 checksum has 64 hex digits, got 32" in line


def test_server_error(served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served.server.fault(DIRECT_PATH, status=500)
    document = {"base": served.base_url, "files": [{"url": served.direct_url, "to": "/data/a"}]}
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(4)
    [line] = outcome.errors
    assert served.direct_url in line
    assert "500" in line
    assert served.server.content_gets(DIRECT_PATH) == []


@pytest.mark.registry
def test_every_failing_source_is_reported(
    registry_env: Registry, served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_base = served.server.url("/base/gone.img")
    missing_file = served.server.url("/zim/gone.zim")
    missing_sum = served.server.url("/zim/gone.sha256")
    missing_image = registry_env.ref("test/nope:1.0")
    amd64only = registry_env["test/amd64only:1.0"].ref
    document = {
        "base": missing_base,
        "oci_images": [missing_image, registry_env["test/hello:1.0"].ref, amd64only],
        "files": [
            {"url": missing_file, "to": "/data/a.zim"},
            {"url": served.gztar_url, "to": "/data/site", "via": "gztar"},
            {
                "url": served.direct_url,
                "to": "/data/b.zim",
                "checksum": {"algo": "sha-1", "kind": "url", "value": missing_sum},
            },
        ],
    }
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(4)
    assert len(outcome.errors) == 5, outcome.stderr
    for culprit in (missing_base, missing_file, missing_sum, missing_image, amd64only):
        assert sum(culprit in line for line in outcome.errors) == 1, (culprit, outcome.stderr)
    # the sources that are fine are not blamed
    assert not any(served.gztar_url in line for line in outcome.errors)
    assert not any(f"{registry_env['test/hello:1.0'].ref}:" in line for line in outcome.errors)


# bad configs -------------------------------------------------------------------------

GOOD_FILE = "{to: /data/a.txt, content: a}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "base: base.img\nfiles:\n- {to: /data/../etc/passwd, content: x}\n",
            "config.yaml: files[0].to: '..' is not allowed",
            id="traversal",
        ),
        pytest.param(
            f"base: base.img\nfiles:\n- {GOOD_FILE}\n- {{to: /etc/hosts, content: x}}\n",
            "config.yaml: files[1].to: must be inside /data",
            id="outside-data",
        ),
        pytest.param(
            "base: base.img\nfiles:\n- {url: http://h/a.rar, to: /data/a, via: rar}\n",
            "config.yaml: files[0].via: unknown value 'rar'",
            id="unknown-via",
        ),
        pytest.param(
            "base: base.img\noutput: {size: 12 parsecs}\n",
            "config.yaml: output.size: expected a size like 8G or 8GiB, got '12 parsecs'",
            id="unparseable-output-size",
        ),
        pytest.param(
            "base: base.img\nfiles:\n- {url: http://h/a.tgz, to: /data/a, via: gztar, size: big}\n",
            "config.yaml: files[0].size: expected a size",
            id="unparseable-file-size",
        ),
        pytest.param(
            f"files:\n- {GOOD_FILE}\n",
            "config.yaml: base: required",
            id="missing-base",
        ),
        pytest.param(
            "base: base.img\nfiles:\n- url: http://h/a\n  to: /data/a\n"
            "  checksum: {algo: sha-3, value: abcd}\n",
            "config.yaml: files[0].checksum.algo: unknown value 'sha-3'",
            id="unknown-checksum-algo",
        ),
        pytest.param(
            f"base: base.img\nfiles:\n- {GOOD_FILE}\n- {{to: /data/a.txt, content: b}}\n",
            "config.yaml: files[1].to: /data/a.txt is already the destination of files[0]",
            id="duplicate-to",
        ),
        pytest.param(
            "base: base.img\nfiles:\n- {to: /data/a, content: [x\n",
            "config.yaml:4:1: invalid YAML",
            id="malformed-yaml",
        ),
        pytest.param(
            "base: base.img\noutput: {size: auto}\nbase: other.img\n",
            "config.yaml:3:1: invalid YAML: duplicate key 'base'",
            id="duplicate-key",
        ),
    ],
)
def test_bad_config(
    text: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")
    output = tmp_path / "hotspot.img"
    monkeypatch.chdir(tmp_path)
    for argv in (["--check", "config.yaml"], ["config.yaml", str(output)]):
        outcome = run_main(argv, capsys)
        outcome.assert_clean_failure(3)
        assert any(line.startswith(f"error: {expected}") for line in outcome.errors), (
            expected,
            outcome.stderr,
        )
        assert not output.exists()
    assert listing(tmp_path) == ["config.yaml"]


def test_every_config_problem_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {
        "output": {"size": "huge"},
        "files": [
            {"to": "/etc/x", "content": "x"},
            {"url": "http://h/a", "to": "/data/a", "via": "rar"},
            {"url": "http://h/b", "to": "/data/b", "checksum": {"algo": "crc", "value": "ab"}},
        ],
    }
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(3)
    keys = ["output.size", "files[0].to", "files[1].via", "files[2].checksum.algo", "base"]
    for key in keys:
        assert any(f"config.yaml: {key}: " in line for line in outcome.errors), (
            key,
            outcome.stderr,
        )
    assert len(outcome.errors) == len(keys), outcome.stderr


def test_unparseable_max_size_option(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, http_config(served))
    outcome = run_main(["--check", "--max-size", "lots", str(config)], capsys)
    assert "--max-size" in outcome.stderr
    assert "expected a size like 8G or 8GiB, got 'lots'" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert served.server.requests == ()
    assert outcome.code != 0


def test_invalid_option_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"base": "base.img"})
    for argv in (
        ["--check", "--max-size", "lots", str(config)],
        ["--check", "-T", "0", str(config)],
        [str(config)],  # a build without OUTPUT
    ):
        outcome = run_main(argv, capsys)
        assert outcome.code == 3, (argv, outcome.code, outcome.stderr)


def test_output_size_too_small(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {**http_config(served), "output": {"size": "64MiB"}}
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(3)
    [line] = outcome.errors
    assert line.startswith("error: output.size: 64 MiB (67108864 bytes) is too small")
    assert_no_content_downloaded(served.server, text_paths=(BASE_SHA256_PATH,))


def test_output_size_that_fits_is_used(
    served: Served, planned: Planned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {**http_config(served), "output": {"size": "1GiB"}}
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    assert outcome.code == 0, outcome.stderr
    [plan] = planned.plans
    assert plan.output == 2**30
    assert plan.minimum < plan.output
    assert any(f"({2**30} bytes, requested)" in message for message in outcome.messages)


def test_max_size_smaller_than_needed(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, http_config(served))
    outcome = run_main(["--check", "--max-size", "100MiB", str(config)], capsys)
    outcome.assert_clean_failure(3)
    [line] = outcome.errors
    assert line.startswith("error: --max-size: the image would be ")
    assert f"over the limit of {format_size(100 * MIB)}" in line


def test_raw_base_image_is_sized_from_its_first_sector(
    served: Served, planned: Planned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw_url = served.server.add_file("/base/offspot-base.img", served.base.layout.path)
    outcome = run_main(["--check", str(write_config(tmp_path, {"base": raw_url}))], capsys)
    assert outcome.code == 0, outcome.stderr
    assert f"base image {raw_url}: {format_size(served.base.layout.size)}" in outcome.messages
    [plan] = planned.plans
    layout = served.base.layout
    assert (plan.before_data, plan.existing_data, plan.base_image) == (
        layout.data.start_bytes,
        layout.data.size_bytes,
        layout.size,
    )
    assert plan.output % AUTO_ALIGNMENT == 0
    assert plan.output >= layout.size
    # the partition table, then the data filesystem's superblock (the base is not compressed)
    superblock = layout.data.start_bytes + 1024
    reads = served.server.content_gets("/base/offspot-base.img")
    assert [(read.range, read.status, read.body_length) for read in reads] == [
        ("bytes=0-511", 206, 512),
        (f"bytes={superblock}-{superblock + 1023}", 206, 1024),
    ]
    assert plan.exact
    assert_no_content_downloaded(served.server)


def test_server_refusing_head_is_sized_with_a_one_byte_range(
    served: Served, planned: Planned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served.server.fault(DIRECT_PATH, no_head=True)
    served.server.fault(GZTAR_PATH, no_head=True)
    document = {
        "base": served.base_url,
        "files": [
            {"url": served.direct_url, "to": "/data/a.zim"},
            {"url": served.gztar_url, "to": "/data/site", "via": "gztar"},
        ],
    }
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    assert outcome.code == 0, outcome.stderr
    sizes = {
        str(source.entry.to): (source.download_size, source.expanded_size)
        for source in planned.inventories[0].files
    }
    # without `size`, an archive counts as what it says it expands to (gzip's ISIZE)
    assert sizes == {
        "/data/a.zim": (len(DIRECT_FILE), len(DIRECT_FILE)),
        "/data/site": (len(GZTAR), len(gzip.decompress(GZTAR))),
    }
    for path in (DIRECT_PATH, GZTAR_PATH):
        read = served.server.content_gets(path)[0]
        assert (read.range, read.status, read.body_length) == ("bytes=0-0", 206, 1)
    assert_no_content_downloaded(served.server)


NOT_AN_IMAGE = random.Random(5).randbytes(4096)


def test_base_image_without_a_partition_table_needs_root_size(
    http_server: HttpServer, planned: Planned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = http_server.add("/base/blank.img", NOT_AN_IMAGE)
    outcome = run_main(["--check", str(write_config(tmp_path, {"base": url}))], capsys)
    outcome.assert_clean_failure(4)
    [line] = outcome.errors
    assert url in line
    assert "base.root_size" in line

    document = {"base": {"source": url, "root_size": "100MiB"}}
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    assert outcome.code == 0, outcome.stderr
    [plan] = planned.plans
    assert (plan.before_data, plan.existing_data) == (100 * MIB, 0)
    # no data partition known: the official base's (256 MiB) is assumed, full
    assert plan.output >= 100 * MIB + 256 * MIB
    assert not plan.exact


def test_base_image_that_is_not_xz(
    http_server: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = http_server.add("/base/broken.img.xz", NOT_AN_IMAGE)
    outcome = run_main(["--check", str(write_config(tmp_path, {"base": url}))], capsys)
    outcome.assert_clean_failure(4)
    [line] = outcome.errors
    assert url in line
    assert "not a valid .xz file" in line


def test_missing_local_file(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "gone.zim"
    document = {
        "base": served.base_url,
        "files": [
            {"url": gone.as_uri(), "to": "/data/a.zim"},
            {"url": "gone.tar", "to": "/data/b", "via": "tar"},  # relative to the config
        ],
    }
    outcome = run_main(["--check", str(write_config(tmp_path, document))], capsys)
    outcome.assert_clean_failure(4)
    assert outcome.errors == [
        f"error: {gone.as_uri()}: no such file",
        f"error: {(tmp_path / 'gone.tar').as_uri()}: no such file",
    ]


def test_build_refuses_an_existing_output_before_touching_anything(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, http_config(served))
    output = tmp_path / "hotspot.img"
    old_image = b"an image from yesterday\n" * 1000
    output.write_bytes(old_image)
    before = listing(tmp_path)

    outcome = run_main([str(config), str(output)], capsys)

    outcome.assert_clean_failure(3)
    assert outcome.errors == [f"error: {output}: already exists"]
    assert "-X/--overwrite" in outcome.stderr
    assert output.read_bytes() == old_image
    assert listing(tmp_path) == before
    # refused before the host check and before any source was asked anything
    assert served.server.requests == ()
    assert not any(message == "step: Checking host" for message in outcome.messages)


def test_misspelled_key_is_a_warning_with_a_suggestion(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {"base": served.base_url, "wite_config": True}
    config = write_config(tmp_path, document)
    outcome = run_main(["--check", str(config)], capsys)
    assert outcome.code == 0, outcome.stderr
    assert (
        f"warning: {config}: wite_config: unknown key, ignored (did you mean 'write_config'?)"
        in outcome.messages
    )
    assert "check passed: nothing was downloaded or written" in outcome.messages


# no root, config from a URL -----------------------------------------------------------


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A 0755 folder outside pytest's private tmp tree, so that ``nobody`` can read it."""
    folder = Path(tempfile.mkdtemp(prefix="image-creator-check-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_check_works_without_root(served: Served, world_readable_dir: Path) -> None:
    local = world_readable_dir / "local.txt"
    local.write_bytes(b"a local file\n")
    document = {
        **http_config(served),
        "files": [
            *http_config(served)["files"],
            {"url": "local.txt", "to": "/data/local.txt"},  # relative to the config
        ],
    }
    config = write_config(world_readable_dir, document)
    for path in (local, config):
        path.chmod(0o644)
    before = listing(world_readable_dir)
    command = [str(IMAGE_CREATOR_BIN)]
    if not IMAGE_CREATOR_BIN.exists():
        command = [sys.executable, "-m", "image_creator"]
    argv = [*command, "--check", str(config)]
    if os.geteuid() == 0:
        require_tools("setpriv")
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]

    package = Path(image_creator.__file__).parent
    with reachable_by_everyone(
        Path(sys.executable).parent, Path(sys.executable).resolve(), package
    ):
        result = subprocess.run(
            argv,
            cwd=world_readable_dir,
            env=dict(os.environ),  # NO_PROXY for the loopback server
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert result.returncode == 0, result.stdout + result.stderr
    # not root: a build would write the image rootless, and this host has what that needs
    assert "    a build would use the rootless backend: not running as root" in result.stdout
    assert "a build here would fail" not in result.stdout
    assert f"    /data/local.txt <- {local.as_uri()}: 13 bytes" in result.stdout
    assert "    check passed: nothing was downloaded or written" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert listing(world_readable_dir) == before
    assert_no_content_downloaded(served.server, text_paths=(BASE_SHA256_PATH,))


def test_config_from_an_http_url(
    served: Served, planned: Planned, capsys: pytest.CaptureFixture[str]
) -> None:
    text = yaml.safe_dump(http_config(served), sort_keys=False)
    config_url = served.server.add("/configs/hotspot.yaml", text.encode(), content_type="text/yaml")

    outcome = run_main(["--check", config_url], capsys)

    assert outcome.code == 0, outcome.stderr
    assert f"base image {served.base_url}: {format_size(served.base.xz.stat().st_size)}" in (
        outcome.messages
    )
    assert (
        f"/data/contents/zims/wikipedia_test.zim <- {served.direct_url}: "
        f"{format_size(len(DIRECT_FILE))}"
    ) in outcome.messages
    [read] = served.server.requests_for("/configs/hotspot.yaml")
    assert (read.method, read.status) == ("GET", 200)
    [plan] = planned.plans
    assert plan.base_image == served.base.layout.size
    assert plan.output % AUTO_ALIGNMENT == 0


def test_config_url_problems_are_named_by_the_url(
    http_server: HttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config_url = http_server.add("/configs/bad.yaml", b"base: base.img\nbase: again.img\n")
    outcome = run_main(["--check", config_url], capsys)
    outcome.assert_clean_failure(3)
    assert outcome.errors == [f"error: {config_url}:2:1: invalid YAML: duplicate key 'base'"]

    missing = http_server.url("/configs/missing.yaml")
    outcome = run_main(["--check", missing], capsys)
    assert outcome.code in (3, 4), outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert any(missing in line and "404" in line for line in outcome.errors), outcome.stderr


# one HTTP client for the run ------------------------------------------------------------------


def test_the_check_reuses_one_connection(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One worker, one server: every probe and small read of the check comes on the
    connection the first one opened, each with the run's User-Agent."""
    config = write_config(tmp_path, http_config(served))
    outcome = run_main(["--check", "-T", "1", str(config)], capsys)
    assert outcome.code == 0, outcome.stderr
    requests = served.server.requests
    assert len(requests) > 5  # base, its checksum, the files, ranged reads of archives
    assert served.server.connections() == 1
    assert {record.header("User-Agent") for record in requests} == {f"image-creator/{__version__}"}


def test_concurrent_checks_share_the_pool(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several workers open a few connections, never one per request."""
    config = write_config(tmp_path, http_config(served))
    outcome = run_main(["--check", "-T", "3", str(config)], capsys)
    assert outcome.code == 0, outcome.stderr
    assert served.server.connections() <= 3 < len(served.server.requests)


def test_a_busy_server_is_waited_for_as_it_asks(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """503 with Retry-After on the checksum file: the check waits the second asked, then
    reads it and passes."""
    served.server.fault(BASE_SHA256_PATH, status=503, retry_after="1", times=1)
    config = write_config(tmp_path, http_config(served))
    outcome = run_main(["--check", str(config)], capsys)
    assert outcome.code == 0, outcome.stderr
    answers = [record.status for record in served.server.requests_for(BASE_SHA256_PATH)]
    assert answers == [503, 200]

"""The complete build, end to end, as root: real HTTP server, real registry, real loop devices.

Everything is verified from outside the image, without mounting it: partition table,
partition bytes, e2fsck, every file's digest (debugfs), the boot partition (mtools), and each
OCI tar through skopeo (which hashes every layer).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import DEFAULT_BOOT_FILES, DEFAULT_DATA_FILES, make_base_image
from image_creator.fetch.oci import export_filename
from image_creator.report import SCHEMA_PATH
from image_creator.system.partitions import read_partition_table
from image_creator.ui.base import NullReporter
from tests.support.archives import tar_bytes, zip_bytes
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage, tree_digests
from tests.support.registry import Registry
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

TREE = {
    "index.html": b"<h1>offline</h1>\n",
    "docs/about.txt": b"about this site\n" * 50,
    "docs/deep/nested/file.bin": bytes(range(256)) * 64,
}
ZIM = b"ZIM\x04" + bytes(range(256)) * 4000  # a stand-in for a content file
OUTPUT_SIZE = 256 * 2**20


def sha(data: bytes, algo: str = "sha256") -> str:
    return hashlib.new(algo, data).hexdigest()


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz", "debugfs")
    path = tmp_path / "base" / "base.img"
    make_base_image(path, xz=True)
    return path


def test_full_build(
    base_image: Path,
    http_server: HttpServer,
    registry_env: Registry,
    tmp_path: Path,
) -> None:
    require_root()
    require_tools("losetup", "e2fsck", "resize2fs", "skopeo", "debugfs")
    base_xz = base_image.with_name("base.img.xz").read_bytes()
    assert lzma.decompress(base_xz) == base_image.read_bytes()
    http_server.add("/base/base.img.xz", base_xz)
    http_server.add("/zim/content.zim", ZIM)
    http_server.add("/zim/checked.zim", ZIM[:5000])
    http_server.add("/zim/checked.zim.md5", f"{sha(ZIM[:5000], 'md5')}  checked.zim\n".encode())
    archives = {
        "zip": zip_bytes(TREE),
        "gztar": tar_bytes(TREE, "gz"),
        "xztar": tar_bytes(TREE, "xz"),
        "bztar": tar_bytes(TREE, "bz2"),
    }
    for via, data in archives.items():
        http_server.add(f"/sites/site.{via}", data)
    hello = registry_env["test/hello:1.0"].ref
    hello2 = registry_env["test/hello:2.0"].ref
    config = {
        "base": {
            "source": http_server.url("/base/base.img.xz"),
            "checksum": {"algo": "sha-256", "value": sha(base_xz)},
        },
        "output": {"size": OUTPUT_SIZE},
        "oci_images": [hello, {"ident": hello2}],
        "files": [
            {
                "url": http_server.url("/zim/content.zim"),
                "to": "/data/contents/zims/content.zim",
                "checksum": {"algo": "sha-512", "value": sha(ZIM, "sha512")},
            },
            {
                "url": http_server.url("/zim/checked.zim"),
                "to": "/data/contents/zims/checked.zim",
                "checksum": {
                    "algo": "md5",
                    "kind": "url",
                    "value": http_server.url("/zim/checked.zim.md5"),
                },
            },
            *(
                {
                    "url": http_server.url(f"/sites/site.{via}"),
                    "to": f"/data/contents/site-{via}",
                    "via": via,
                    "size": 1_000_000,
                }
                for via in archives
            ),
            {"to": "/data/conf/message.txt", "content": "hello world\n"},
        ],
        "write_config": True,
        "offspot": {"timezone": "Africa/Bamako", "ap": {"ssid": "Kiwix Offspot"}},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    output = tmp_path / "out" / "offspot.img"
    output.parent.mkdir()

    report_path = tmp_path / "report.json"
    argv = ["--report", str(report_path), str(config_path), str(output)]
    assert main(argv, reporter=NullReporter()) == 0

    # the disk: exactly the requested size, p3 grown to the last sector, p1/p2 where they were
    assert output.stat().st_size == OUTPUT_SIZE
    built = BuiltImage.open(output)
    before = read_partition_table(base_image)
    assert built.table.disk_id == before.disk_id
    assert built.table.partitions[:2] == before.partitions[:2]
    data_partition = built.table.partition(3)
    assert data_partition is not None
    assert data_partition.start_bytes == before.partitions[2].start_bytes
    assert data_partition.end_bytes == OUTPUT_SIZE
    base = BuiltImage.open(base_image)
    assert built.partition_bytes_digest(2) == base.partition_bytes_digest(2)
    built.fsck_data()  # raises unless clean

    # the data partition: base content kept, every file and tree as served
    tree = built.dump_data(tmp_path / "dump")
    found = tree_digests(tree)
    for name, content in DEFAULT_DATA_FILES.items():
        assert found[name] == sha(content)
    assert found["contents/zims/content.zim"] == sha(ZIM)
    assert found["contents/zims/checked.zim"] == sha(ZIM[:5000])
    for via in archives:
        for name, content in TREE.items():
            assert found[f"contents/site-{via}/{name}"] == sha(content), (via, name)
    assert (tree / "conf/message.txt").read_bytes() == b"hello world\n"
    # the config copy: its bytes as read, where Offspot reads it and where the spec puts it
    assert (tree / "image.yaml").read_bytes() == config_path.read_bytes()
    assert (tree / "conf/image.yaml").read_bytes() == config_path.read_bytes()
    # nothing else: no temporary names, no spooled archive left on the partition
    expected_names = {
        *DEFAULT_DATA_FILES,
        "contents/zims/content.zim",
        "contents/zims/checked.zim",
        *(f"contents/site-{via}/{name}" for via in archives for name in TREE),
        "conf/message.txt",
        "image.yaml",
        "conf/image.yaml",
        f"images/{export_filename(hello)}",
        f"images/{export_filename(hello2)}",
    }
    assert set(found) == expected_names

    # the boot partition: offspot.yaml as configured, boot files untouched
    assert yaml.safe_load(built.boot_file("offspot.yaml")) == config["offspot"]
    for name, content in DEFAULT_BOOT_FILES.items():
        assert built.boot_file(name) == content

    # each OCI image: a docker-archive that skopeo accepts (it hashes every layer), for arm64
    for ref in (hello, hello2):
        archive = tree / "images" / export_filename(ref)
        inspected = subprocess.run(
            ["skopeo", "inspect", f"docker-archive:{archive}"],
            check=True,
            capture_output=True,
            text=True,
        )
        assert json.loads(inspected.stdout)["Architecture"] == "arm64"
        subprocess.run(
            ["skopeo", "copy", "--quiet", f"docker-archive:{archive}", f"oci:{tmp_path}/oci:x"],
            check=True,
            capture_output=True,
        )

    # no leftovers next to the output
    assert sorted(path.name for path in output.parent.iterdir()) == ["offspot.img"]

    # the report: valid against the shipped schema, and its figures are the image's
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    assert (report["mode"], report["result"], report["error"]) == ("build", "success", None)
    assert report["config"]["sha256"] == sha(config_path.read_bytes())
    assert report["output"] == {
        "path": str(output),
        "size": OUTPUT_SIZE,
        "sha256": sha(output.read_bytes()),
    }
    assert report["base"]["checksum"] == "verified"
    assert report["base"]["image_size"] == base_image.stat().st_size
    assert report["sizes"]["output"] == OUTPUT_SIZE
    by_destination = {item["to"]: item for item in report["files"]}
    assert by_destination["/data/contents/zims/content.zim"]["bytes_written"] == len(ZIM)
    assert by_destination["/data/contents/zims/content.zim"]["checksum"] == "verified"
    assert by_destination["/data/contents/zims/checked.zim"]["checksum"] == "verified"
    tree_size = sum(len(content) for content in TREE.values())
    for via in archives:
        assert by_destination[f"/data/contents/site-{via}"]["bytes_written"] == tree_size
    assert by_destination["/data/conf/message.txt"]["source"] is None
    for item, ref in zip(report["oci_images"], (hello, hello2), strict=True):
        tar = tree / "images" / item["tar"]
        assert item["ident"] == ref
        assert item["size"] == tar.stat().st_size
        assert item["architecture"] == "arm64"
        pushed = registry_env[ref.split("/", 1)[1]].image_for("linux/arm64/v8")
        assert item["manifest_digest"] == pushed.manifest_digest
    assert [step["name"] for step in report["steps"]][:4] == [
        "Reading config",
        "Checking host",
        "Checking sources",
        "Computing sizes",
    ]

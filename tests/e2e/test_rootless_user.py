"""A build as an ordinary user: ``nobody``, with no access to /dev/loop*, no mount, no root.

The test (as root) drops to ``nobody`` with setpriv for the whole CLI run, as a user would
run it: no --rootless given, the build notices it is not root and says it goes rootless.
Run as an ordinary user already, it runs the CLI as that user. The image is then checked
from the outside: e2fsck, every file's digest, the OCI tar, offspot.yaml, the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import image_creator
from image_creator.demo import DEFAULT_DATA_FILES, make_base_image
from image_creator.fetch.oci import export_filename
from tests.support.archives import tar_bytes, zip_bytes
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage, tree_digests
from tests.support.registry import Registry
from tests.support.requirements import require_tools
from tests.support.users import reachable_by_everyone

pytestmark = pytest.mark.root

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
NOBODY_UID = 65534
IMAGE_CREATOR_BIN = Path(sys.executable).parent / "image-creator"
TREE = {"index.html": b"<h1>offline</h1>\n", "docs/deep/file.bin": bytes(range(256)) * 64}
ZIM = b"ZIM\x04" + bytes(range(256)) * 3000
OUTPUT_SIZE = 256 * 2**20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A folder outside pytest's private tree that the build's user owns (and only it)."""
    folder = Path(tempfile.mkdtemp(prefix="image-creator-rootless-"))
    try:
        if os.geteuid() == 0:
            os.chown(folder, NOBODY_UID, NOBODY_UID)
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _loop_devices_closed_to_nobody() -> None:
    for device in (Path("/dev/loop-control"), *Path("/dev").glob("loop[0-9]*")):
        info = device.stat()
        assert not info.st_mode & (stat.S_IROTH | stat.S_IWOTH), device
        assert info.st_uid != NOBODY_UID, device


def test_an_ordinary_user_builds_the_image(
    http_server: HttpServer, registry_env: Registry, user_dir: Path, tmp_path: Path
) -> None:
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy", "xz", "debugfs", "e2fsck")
    base = tmp_path / "base" / "base.img"
    make_base_image(base, xz=True)
    base_xz = base.with_name("base.img.xz").read_bytes()
    http_server.add("/base.img.xz", base_xz)
    http_server.add("/content.zim", ZIM)
    http_server.add("/site.zip", zip_bytes(TREE))
    http_server.add("/site.tar.xz", tar_bytes(TREE, "xz"))
    hello = registry_env["test/hello:1.0"].ref
    # the registry's CA where nobody can read it
    ca = user_dir / "registry-ca.pem"
    shutil.copyfile(os.environ["REQUESTS_CA_BUNDLE"], ca)
    ca.chmod(0o644)
    config = {
        "base": {"source": http_server.url("/base.img.xz")},
        "output": {"size": OUTPUT_SIZE},
        "oci_images": [hello],
        "files": [
            {
                "url": http_server.url("/content.zim"),
                "to": "/data/contents/content.zim",
                "checksum": {"algo": "sha-256", "value": sha(ZIM)},
            },
            {"url": http_server.url("/site.zip"), "to": "/data/contents/zip", "via": "zip"},
            {"url": http_server.url("/site.tar.xz"), "to": "/data/contents/xz", "via": "xztar"},
            {"to": "/data/conf/message.txt", "content": "hello world\n"},
        ],
        "write_config": True,
        "offspot": {"timezone": "Africa/Bamako"},
    }
    config_path = user_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    config_path.chmod(0o644)
    output, report = user_dir / "out.img", user_dir / "report.json"

    command = (
        [str(IMAGE_CREATOR_BIN)]
        if IMAGE_CREATOR_BIN.exists()
        else [
            sys.executable,
            "-m",
            "image_creator",
        ]
    )
    argv = [*command, "--report", str(report), str(config_path), str(output)]
    if os.geteuid() == 0:
        require_tools("setpriv")
        _loop_devices_closed_to_nobody()
        argv = [*NOBODY, *argv]
    package = Path(image_creator.__file__).parent
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(ca), "HOME": str(user_dir)}
    env.pop("CI", None)  # the CLI's behaviour does not depend on it
    with reachable_by_everyone(
        Path(sys.executable).parent, Path(sys.executable).resolve(), package
    ):
        result = subprocess.run(
            argv,
            cwd=user_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "building rootless (no loop device, no mount): not running as root" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    # only the image and the report were left: no side file, no build folder
    assert sorted(path.name for path in user_dir.iterdir()) == [
        "config.yaml",
        "out.img",
        "registry-ca.pem",
        "report.json",
    ]
    assert output.stat().st_uid == (NOBODY_UID if os.geteuid() == 0 else os.geteuid())
    assert output.stat().st_size == OUTPUT_SIZE

    built = BuiltImage.open(output)
    built.fsck_data()
    found = tree_digests(built.dump_data(tmp_path / "dump"))
    expected = {
        **{name: sha(content) for name, content in DEFAULT_DATA_FILES.items()},
        "contents/content.zim": sha(ZIM),
        **{f"contents/zip/{name}": sha(content) for name, content in TREE.items()},
        **{f"contents/xz/{name}": sha(content) for name, content in TREE.items()},
        "conf/message.txt": sha(b"hello world\n"),
        "image.yaml": sha(config_path.read_bytes()),
        "conf/image.yaml": sha(config_path.read_bytes()),
    }
    tar_name = f"images/{export_filename(hello)}"
    assert tar_name in found
    assert {name: digest for name, digest in found.items() if name != tar_name} == expected
    assert yaml.safe_load(built.boot_file("offspot.yaml")) == config["offspot"]

    document = json.loads(report.read_text())
    assert document["backend"] == {"name": "rootless", "reason": "not running as root"}
    assert document["oci_images"][0]["tar"] == export_filename(hello)

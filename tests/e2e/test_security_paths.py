"""What a base image, the config and the command line name can never reach on the host.

- a base image whose data partition holds links out of it (``contents -> /host/dir``,
  ``up -> ../..``): nothing is created through them;
- OUTPUT that is a device node, a FIFO or a link, and two builds racing for one OUTPUT;
- a --report that would overwrite the image or the config, or cannot be written;
- file entries aimed at what the build writes itself (/data/images, the config copies).

Each case runs the real command (as root, real loop devices) and checks the exit code, the
one-line error, that nothing was published or left behind, and that the host's canary tree
did not change.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import BaseImageLayout, make_base_image
from image_creator.system.run import run
from image_creator.ui.base import NullReporter
from tests.support.canary import Canary
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage, tree_digests
from tests.support.leaks import assert_no_leaks, clean_leftovers
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

IMAGE_CREATOR = Path(sys.executable).parent / "image-creator"
CONTENT = b"content that must land inside the image only\n"


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    return Canary.plant(tmp_path / "host")


@pytest.fixture
def output(tmp_path: Path) -> Any:
    require_root()
    require_tools("losetup", "mount", "e2fsck", "resize2fs", "sfdisk", "mke2fs", "debugfs")
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "hotspot.img"
    yield path
    clean_leftovers(path)


def hostile_base(folder: Path, links: dict[str, str]) -> BaseImageLayout:
    """A base image whose data partition holds the symbolic links ``links`` (name -> target),
    written with debugfs, as a hostile base image would carry them."""
    layout = make_base_image(folder / "base.img", data_files={})
    device = f"{layout.path}?offset={layout.data.start_bytes}"
    for name, target in links.items():
        run(["debugfs", "-w", "-R", f"symlink {name} {target}", device])
    listing = run(["debugfs", "-R", "ls -l /", device]).stdout
    assert all(name in listing for name in links), listing
    return layout


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def invoke(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, list[str]]:
    code = main([str(arg) for arg in argv], reporter=NullReporter())
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    return code, [line for line in stderr.splitlines() if line.startswith("error: ")]


# a hostile base image ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("links", "to"),
    [
        ({"contents": "{canary}/var"}, "/data/contents/x/y/file.zim"),
        ({"up": "../.."}, "/data/up/x/y/file.zim"),
        ({"up": "../.."}, "/data/up/file.zim"),
        ({"conf": "{canary}/etc"}, None),  # where write_config puts its second copy
    ],
)
def test_links_in_the_base_image_lead_nowhere(
    tmp_path: Path,
    output: Path,
    canary: Canary,
    http_server: HttpServer,
    capsys: pytest.CaptureFixture[str],
    links: dict[str, str],
    to: str | None,
) -> None:
    layout = hostile_base(
        tmp_path / "base",
        {name: target.format(canary=canary.root) for name, target in links.items()},
    )
    url = http_server.add("/file.zim", CONTENT)
    config: dict[str, Any] = {"base": str(layout.path)}
    if to is not None:
        config["files"] = [{"url": url, "to": to}]
    else:
        config["write_config"] = True
    code, errors = invoke(capsys, write_config(tmp_path, config), output)
    assert code == 1, errors
    assert len(errors) == 1 and "is a symbolic link" in errors[0], errors
    assert "refusing to write through it" in errors[0]
    canary.assert_unchanged()
    assert not output.exists()
    assert_no_leaks(output)
    # the build's own folders are gone, and nothing named like the content is on the host
    assert not list(tmp_path.rglob("file.zim"))


def test_a_link_inside_the_partition_is_not_followed_either(
    tmp_path: Path, output: Path, canary: Canary, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = hostile_base(tmp_path / "base", {"alias": "contents"})
    config = {"base": str(layout.path), "files": [{"to": "/data/alias/a.txt", "content": "a"}]}
    code, errors = invoke(capsys, write_config(tmp_path, config), output)
    assert code == 1
    assert errors == [
        "error: /data/alias/a.txt: /data/alias is a symbolic link (to contents): "
        "refusing to write through it"
    ]
    canary.assert_unchanged()
    assert_no_leaks(output)


# OUTPUT ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "char", "block", "link"])
def test_output_must_be_a_regular_file_even_with_overwrite(
    tmp_path: Path, output: Path, canary: Canary, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    layout = make_base_image(tmp_path / "base" / "base.img")
    if kind == "fifo":
        os.mkfifo(output)
    elif kind == "char":
        os.mknod(output, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
    elif kind == "block":
        os.mknod(output, stat.S_IFBLK | 0o600, os.makedev(7, 200))  # a loop device number
    else:
        output.symlink_to(canary.root / "etc" / "passwd")
    before = output.lstat()
    config = write_config(tmp_path, {"base": str(layout.path)})
    code, errors = invoke(capsys, "-X", config, output)
    assert code == 3
    assert len(errors) == 1 and f"{output}: OUTPUT is a" in errors[0], errors
    after = output.lstat()
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )
    canary.assert_unchanged()
    output.unlink()
    assert_no_leaks(output)


def test_two_builds_racing_for_one_output_never_replace_each_other(
    tmp_path: Path, output: Path, http_server: HttpServer
) -> None:
    """The slow build passes its checks first (OUTPUT absent), the fast one publishes while
    the slow one is still downloading; the slow one must then fail, not replace it."""
    layout = make_base_image(tmp_path / "base" / "base.img")
    slow_content = os.urandom(400_000)
    http_server.add("/slow.bin", slow_content)
    http_server.fault("/slow.bin", slow=100_000)  # about 4 s
    slow, fast = tmp_path / "slow" / "config.yaml", tmp_path / "fast" / "config.yaml"
    for folder, to, source in (
        (slow.parent, "/data/slow.bin", http_server.url("/slow.bin")),
        (fast.parent, "/data/fast.txt", None),
    ):
        files = [{"url": source, "to": to}] if source else [{"to": to, "content": "fast\n"}]
        folder.mkdir()
        write_config(folder, {"base": str(layout.path), "files": files})
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    first = subprocess.Popen(
        [str(IMAGE_CREATOR), str(slow), str(output)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(r.path == "/slow.bin" and r.method == "GET" for r in http_server.requests):
            assert time.monotonic() < deadline, "the slow build never started its download"
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        second = subprocess.run(
            [str(IMAGE_CREATOR), str(fast), str(output)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 0, second.stderr
        published = hashlib.sha256(output.read_bytes()).hexdigest()
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 3, stderr
    assert "appeared while the image was built" in stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == published
    tree = tree_digests(BuiltImage.open(output).dump_data(tmp_path / "dump"))
    assert "fast.txt" in tree and "slow.bin" not in tree
    output.unlink()  # the published image; nothing else may remain
    assert_no_leaks(output)


# --report ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("output", "is OUTPUT; the report would replace the image"),
        ("config", "is the config file"),
        ("folder", "is a directory"),
        ("missing-folder", "does not exist"),
        ("fifo", "is a FIFO"),
        ("build-folder", "inside a build folder"),
    ],
)
def test_a_bad_report_path_is_refused_before_anything(
    tmp_path: Path,
    output: Path,
    http_server: HttpServer,
    capsys: pytest.CaptureFixture[str],
    where: str,
    expected: str,
) -> None:
    layout = make_base_image(tmp_path / "base" / "base.img")
    url = http_server.add("/file.zim", CONTENT)
    config = write_config(
        tmp_path, {"base": str(layout.path), "files": [{"url": url, "to": "/data/f"}]}
    )
    config_bytes = config.read_bytes()
    report = {
        "output": output,
        "config": config,
        "folder": tmp_path,
        "missing-folder": tmp_path / "nowhere" / "report.json",
        "fifo": tmp_path / "report.fifo",
        "build-folder": tmp_path / ".image-creator-build-x" / "report.json",
    }[where]
    if where == "fifo":
        os.mkfifo(report)
    if where == "build-folder":
        report.parent.mkdir()
    code, errors = invoke(capsys, "--report", report, config, output)
    assert code == 3
    assert len(errors) == 1 and f"--report {report}: " in errors[0] and expected in errors[0]
    assert http_server.requests == ()  # refused before any source was looked at
    assert config.read_bytes() == config_bytes
    assert not output.exists()
    assert_no_leaks(output)


# what the build writes itself --------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"to": "/data/images", "via": "tar", "url": "{url}"},
            "files[0].to: /data/images: /data/images holds the OCI images",
        ),
        ({"to": "/data/images/evil.tar", "url": "{url}"}, "files[0].to: /data/images/evil.tar"),
        (
            {"to": "/data/image.yaml", "content": "not the config"},
            "files[0].to: /data/image.yaml: write_config puts the config's copy there",
        ),
    ],
)
def test_content_cannot_replace_what_the_build_writes(
    tmp_path: Path,
    output: Path,
    http_server: HttpServer,
    capsys: pytest.CaptureFixture[str],
    entry: dict[str, str],
    expected: str,
) -> None:
    layout = make_base_image(tmp_path / "base" / "base.img")
    url = http_server.add("/evil.tar", b"\0" * 1024)
    entry = {key: value.format(url=url) for key, value in entry.items()}
    config = {"base": str(layout.path), "write_config": True, "files": [entry]}
    code, errors = invoke(capsys, "--check", write_config(tmp_path, config))
    assert code == 3
    assert len(errors) == 1 and expected in errors[0], errors
    code, errors = invoke(capsys, write_config(tmp_path, config), output)
    assert code == 3 and len(errors) == 1 and expected in errors[0]
    assert http_server.requests == ()
    assert not output.exists()
    assert_no_leaks(output)


def _links_tar(links: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(_member("fine.txt", size=5), io.BytesIO(b"fine\n"))
        for name, target in links.items():
            tar.addfile(_member(name, link=target))
    return buffer.getvalue()


def _member(name: str, *, size: int = 0, link: str | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, 1_700_000_000
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
    return info


def test_an_archive_whose_links_lead_out_once_complete_is_refused(
    tmp_path: Path,
    output: Path,
    canary: Canary,
    http_server: HttpServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`a -> b/..` points inside while `b` is missing; `b -> .` then makes `a` lead out of
    the destination. Checked against the final tree: refused, nothing published."""
    layout = make_base_image(tmp_path / "base" / "base.img")
    url = http_server.add("/links.tar", _links_tar({"a": "b/..", "b": "."}))
    config = {"base": str(layout.path), "files": [{"url": url, "to": "/data/site", "via": "tar"}]}
    code, errors = invoke(capsys, write_config(tmp_path, config), output)
    assert code == 4
    assert errors == [
        f"error: {url}: member 'a': symlink target 'b/..' leads outside the destination once "
        "the whole archive is in"
    ]
    canary.assert_unchanged()
    assert not output.exists()
    assert_no_leaks(output)


def test_a_device_as_the_base_image_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`base: file:///dev/zero` would be copied forever; a FIFO would block the check."""
    fifo = tmp_path / "base.fifo"
    os.mkfifo(fifo)
    for base, kind in (("file:///dev/zero", "a character device"), (fifo.as_uri(), "a FIFO")):
        code, errors = invoke(capsys, "--check", write_config(tmp_path, {"base": base}))
        assert code == 4
        assert errors == [f"error: {base}: cannot read: is {kind}, not a regular file"]

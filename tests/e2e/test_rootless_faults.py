"""Faults of the rootless backend: a full data partition, a signal mid-write, a corrupt base
filesystem. Each ends in one clear error and the documented exit code, with nothing
published and nothing left (no partial image, no side file, no build folder).

The helpers and fixtures are those of test_build_failures (a real build against the
loopback HTTP server, in process or as a subprocess signalled at a chosen moment).
"""

from __future__ import annotations

import io
import os
import re
import signal
import tarfile
import zipfile
from pathlib import Path

import pytest

from image_creator.demo import BaseImageLayout, make_base_image
from image_creator.system.partitions import data_partition, read_partition_table
from tests.e2e.test_archive_sizes import gz_bomb_with_a_small_isize
from tests.e2e.test_build_failures import (
    MIB,
    SIGNALS,
    RunningBuild,
    assert_interrupted,
    base_config,
    base_image,
    build,
    output,
    served,
    write_config,
)
from tests.support.archives import tar_bytes
from tests.support.httpserver import HttpServer
from tests.support.leaks import assert_no_leaks, find_leftovers

__all__ = ["base_image", "output", "served"]  # fixtures, used by name

pytestmark = pytest.mark.root


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def zip_of_zeros(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", bytes(size))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["gztar", "zip"])
def test_a_full_data_partition(
    kind: str,
    served: HttpServer,
    output: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An archive expanding past the room the partition has: exit 1, one line naming the
    entry, nothing published. The zip is refused from its directory; the tar streams until
    the writer refuses a write that cannot fit (never half-written: libext2fs cannot undo a
    write that ran out)."""
    if kind == "zip":
        data = zip_of_zeros(400 * MIB)
        url = served.add("/big.zip", data)
        served.fault("/big.zip", no_range=True)  # its directory is not read at check time
    else:  # the check trusts what gzip tells of the size: the last member's only
        data = gz_bomb_with_a_small_isize(400 * MIB)
        url = served.add("/big.tar.gz", data)
    entry = {"url": url, "to": "/data/big", "via": kind, "size": len(data)}
    config = write_config(tmp_path, {**base_config(served), "files": [entry]})

    outcome = build(capsys, config, output, "--rootless")

    assert outcome.code == 1, outcome.stderr
    [error] = outcome.errors
    assert error.startswith(f"error: no room on the data partition for /data/big ({url}): ")
    if kind == "zip":
        assert f": the archive expands to {400 * MIB} bytes, " in error
    else:
        assert error.endswith(": No space left on device"), error
    assert "Traceback" not in outcome.stderr
    assert not output.exists()
    assert_no_leaks(output)


def test_out_of_inodes(
    served: HttpServer, output: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tar of more members than the partition has inodes (not counted at check time)."""
    url = served.add("/many.tar.gz", tar_bytes({f"many/{n}": b"" for n in range(60_000)}, "gz"))
    entry = {"url": url, "to": "/data/many", "via": "gztar"}
    config = write_config(tmp_path, {**base_config(served), "files": [entry]})

    outcome = build(capsys, config, output, "--rootless")

    assert outcome.code == 1, outcome.stderr
    [error] = outcome.errors
    found = re.fullmatch(
        r"error: out of inodes on the data partition: /data/many needs more than (\d+) inodes "
        r"\((\d+) free\)",
        error,
    )
    assert found is not None, error
    assert 0 < int(found[1]) <= int(found[2]) < 60_000
    assert not output.exists()
    assert_no_leaks(output)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_mid_write(
    signum: signal.Signals, served: HttpServer, output: Path, tmp_path: Path
) -> None:
    """Members being written into the image file when the signal lands: exit 130, the
    writer thread drains and closes the filesystem, the partial image is removed."""
    members = [(f"pages/page-{index:03}.html", os.urandom(512 * 1024)) for index in range(64)]
    url = served.add("/site.tar", tar_of(members))  # 32 MiB
    served.fault("/site.tar", slow=4 * MIB)  # ~8 s
    config = write_config(
        tmp_path,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/site", "via": "tar"}]},
    )

    def allocated() -> int:
        partials = find_leftovers(output).partials
        return sum(path.stat().st_blocks * 512 for path in partials if path.exists())

    with RunningBuild(["--rootless", str(config), str(output)]) as running:
        running.wait_for_line("==> Writing files")
        before = allocated()
        # members land in the image file itself: it grows as they are written
        running.wait_until(lambda: allocated() >= before + 3 * MIB, "3 MiB written")
        assert_interrupted(running, signum, output)
    assert not find_leftovers(output)


@pytest.fixture
def corrupt_base(tmp_path: Path) -> BaseImageLayout:
    """The demo base image with its data partition overwritten by noise: no superblock, no
    backup, nothing e2fsck can rebuild."""
    layout = make_base_image(tmp_path / "corrupt" / "base.img")
    partition = data_partition(read_partition_table(layout.path))
    with layout.path.open("r+b") as image:
        image.seek(partition.start_bytes)
        for _ in range(partition.size_bytes // MIB):
            image.write(os.urandom(MIB))
    return layout


@pytest.mark.parametrize("backend", [(), ("--rootless",)], ids=["mounted", "rootless"])
def test_a_corrupt_base_filesystem(
    backend: tuple[str, ...],
    corrupt_base: BaseImageLayout,
    http_server: HttpServer,
    output: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    http_server.add_file("/base.img", corrupt_base.path)
    config = write_config(tmp_path, {"base": http_server.url("/base.img")})

    outcome = build(capsys, config, output, *backend)

    assert outcome.code == 1, outcome.stderr
    [error] = outcome.errors
    assert error.startswith(
        "error: the base image's data filesystem (partition 3) is damaged beyond what e2fsck "
        "repairs (e2fsck exit 8): "
    ), error
    assert "Bad magic number in super-block" in error
    assert "hint: check the base image's source and checksum" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert not output.exists()
    assert_no_leaks(output)

"""Signals at the edges of a run: while it starts, as a pool of workers starts, and once the
image is published.

- Start-up: the handlers are set before the heavy imports, so SIGINT or SIGTERM at any
  moment after they are in (seen in /proc/PID/status) ends with exit 130 and one line.
- A pool starting: every worker has stopped before the image is unmounted; nothing is
  written next to OUTPUT or left behind, whatever instant the signal lands.
- After publishing: the build succeeded; the signal cuts short what follows (the report's
  sha256) and the exit is 0, with the complete image at OUTPUT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from image_creator.demo import make_base_image
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage
from tests.support.leaks import assert_no_leaks, clean_leftovers
from tests.support.requirements import require_root, require_tools

IMAGE_CREATOR = Path(sys.executable).parent / "image-creator"
BOUND = 60.0  # seconds any wait here may take before the test fails
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


def _caught(pid: int) -> int:
    """The mask of signals the process has handlers for (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(IMAGE_CREATOR), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"},
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"still running {BOUND:.0f}s after the signal:\n{out}\n{err}")
    return process.returncode, out, err


@pytest.mark.parametrize("signum", SIGNALS)
@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4])
def test_a_signal_during_start_up_exits_130_with_one_line(
    tmp_path: Path, http_server: HttpServer, signum: signal.Signals, delay: float
) -> None:
    """From the moment the handlers are in, through the imports, to reading the config (a
    URL that answers one byte a second, so the run is still starting when the signal comes)."""
    url = http_server.add("/config.yaml", b"base: 1.2.1\n" * 100)
    http_server.fault("/config.yaml", slow=1)
    process = _start(["--check", url])
    deadline = time.monotonic() + BOUND
    while not _caught(process.pid) & (1 << (signal.SIGTERM - 1)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the handlers were never installed"
        time.sleep(0.001)
    time.sleep(delay)
    process.send_signal(signum)
    code, _, stderr = _finish(process)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: interrupted"), stderr


@pytest.fixture
def small_base(tmp_path: Path) -> Path:
    require_root()
    require_tools("losetup", "mount", "e2fsck", "resize2fs", "sfdisk", "mke2fs", "debugfs")
    return make_base_image(tmp_path / "base" / "base.img").path


@pytest.mark.root
@pytest.mark.parametrize("offset", [0.0, 0.005, 0.015, 0.03, 0.06, 0.12])
def test_a_signal_as_the_workers_start_leaves_nothing(
    tmp_path: Path, http_server: HttpServer, small_base: Path, offset: float
) -> None:
    """Eight files written by four workers; the signal lands as the pool starts."""
    files = [
        {"url": http_server.add(f"/f{index}.bin", os.urandom(256 * 1024)), "to": f"/data/f{index}"}
        for index in range(8)
    ]
    for index in range(8):
        http_server.fault(f"/f{index}.bin", slow=512 * 1024)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"base": str(small_base), "files": files}))
    output = tmp_path / "out" / "hotspot.img"
    output.parent.mkdir()
    process = _start([str(config), str(output)])
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + BOUND
        for line in process.stdout:  # the step's title is printed as the pool starts
            if "Writing files" in line:
                break
            assert time.monotonic() < deadline
        time.sleep(offset)
        process.send_signal(signal.SIGINT)
        code, _, stderr = _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    # no worker wrote after the image was released: nothing next to OUTPUT, nothing left
    assert sorted(path.name for path in output.parent.iterdir()) == []
    assert_no_leaks(output)


@pytest.mark.root
@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_after_publishing_still_succeeds(
    tmp_path: Path, small_base: Path, signum: signal.Signals
) -> None:
    """The signal lands while the report's sha256 of a published 1 GiB image is computed."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": str(small_base),
                "output": {"size": "1GiB"},
                "files": [{"to": "/data/hello.txt", "content": "hello\n"}],
            }
        )
    )
    output = tmp_path / "out" / "hotspot.img"
    output.parent.mkdir()
    report = tmp_path / "report.json"
    process = _start(["--report", str(report), str(config), str(output)])
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + BOUND
        for line in process.stdout:
            if "image's sha256" in line:
                break
            assert time.monotonic() < deadline
        process.send_signal(signum)
        code, stdout, stderr = _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, stderr
    assert "received after the image was published: the build succeeded" in stdout, stdout
    assert output.stat().st_size == 2**30
    BuiltImage.open(output).fsck_data()
    output.unlink()
    assert_no_leaks(output)
    clean_leftovers(output)

"""Builds that fail or are interrupted leave nothing behind, and say what went wrong.

Each case runs a real build as root (loop devices, mounts) against the loopback HTTP server
(and the local registry), makes it fail on purpose (a bad checksum, a missing file, a file
changing mid-download, an unsafe archive, a signal) and checks two things: a non-zero exit
with a message naming the culprit, and that nothing is left: no OUTPUT, no partial image, no
build folder, no loop device, no mount (tests/support/leaks.py). With -K the partial image
stays, detached and unmounted, and its path is printed.

Failures are run in process through ``main()``; interrupts run ``.venv/bin/image-creator`` as
a subprocess and signal it at a chosen moment, found by watching its output, the HTTP
server's log or the build folder. Every wait is bounded: a hang fails the test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import queue
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import BaseImageLayout, make_base_image
from image_creator.progress import ProgressCallback
from image_creator.system.partitions import data_partition, read_partition_table
from image_creator.system.run import run
from image_creator.ui.base import NullReporter
from tests.support.httpserver import HttpServer
from tests.support.leaks import (
    assert_no_leaks,
    clean_leftovers,
    find_leftovers,
    loop_devices_in,
    mounts_in,
)
from tests.support.registry import Registry
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

MIB = 1024 * 1024
IMAGE_CREATOR = Path(sys.executable).parent / "image-creator"
BASE_README = b"This file was on the base image's data partition.\n"
# bounds for the subprocess tests: a hang fails the test instead of blocking CI
STEP_TIMEOUT = 60.0  # to reach the moment to interrupt
EXIT_TIMEOUT = 30.0  # from the signal to the exit, cleanup included
KEPT_RE = re.compile(r"kept the partial image \(-K\): (\S+)")


# fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> BaseImageLayout:
    """The demo base image (raw and .xz), shared: tests only read it."""
    require_root()
    require_tools(
        "losetup", "mount", "umount", "sfdisk", "e2fsck", "resize2fs", "mcopy", "mkfs.vfat"
    )
    require_tools("mke2fs", "xz", "debugfs")
    folder = tmp_path_factory.mktemp("base")
    return make_base_image(folder / "base.img", xz=True)


@pytest.fixture
def output(tmp_path: Path) -> Iterator[Path]:
    """Where the image goes, alone in its folder; whatever a test leaves there is cleaned up
    afterwards (each test asserts on it itself), so one failure does not poison the next."""
    require_root()
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "hotspot.img"
    yield path
    clean_leftovers(path)


@pytest.fixture
def served(http_server: HttpServer, base_image: BaseImageLayout) -> HttpServer:
    """The HTTP server, serving the base image as /base.img and /base.img.xz."""
    assert base_image.xz_path is not None
    http_server.add_file("/base.img", base_image.path)
    http_server.add_file("/base.img.xz", base_image.xz_path)
    return http_server


# helpers -----------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_config(folder: Path, config: Mapping[str, Any]) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def base_config(server: HttpServer, **extra: Any) -> dict[str, Any]:
    return {"base": {"source": server.url("/base.img.xz"), **extra}}


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def build(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    output: Path,
    *options: str,
    reporter: NullReporter | None = None,
) -> Outcome:
    """``image-creator [options] CONFIG OUTPUT`` in process."""
    code = main([*options, str(config), str(output)], reporter=reporter)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


class HookedReporter(NullReporter):
    """A silent reporter that runs a hook when a step starts or a progress bar first moves:
    the way to change the world between the source check and the build."""

    def __init__(
        self,
        *,
        on_step: Mapping[str, Callable[[], None]] | None = None,
        on_first_progress: Mapping[str, Callable[[], None]] | None = None,
    ) -> None:
        super().__init__()
        self._on_step = dict(on_step or {})
        self._on_first_progress = dict(on_first_progress or {})

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        hook = self._on_step.pop(title, None)
        if hook is not None:
            hook()
        with super().step(title):
            yield

    @contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[ProgressCallback]:
        hook = self._on_first_progress.pop(label, None)

        def advance(_nbytes: int) -> None:
            nonlocal hook
            if hook is not None:
                todo, hook = hook, None
                todo()

        yield advance


def tar_bytes(members: Sequence[tarfile.TarInfo | tuple[str, bytes]], *, gz: bool = False) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, content = member
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0) if gz else raw.getvalue()


def symlink_member(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def escaping(path: Path) -> str:
    """A relative path that, from anywhere on the build host, climbs to ``path``."""
    return "../" * 40 + str(path).lstrip("/")


def data_ls(image: Path, folder: str) -> set[str]:
    """Names in a folder of an image's data partition (debugfs, no mount)."""
    start = data_partition(read_partition_table(image)).start_bytes
    listing = run(["debugfs", "-R", f"ls -p {folder}", f"{image}?offset={start}"]).stdout
    # ls -p lines: /inode/mode/uid/gid/name/size/
    return {fields[5] for line in listing.splitlines() if len(fields := line.split("/")) > 6} - {
        ".",
        "..",
    }


def data_cat(image: Path, path: str) -> bytes:
    start = data_partition(read_partition_table(image)).start_bytes
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{image}?offset={start}"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


# checksums ---------------------------------------------------------------------------------


def test_direct_file_with_a_wrong_sha256(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = os.urandom(300_000)
    url = served.add("/content/video.webm", content)
    wrong = sha256(b"something else")
    config = write_config(
        output.parent.parent,
        {
            **base_config(served),
            "files": [
                {
                    "url": url,
                    "to": "/data/contents/video.webm",
                    "checksum": {"algo": "sha-256", "value": wrong},
                }
            ],
        },
    )

    outcome = build(capsys, config, output)

    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [
        f"error: {url}: sha-256 checksum mismatch: expected {wrong}, got {sha256(content)}"
    ]
    # the build really ran: the file was downloaded, in full, once
    assert [record.body_length for record in served.content_gets("/content/video.webm")] == [
        len(content)
    ]
    assert_no_leaks(output)


def test_archive_with_a_wrong_sha256(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tar_bytes([("index.html", b"<p>hello</p>\n"), ("a/b.txt", b"b\n")], gz=True)
    url = served.add("/site.tar.gz", archive)
    wrong = sha256(archive + b"\0")
    config = write_config(
        output.parent.parent,
        {
            **base_config(served),
            "files": [
                {
                    "url": url,
                    "to": "/data/contents/site",
                    "via": "gztar",
                    "checksum": {"algo": "sha-256", "value": wrong},
                }
            ],
        },
    )

    outcome = build(capsys, config, output)

    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [
        f"error: {url}: sha-256 checksum mismatch: expected {wrong}, got {sha256(archive)}"
    ]
    assert_no_leaks(output)


def test_base_image_with_a_wrong_checksum(
    served: HttpServer,
    base_image: BaseImageLayout,
    output: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert base_image.xz_path is not None
    actual = sha256(base_image.xz_path.read_bytes())
    wrong = sha256(b"not the base image")
    config = write_config(
        output.parent.parent,
        base_config(served, checksum={"algo": "sha-256", "value": wrong}),
    )

    outcome = build(capsys, config, output)

    assert outcome.code == 4, outcome.stderr
    url = served.url("/base.img.xz")
    assert outcome.errors == [
        f"error: {url}: sha-256 checksum mismatch: expected {wrong}, got {actual}"
    ]
    assert_no_leaks(output)


def test_base_image_checksum_read_from_a_url_that_disagrees(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = sha256(b"not the base image")
    sums = served.add("/base.img.xz.sha256", f"{wrong}  base.img.xz\n".encode())
    config = write_config(
        output.parent.parent,
        base_config(served, checksum={"algo": "sha-256", "kind": "url", "value": sums}),
    )

    outcome = build(capsys, config, output)

    assert outcome.code == 4, outcome.stderr
    assert len(outcome.errors) == 1
    assert f"{served.url('/base.img.xz')}: sha-256 checksum mismatch" in outcome.errors[0]
    assert f"expected {wrong}" in outcome.errors[0]
    assert_no_leaks(output)


# missing and changing sources --------------------------------------------------------------


def test_file_missing_at_check_time_stops_before_building(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = served.add("/gone.zim", b"zim" * 1000)
    served.fault("/gone.zim", status=404)
    config = write_config(
        output.parent.parent,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/gone.zim"}]},
    )

    outcome = build(capsys, config, output)

    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [f"error: {url}: HTTP 404 Not Found"]
    # caught by the source check: the base image was only probed (ranged reads), not fetched
    assert [r.range for r in served.content_gets("/base.img.xz") if r.range is None] == []
    assert "==> Fetching base image" not in outcome.stdout
    assert_no_leaks(output)


def test_file_gone_between_check_and_download(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check sees the file; it answers 404 by the time the build downloads it."""
    url = served.add("/later.zim", b"zim" * 1000)
    config = write_config(
        output.parent.parent,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/later.zim"}]},
    )
    reporter = HookedReporter(
        on_step={"Writing files": lambda: served.fault("/later.zim", status=404)}
    )

    outcome = build(capsys, config, output, reporter=reporter)

    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [f"error: {url}: HTTP 404 Not Found"]
    statuses = [(record.method, record.status) for record in served.requests_for("/later.zim")]
    assert statuses[0] == ("HEAD", 200)  # the check
    assert statuses[-1] == ("GET", 404)  # the build
    assert "step: Writing files" in reporter.messages
    assert_no_leaks(output)


def test_file_deleted_mid_download(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The connection drops halfway and the file is gone when the download resumes."""
    content = os.urandom(4 * MIB)
    url = served.add("/big.zim", content)
    config = write_config(
        output.parent.parent,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/big.zim"}]},
    )
    reporter = HookedReporter(
        on_step={"Writing files": lambda: served.fault("/big.zim", drop_after=2 * MIB, times=1)},
        on_first_progress={"/data/contents/big.zim": lambda: served.fault("/big.zim", status=404)},
    )

    outcome = build(capsys, config, output, reporter=reporter)

    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [f"error: {url}: HTTP 404 Not Found"]
    gets = [record for record in served.requests_for("/big.zim") if record.method == "GET"]
    assert [(record.status, record.body_length) for record in gets] == [(200, 2 * MIB), (404, 14)]
    assert gets[1].range == f"bytes={2 * MIB}-"  # it did try to resume
    assert_no_leaks(output)


def test_file_changed_mid_download_is_not_resumed(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The connection drops halfway and the file changed: resuming would mix two versions."""
    content = os.urandom(4 * MIB)
    url = served.add("/big.zim", content)
    old_etag = served.etag("/big.zim")
    config = write_config(
        output.parent.parent,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/big.zim"}]},
    )

    def change_the_file() -> None:
        served.add("/big.zim", os.urandom(4 * MIB))

    reporter = HookedReporter(
        on_step={"Writing files": lambda: served.fault("/big.zim", drop_after=2 * MIB, times=1)},
        on_first_progress={"/data/contents/big.zim": change_the_file},
    )

    outcome = build(capsys, config, output, reporter=reporter)

    assert outcome.code == 4, outcome.stderr
    new_etag = served.etag("/big.zim")
    assert outcome.errors == [
        f"error: {url}: cannot resume the download at byte {2 * MIB}: "
        f"its ETag changed from {old_etag} to {new_etag}"
    ]
    assert_no_leaks(output)


@pytest.mark.registry
def test_registry_image_without_arm64(
    served: HttpServer,
    registry_env: Registry,
    output: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ref = registry_env.ref("test/amd64only:1.0")
    config = write_config(output.parent.parent, {**base_config(served), "oci_images": [ref]})

    outcome = build(capsys, config, output)

    assert outcome.code == 4, outcome.stderr
    assert len(outcome.errors) == 1, outcome.stderr
    error = outcome.errors[0]
    assert "test/amd64only" in error
    assert "linux/arm64" in error  # what is missing
    assert "linux/amd64" in error  # and what there is
    assert "==> Fetching base image" not in outcome.stdout
    assert_no_leaks(output)


# unsafe archives ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UnsafeArchive:
    via: str
    member: str  # the member the error must name
    reason: str  # what the error must say about it
    content: bytes
    size: int | None = None


def unsafe_archives(outside: Path) -> dict[str, UnsafeArchive]:
    """Archives that try to write to ``outside`` (a folder on the build host)."""
    climb = escaping(outside / "evil.txt")
    link = escaping(outside)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("fine.txt", b"fine\n")
        archive.writestr(zipfile.ZipInfo(str(outside / "absolute.txt")), b"evil\n")
    return {
        "tar-dotdot": UnsafeArchive(
            via="tar",
            member=climb,
            reason="'..' in path refused",
            content=tar_bytes([("fine.txt", b"fine\n"), (climb, b"evil\n")]),
        ),
        "tar-symlink-out": UnsafeArchive(
            via="tar",
            member="escape",
            reason=f"symlink target {link!r} is outside the destination",
            content=tar_bytes(
                [
                    ("fine.txt", b"fine\n"),
                    symlink_member("escape", link),
                    ("escape/through-link.txt", b"evil\n"),
                ]
            ),
        ),
        "zip-absolute": UnsafeArchive(
            via="zip",
            member=str(outside / "absolute.txt"),
            reason="absolute path refused",
            content=zipped.getvalue(),
        ),
    }


# (an archive larger than its `size` is no longer refused: tests/e2e/test_archive_sizes.py)
@pytest.mark.parametrize("case", ["tar-dotdot", "tar-symlink-out", "zip-absolute"])
def test_unsafe_archive(
    case: str,
    served: HttpServer,
    output: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = unsafe_archives(outside)[case]
    url = served.add(f"/archive.{archive.via}", archive.content)
    entry: dict[str, Any] = {"url": url, "to": "/data/contents/site", "via": archive.via}
    if archive.size is not None:
        entry["size"] = archive.size
    config = write_config(tmp_path, {**base_config(served), "files": [entry]})

    outcome = build(capsys, config, output)

    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [f"error: {url}: member {archive.member!r}: {archive.reason}"]
    assert "==> Writing files" in outcome.stdout  # refused while extracting, not before
    assert list(outside.iterdir()) == []  # nothing written on the build host
    assert_no_leaks(output)


# -K ----------------------------------------------------------------------------------------


def test_keep_leaves_the_partial_image_detached_and_unmounted(
    served: HttpServer,
    output: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = unsafe_archives(outside)["tar-symlink-out"]
    text = b"written before the failure\n"
    url = served.add("/site.tar", archive.content)
    config = write_config(
        tmp_path,
        {
            **base_config(served),
            "files": [
                {"to": "/data/conf/first.txt", "content": text.decode()},
                {"url": url, "to": "/data/contents/site", "via": "tar"},
            ],
        },
    )

    # one worker: first.txt is written before the archive fails
    outcome = build(capsys, config, output, "-K", "-T", "1")

    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [f"error: {url}: member 'escape': {archive.reason}"]
    kept_paths = KEPT_RE.findall(outcome.stdout)
    assert len(kept_paths) == 1, outcome.stdout
    kept = Path(kept_paths[0])
    assert kept.parent == output.parent
    assert re.fullmatch(r"\.hotspot\.img\..+\.partial", kept.name)
    assert kept.is_file()
    # the leak check allows the kept image, and only it, and only detached and unmounted
    assert_no_leaks(output, kept=kept)
    assert loop_devices_in(output.parent) == []
    # it is the grown image, its data filesystem clean: unmounted properly, then detached
    table = read_partition_table(kept)
    assert data_partition(table).end_bytes == kept.stat().st_size
    start = data_partition(table).start_bytes
    run(["e2fsck", "-f", "-n", f"{kept}?offset={start}"])
    assert data_cat(kept, "/contents/readme.txt") == BASE_README
    assert data_cat(kept, "/conf/first.txt") == text
    # the failed archive left nothing on it, not even its staging folder
    assert data_ls(kept, "/contents") == {"readme.txt"}
    assert list(outside.iterdir()) == []
    kept.unlink()


def test_failure_keeps_an_existing_output_with_overwrite(
    served: HttpServer, output: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-X replaces OUTPUT only once the new image is complete: a failed build leaves it be."""
    output.write_bytes(b"the previous image\n")
    url = served.add("/file.bin", b"content\n")
    config = write_config(
        tmp_path,
        {
            **base_config(served),
            "files": [
                {
                    "url": url,
                    "to": "/data/file.bin",
                    "checksum": {"algo": "sha-256", "value": sha256(b"other")},
                }
            ],
        },
    )

    outcome = build(capsys, config, output, "-X")

    assert outcome.code == 4, outcome.stderr
    assert outcome.errors[0].startswith(f"error: {url}: sha-256 checksum mismatch")
    assert output.read_bytes() == b"the previous image\n"
    leftovers = find_leftovers(output)
    assert leftovers.output == output
    output.unlink()
    assert_no_leaks(output)


def test_a_failure_cancels_the_other_downloads(
    served: HttpServer, output: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One file fails its checksum while another still downloads slowly: the build stops
    at once instead of waiting for the slow one, and cleans up."""
    slow_url = served.add("/slow.zim", os.urandom(16 * MIB))
    served.fault("/slow.zim", stall=600)  # would hold it for 10 minutes, from its first byte
    bad_url = served.add("/bad.txt", b"not what was announced\n")
    served.fault("/bad.txt", slow=20)  # about a second: the slow download has started by then
    config = write_config(
        tmp_path,
        {
            **base_config(served),
            "files": [
                {"url": slow_url, "to": "/data/contents/slow.zim"},
                {
                    "url": bad_url,
                    "to": "/data/contents/bad.txt",
                    "checksum": {"algo": "sha-256", "value": sha256(b"announced")},
                },
            ],
        },
    )

    outcome = build(capsys, config, output)

    assert outcome.code == 4, outcome.stderr
    assert len(outcome.errors) == 1
    assert outcome.errors[0].startswith(f"error: {bad_url}: sha-256 checksum mismatch")
    # the stalled download was cut by the build, not waited for: its server saw it hang up
    deadline = time.monotonic() + 10
    while not served.hangups_for("/slow.zim"):
        assert time.monotonic() < deadline, "the stalled download was not cancelled"
        time.sleep(0.02)
    assert all(hangup.left > 500 for hangup in served.hangups_for("/slow.zim"))
    assert_no_leaks(output)


# interrupts --------------------------------------------------------------------------------


@contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """A shell without job control starts background jobs with SIGINT ignored; a child would
    inherit that and Python would then install no KeyboardInterrupt handler in it. A handled
    signal is reset to its default by exec, an ignored one is not: handle it while starting."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class RunningBuild:
    """``image-creator`` in a subprocess, its stdout read line by line as it comes."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        with sigint_not_ignored():
            self.process = subprocess.Popen(
                [str(IMAGE_CREATOR), *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # a Ctrl-C on the test run does not reach it twice
            )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.process.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self, stream: io.TextIOBase) -> None:
        self._stderr.extend(stream)

    @property
    def stdout(self) -> str:
        self._drain()
        return "\n".join(self.lines)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def wait_for_line(self, text: str, timeout: float = STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        if any(text in line for line in self.lines):
            return
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._lines.put(None)
                pytest.fail(
                    f"the build ended before printing {text!r}: "
                    f"exit {self.process.wait(5)}\n{self.stdout}\n{self.stderr}"
                )
            self.lines.append(line)
            if text in line:
                return
        pytest.fail(f"no {text!r} within {timeout:.0f}s:\n{self.stdout}\n{self.stderr}")

    def wait_until(
        self, condition: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                pytest.fail(
                    f"the build ended (exit {self.process.returncode}) before {what}:\n"
                    f"{self.stdout}\n{self.stderr}"
                )
            time.sleep(0.02)
        pytest.fail(f"not {what} within {timeout:.0f}s:\n{self.stdout}\n{self.stderr}")

    def interrupt(self, signum: signal.Signals, timeout: float = EXIT_TIMEOUT) -> tuple[int, float]:
        """Send ``signum``; return the exit code and the seconds it took to exit."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            pytest.fail(f"still running {timeout:.0f}s after {signum.name}:\n{self.stdout}")
        for thread in self._threads:
            thread.join(10)
        return code, time.monotonic() - sent

    def __enter__(self) -> RunningBuild:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def build_dirs(output: Path) -> list[Path]:
    return sorted(output.parent.glob(".image-creator-build-*"))


def staged_under(output: Path, pattern: str) -> list[Path]:
    """Paths matching ``pattern`` on the mounted data partition of the running build."""
    return [path for folder in build_dirs(output) for path in folder.glob(f"data/{pattern}")]


def assert_interrupted(running: RunningBuild, signum: signal.Signals, output: Path) -> None:
    """The build is mid-way (image attached and mounted or being resized); signal it."""
    code, _ = running.interrupt(signum)  # a bounded wait: a build that hangs fails the test
    assert code == 130, f"exit {code}\n{running.stdout}\n{running.stderr}"
    expected = "interrupted" if signum == signal.SIGINT else "interrupted by SIGTERM"
    errors = [line for line in running.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {expected}"], running.stderr
    assert "image ready" not in running.stdout
    assert_no_leaks(output)


SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


def test_interrupt_while_downloading_the_base_image(
    served: HttpServer, output: Path, tmp_path: Path
) -> None:
    # the raw image (129 MiB) at 16 MiB/s: the check reads only its first sector
    served.fault("/base.img", slow=16 * MIB)
    config = write_config(tmp_path, {"base": served.url("/base.img")})

    with RunningBuild([str(config), str(output)]) as running:
        running.wait_for_line("==> Fetching base image")
        running.wait_until(
            lambda: any(
                record.method == "GET" and record.range is None
                for record in served.requests_for("/base.img")
            ),
            "downloading the base image",
        )
        time.sleep(0.5)
        assert len(find_leftovers(output).partials) == 1  # mid-way: the partial image exists
        assert_interrupted(running, signal.SIGINT, output)


@pytest.mark.parametrize("signum", SIGNALS)
def test_interrupt_while_downloading_a_file(
    signum: signal.Signals, served: HttpServer, output: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.zim"
    big.write_bytes(os.urandom(48 * MIB))
    url = served.add_file("/big.zim", big)
    served.fault("/big.zim", slow=4 * MIB)  # ~12 s
    config = write_config(
        tmp_path,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/big.zim"}]},
    )

    with RunningBuild([str(config), str(output)]) as running:
        running.wait_for_line("==> Writing files")

        def part_written() -> bool:
            parts = staged_under(output, "contents/.big.zim.*.part")
            return any(path.stat().st_size >= 2 * MIB for path in parts)

        running.wait_until(part_written, "2 MiB of big.zim written onto the image")
        # mid-way indeed: the data partition is attached and mounted in the build folder
        assert len(loop_devices_in(output.parent)) == 1
        assert any(point.endswith("/data") for point in mounts_in(output.parent))
        assert_interrupted(running, signum, output)


def test_interrupt_on_a_slow_link_is_prompt(
    served: HttpServer, output: Path, tmp_path: Path
) -> None:
    url = served.add("/slow.zim", os.urandom(4 * MIB))
    served.fault("/slow.zim", slow=64 * 1024)  # a poor mirror: about a minute
    config = write_config(
        tmp_path,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/slow.zim"}]},
    )

    with RunningBuild([str(config), str(output)]) as running:
        running.wait_for_line("==> Writing files")
        running.wait_until(
            lambda: bool(staged_under(output, "contents/.slow.zim.*.part")), "downloading"
        )
        time.sleep(1)
        assert_interrupted(running, signal.SIGINT, output)


def test_keep_on_interrupt(served: HttpServer, output: Path, tmp_path: Path) -> None:
    url = served.add("/slow.zim", os.urandom(16 * MIB))
    served.fault("/slow.zim", slow=2 * MIB)
    config = write_config(
        tmp_path,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/slow.zim"}]},
    )

    with RunningBuild(["-K", str(config), str(output)]) as running:
        running.wait_for_line("==> Writing files")
        running.wait_until(
            lambda: bool(staged_under(output, "contents/.slow.zim.*.part")), "downloading"
        )
        code, _ = running.interrupt(signal.SIGINT)

    assert code == 130, running.stderr
    kept_paths = KEPT_RE.findall(running.stdout)
    assert len(kept_paths) == 1, running.stdout
    kept = Path(kept_paths[0])
    assert kept.is_file()
    assert_no_leaks(output, kept=kept)
    # unmounted cleanly: the data filesystem checks clean, the base content is there
    start = data_partition(read_partition_table(kept)).start_bytes
    run(["e2fsck", "-f", "-n", f"{kept}?offset={start}"])
    assert data_cat(kept, "/contents/readme.txt") == BASE_README
    kept.unlink()


def test_interrupt_while_extracting_a_big_tar(
    served: HttpServer, output: Path, tmp_path: Path
) -> None:
    members = [(f"pages/page-{index:03}.html", os.urandom(512 * 1024)) for index in range(64)]
    url = served.add("/site.tar", tar_bytes(members))  # 32 MiB
    served.fault("/site.tar", slow=4 * MIB)  # ~8 s
    config = write_config(
        tmp_path,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/site", "via": "tar"}]},
    )

    with RunningBuild([str(config), str(output)]) as running:
        running.wait_for_line("==> Writing files")
        running.wait_until(
            lambda: len(staged_under(output, "contents/.site.*.part/pages/*")) >= 3,
            "3 members extracted",
        )
        assert_interrupted(running, signal.SIGINT, output)


def _slow_resize2fs(folder: Path, marker: Path) -> Path:
    """A ``resize2fs`` that holds the device open and waits before running the real one."""
    real = run(["sh", "-c", "command -v resize2fs || echo /usr/sbin/resize2fs"]).stdout.strip()
    folder.mkdir()
    script = folder / "resize2fs"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        "device = os.open(sys.argv[-1], os.O_RDONLY)\n"
        f"with open({str(marker)!r}, 'w') as marker:\n"
        "    marker.write(str(os.getpid()))\n"
        "time.sleep(120)\n"
        "os.close(device)\n"
        f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n"
    )
    script.chmod(0o755)
    return folder


@pytest.mark.parametrize("signum", SIGNALS)
def test_interrupt_while_resizing(
    signum: signal.Signals, served: HttpServer, output: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "resize2fs.pid"
    tools = _slow_resize2fs(tmp_path / "slow-tools", marker)
    config = write_config(tmp_path, base_config(served))
    env = {"PATH": f"{tools}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}

    with RunningBuild([str(config), str(output)], env=env) as running:
        running.wait_for_line("==> Resizing data filesystem")
        running.wait_until(lambda: marker.is_file() and marker.read_text() != "", "resize2fs ran")
        resize_pid = int(marker.read_text())
        # mid-way indeed: the partition is attached (and not mounted yet) while resize2fs runs
        assert len(loop_devices_in(output.parent)) == 1
        assert mounts_in(output.parent) == []
        assert_interrupted(running, signum, output)
        assert not Path(f"/proc/{resize_pid}").exists()  # resize2fs did not outlive the build


def test_interrupt_right_after_resizing_starts(
    served: HttpServer, output: Path, tmp_path: Path
) -> None:
    """The real tools, signalled the moment the log says "Resizing" (whatever runs then)."""
    # a slow file after the resize, so that the build cannot be over when the signal lands
    url = served.add("/slow.zim", os.urandom(8 * MIB))
    served.fault("/slow.zim", slow=1 * MIB)
    config = write_config(
        tmp_path,
        {
            **base_config(served),
            "output": {"size": "8GiB"},
            "files": [{"url": url, "to": "/data/contents/slow.zim"}],
        },
    )

    with RunningBuild([str(config), str(output)]) as running:
        running.wait_for_line("==> Resizing data filesystem")
        assert_interrupted(running, signal.SIGINT, output)


def test_interrupt_with_a_build_dir_elsewhere(
    served: HttpServer, output: Path, tmp_path: Path
) -> None:
    """--build-dir: the data partition is mounted there; it goes too."""
    builds = tmp_path / "builds"
    url = served.add("/slow.zim", os.urandom(16 * MIB))
    served.fault("/slow.zim", slow=2 * MIB)
    config = write_config(
        tmp_path,
        {**base_config(served), "files": [{"url": url, "to": "/data/contents/slow.zim"}]},
    )

    with RunningBuild(["--build-dir", str(builds), str(config), str(output)]) as running:
        running.wait_for_line("==> Writing files")
        running.wait_until(
            lambda: any(point.startswith(f"{builds}/") for point in mounts_in(builds)),
            "the data partition mounted in the build dir",
        )
        assert len(loop_devices_in(output.parent)) == 1
        code, _ = running.interrupt(signal.SIGINT)
        assert code == 130, running.stderr
        assert_no_leaks(output, build_dir=builds)
        assert list(builds.iterdir()) == []


def _slow_umount(folder: Path, marker: Path) -> Path:
    """An ``umount`` that takes its time (as one flushing gigabytes of dirty pages does)."""
    real = run(["sh", "-c", "command -v umount || echo /usr/bin/umount"]).stdout.strip()
    folder.mkdir()
    script = folder / "umount"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        f"with open({str(marker)!r}, 'a') as marker:\n"
        "    marker.write(f'{os.getpid()}\\n')\n"
        "time.sleep(3)\n"
        f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n"
    )
    script.chmod(0o755)
    return folder


@pytest.mark.parametrize("first", ["SIGINT", "failure"])
def test_signal_during_cleanup(
    first: str, served: HttpServer, output: Path, tmp_path: Path
) -> None:
    """Ctrl-C, then Ctrl-C again while the build unmounts (an impatient user); or a failed
    build getting SIGTERM while it unmounts (a CI timeout): still nothing left behind."""
    marker = tmp_path / "umount.pids"
    tools = _slow_umount(tmp_path / "slow-tools", marker)
    url = served.add("/slow.zim", os.urandom(16 * MIB))
    entry: dict[str, Any] = {"url": url, "to": "/data/contents/slow.zim"}
    if first == "SIGINT":
        served.fault("/slow.zim", slow=2 * MIB)
    else:
        entry["checksum"] = {"algo": "sha-256", "value": sha256(b"other")}
    config = write_config(tmp_path, {**base_config(served), "files": [entry]})
    env = {"PATH": f"{tools}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}

    with RunningBuild([str(config), str(output)], env=env) as running:
        running.wait_for_line("==> Writing files")
        if first == "SIGINT":
            running.wait_until(
                lambda: any(point.endswith("/data") for point in mounts_in(output.parent)),
                "the data partition mounted",
            )
            running.process.send_signal(signal.SIGINT)
        running.wait_until(marker.is_file, "unmounting")
        code, _ = running.interrupt(signal.SIGINT if first == "SIGINT" else signal.SIGTERM)
        assert code in (4, 130), running.stderr
        assert_no_leaks(output)

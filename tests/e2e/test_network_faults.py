"""Network faults end a build in one of two ways: exit 0 with a complete, verified image, or a
documented non-zero exit with nothing published and nothing left behind, within seconds of a
signal and never after an unbounded wait.

Each fault is produced by the loopback servers on purpose (tests/support/httpserver.py,
tests/support/hostile_registry.py): a GET shorter than its HEAD, content that changes after
the check, an endless body, a server dripping a byte at a time, a server stalled after its
headers, a registry layer that inflates far past its gzip trailer. Failures run in process
through ``main()``, with the stall constants lowered at their seam (fetch/watch.py) so that a
test takes seconds. Signals go to a subprocess build while a transfer is blocked on a stalled
server: it must exit 130, leave nothing, and the server's log must show the client hanging up
while the stall still had minutes to run (the transfer was cut, not waited out).
"""

from __future__ import annotations

import os
import signal
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_creator.cli import main
from image_creator.fetch import watch
from image_creator.ui.base import NullReporter
from tests.e2e.test_build_failures import (
    SIGNALS,
    RunningBuild,
    assert_interrupted,
    base_config,
    base_image,
    build,
    output,
    served,
    staged_under,
    write_config,
)
from tests.support.hostile_registry import (
    HostileRegistry,
    canonical,
    config_for,
    honest_image,
    manifest_for,
    running_hostile_registry,
    sha256,
)
from tests.support.httpserver import HttpServer
from tests.support.leaks import assert_no_leaks
from tests.support.oci_layout import ARM64
from tests.support.registry import LOOPBACK_NO_PROXY, make_certificates
from tests.support.requirements import require_tools

pytestmark = pytest.mark.root

__all__ = ["base_image", "output", "served"]  # fixtures shared with test_build_failures

MIB = 1024 * 1024
LONG_STALL = 600.0  # seconds: far longer than any test waits


@pytest.fixture
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stall and deadline constants lowered at the seam (in process only)."""
    monkeypatch.setattr(watch, "STALL_WINDOW", 0.6)
    monkeypatch.setattr(watch, "WATCH_INTERVAL", 0.05)
    monkeypatch.setattr(watch, "TEXT_DEADLINE", 1.5)


def wait_for_hangup(server: HttpServer, path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.hangups_for(path):
        assert time.monotonic() < deadline, f"the client never hung up on {path}"
        time.sleep(0.02)


def file_config(server: HttpServer, folder: Path, url: str, **entry: object) -> Path:
    return write_config(
        folder,
        {**base_config(server), "files": [{"url": url, "to": "/data/contents/f.zim", **entry}]},
    )


# what arrives is what was announced ---------------------------------------------------------


def test_a_get_shorter_than_its_head(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = os.urandom(300_000)
    url = served.add("/f.zim", content)
    served.fault("/f.zim", short_by=1000)  # HEAD says 300000, GET announces and sends 299000
    outcome = build(capsys, file_config(served, output.parent.parent, url), output)
    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [
        f"error: {url}: the download announces 299000 bytes, the check found 300000 bytes"
    ]
    assert_no_leaks(output)


def test_content_changed_between_check_and_download(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = os.urandom(300_000)
    url = served.add("/f.zim", content)
    served.fault("/f.zim", change_after_probe=os.urandom(300_000))  # same length
    etag_checked = served.etag("/f.zim")
    outcome = build(capsys, file_config(served, output.parent.parent, url), output)
    assert outcome.code == 4, outcome.stderr
    etag_now = served.etag("/f.zim")
    assert outcome.errors == [
        f"error: {url}: its ETag is {etag_now} for the download, {etag_checked} when checked"
    ]
    assert_no_leaks(output)


def test_an_endless_body_does_not_fill_the_partition(
    served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = served.add("/f.zim", os.urandom(300_000))
    served.fault("/f.zim", longer_than_announced=True)  # no Content-Length, filler forever
    outcome = build(capsys, file_config(served, output.parent.parent, url), output)
    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [
        f"error: {url}: the server sends more than the 300000 bytes announced"
    ]
    wait_for_hangup(served, "/f.zim")
    assert [hangup.fault for hangup in served.hangups_for("/f.zim")] == ["endless"]
    assert_no_leaks(output)


# no unbounded waits -------------------------------------------------------------------------


def test_a_dripping_file_url(
    quick_watch: None, served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = served.add("/f.zim", os.urandom(300_000))
    served.fault("/f.zim", drip=2.0)  # a byte every 2 s: 7 days
    outcome = build(capsys, file_config(served, output.parent.parent, url), output)
    assert outcome.code == 4, outcome.stderr
    assert len(outcome.errors) == 1, outcome.stderr
    assert outcome.errors[0].startswith(f"error: {url}: stalled (less than 1024 bytes/s for 0.6s)")
    assert outcome.errors[0].endswith("(gave up after 3 stalls)")
    assert_no_leaks(output)


def test_a_dripping_config_src(
    quick_watch: None, http_server: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = http_server.add("/config.yaml", b"base: 1.2.1\n" + b"# padding\n" * 20)
    http_server.fault("/config.yaml", drip=0.1)
    code = main([url, str(tmp_path / "hotspot.img")], reporter=NullReporter())
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 4, errors
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {url}: ")
    assert "stalled" in errors[0] or "no complete answer within" in errors[0]
    wait_for_hangup(http_server, "/config.yaml")
    assert not (tmp_path / "hotspot.img").exists()


def test_a_config_src_dripping_fast_enough_gets_its_deadline(
    quick_watch: None,
    monkeypatch: pytest.MonkeyPatch,
    http_server: HttpServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(watch, "MIN_RATE", 1)  # 10 bytes/s is no stall: the deadline ends it
    url = http_server.add("/config.yaml", b"base: 1.2.1\n" + b"# padding\n" * 20)
    http_server.fault("/config.yaml", drip=0.1)
    code = main([url, str(tmp_path / "hotspot.img")], reporter=NullReporter())
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 4, errors
    assert errors == [f"error: {url}: no complete answer within 1.5s"]


def test_a_stall_after_the_headers_is_bounded(
    quick_watch: None, served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = served.add("/f.zim", os.urandom(300_000))
    served.fault("/f.zim", stall=LONG_STALL, stall_after=1000)
    outcome = build(capsys, file_config(served, output.parent.parent, url), output)
    assert outcome.code == 4, outcome.stderr
    assert len(outcome.errors) == 1, outcome.stderr
    assert outcome.errors[0].startswith(f"error: {url}: stalled")
    # each resume gets the next 1000 bytes, then the stall again
    assert outcome.errors[0].endswith("at byte 3000 (gave up after 3 stalls)")
    wait_for_hangup(served, "/f.zim")
    assert all(hangup.left > LONG_STALL - 60 for hangup in served.hangups_for("/f.zim"))
    assert_no_leaks(output)


def test_a_stall_once_is_resumed_and_the_image_is_complete(
    quick_watch: None, served: HttpServer, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = os.urandom(300_000)
    url = served.add("/f.zim", content)
    served.fault("/f.zim", stall=LONG_STALL, stall_after=100_000, times=2)  # HEAD, GET
    checksum = {"algo": "sha-256", "value": sha256(content).removeprefix("sha256:")}
    config = file_config(served, output.parent.parent, url, checksum=checksum)
    outcome = build(capsys, config, output)
    assert outcome.code == 0, outcome.stderr
    assert [record.range for record in served.requests_for("/f.zim")][-1] == "bytes=100000-"
    output.unlink()
    assert_no_leaks(output)


# cancellation within seconds of a signal ----------------------------------------------------


def assert_cut(server: HttpServer, path: str) -> None:
    """The server's stall was still running when the client hung up."""
    wait_for_hangup(server, path)
    hangups = server.hangups_for(path)
    assert all(hangup.left > LONG_STALL - 120 for hangup in hangups), hangups


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_while_a_file_download_is_stalled(
    signum: signal.Signals, served: HttpServer, output: Path, tmp_path: Path
) -> None:
    url = served.add("/f.zim", os.urandom(4 * MIB))
    served.fault("/f.zim", stall=LONG_STALL, stall_after=MIB)
    config = file_config(served, tmp_path, url)
    with RunningBuild([str(config), str(output)]) as running:
        running.wait_for_line("==> Writing files")
        running.wait_until(
            lambda: any(p.stat().st_size >= MIB for p in staged_under(output, "contents/.f.*")),
            "the first MiB written",
        )
        time.sleep(0.3)  # blocked in the stall
        assert_interrupted(running, signum, output)
    assert_cut(served, "/f.zim")


@pytest.mark.parametrize(
    ("signum", "path"),
    [
        pytest.param(signal.SIGINT, "/base.img", id="SIGINT-raw"),
        pytest.param(signal.SIGTERM, "/base.img.xz", id="SIGTERM-xz"),
    ],
)
def test_signal_while_the_base_image_download_is_stalled(
    signum: signal.Signals, path: str, served: HttpServer, output: Path, tmp_path: Path
) -> None:
    """The base image is read in the main thread (raw) or by xz's feeder thread (.xz)."""
    # the .xz is 22 KiB: stalled after 10 KB, the check's ranged reads are not
    served.fault(path, stall=LONG_STALL, stall_after=10_000, stall_ranged=False)
    config = write_config(tmp_path, {"base": served.url(path)})
    with RunningBuild([str(config), str(output)]) as running:
        running.wait_for_line("==> Fetching base image")
        running.wait_until(
            lambda: any(
                record.method == "GET" and record.range is None
                for record in served.requests_for(path)
            ),
            "downloading the base image",
        )
        time.sleep(1.0)  # the first bytes came: blocked in the stall
        assert_interrupted(running, signum, output)
    assert_cut(served, path)


# registry layers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools("openssl")
    folder = tmp_path_factory.mktemp("certs")
    make_certificates(folder)
    return folder


@pytest.fixture
def registry_env(certs: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "REQUESTS_CA_BUNDLE": str(certs / "ca.crt"),
        "NO_PROXY": LOOPBACK_NO_PROXY,
        "no_proxy": LOOPBACK_NO_PROXY,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _gzip_bomb(inflated: int) -> bytes:
    """A gzip stream of ``inflated`` zero bytes whose trailer (ISIZE) claims the stream's own
    size (about 260 KB for 256 MiB), as an incompressible layer's would."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    parts = [compressor.compress(zeros) for _ in range(inflated // MIB)]
    blob = b"".join(parts) + compressor.flush()
    return blob[:-4] + len(blob).to_bytes(4, "little")


@pytest.fixture
def hostile(certs: Path, registry_env: dict[str, str]) -> Iterator[tuple[HostileRegistry, str]]:
    """The hostile registry serving an honest image; yields it and its arm64 layer's key."""
    image = honest_image()
    served_docs = image.documents()
    with running_hostile_registry(certs, served_docs) as registry:
        yield registry, image.arm64.manifest["layers"][0]["digest"]


def test_a_layer_inflating_past_its_trailer(
    certs: Path,
    registry_env: dict[str, str],
    served: HttpServer,
    output: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 260 KB trailer on a layer inflating to 256 MiB: stopped, not written to the host."""
    blob = _gzip_bomb(256 * MIB)
    image = honest_image()
    config = canonical(config_for(ARM64, [b"a layer that does not matter"]))
    image.arm64.config = config_for(ARM64, [b"a layer that does not matter"])
    image.arm64.manifest = manifest_for(config, [blob])
    documents = image.documents()
    documents.add_blob(blob)
    with running_hostile_registry(certs, documents) as registry:
        path = write_config(
            output.parent.parent, {**base_config(served), "oci_images": [registry.ref]}
        )
        outcome = build(capsys, path, output)
    assert outcome.code == 4, outcome.stderr
    assert outcome.errors == [
        f"error: {registry.ref}: layers[0] ({sha256(blob)}) inflates past the {len(blob)} bytes "
        f"its gzip trailer gives (and {1024 * 1024} bytes of slack); refused"
    ]
    assert_no_leaks(output)


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_while_a_registry_layer_is_stalled(
    signum: signal.Signals,
    hostile: tuple[HostileRegistry, str],
    registry_env: dict[str, str],
    served: HttpServer,
    output: Path,
    tmp_path: Path,
) -> None:
    registry, layer = hostile
    registry.served.stalls[layer] = LONG_STALL
    config = write_config(tmp_path, {**base_config(served), "oci_images": [registry.ref]})
    with RunningBuild([str(config), str(output)], env=registry_env) as running:
        running.wait_until(
            lambda: registry.requests.count(f"/v2/test/evil/blobs/{layer}") >= 2,
            "pulling the layer (after the check's ranged read)",
        )
        time.sleep(0.5)  # blocked in the stall
        assert_interrupted(running, signum, output)
    deadline = time.monotonic() + 10
    while not registry.hangups and time.monotonic() < deadline:
        time.sleep(0.02)
    assert registry.hangups, "the layer download was not cut"
    assert all(key == layer and left > LONG_STALL - 120 for key, left in registry.hangups)

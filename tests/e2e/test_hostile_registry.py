"""A registry that lies must not write on the host, nor slip content past the digests.

Each attack is served by tests/support/hostile_registry.py over TLS on loopback, aimed at a
canary tree (tests/support/canary.py). ``--check`` and a real build must both refuse it with
one ``error:`` line naming the image (exit 4) and leave nothing: no published image, no
partial image, build folder, loop device or mount, no change in the canary, no file named
after the hostile digest, and no request made with a digest that is not ``sha256:<64 hex>``.
Attacks only a download can reveal (a tampered layer, documents that change between the
check and the build) pass ``--check`` and fail the build.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import BaseImageLayout, make_base_image
from image_creator.fetch.oci import export_filename
from image_creator.ui.base import NullReporter
from tests.support.canary import Canary
from tests.support.hostile_registry import (
    TAG,
    HonestImage,
    HostileRegistry,
    Served,
    canonical,
    config_for,
    honest_image,
    layer_blob,
    manifest_for,
    running_hostile_registry,
    sha256,
)
from tests.support.image_files import BuiltImage
from tests.support.leaks import assert_no_leaks
from tests.support.oci_layout import ARM64
from tests.support.registry import LOOPBACK_NO_PROXY, make_certificates
from tests.support.requirements import require_root, require_tools

PWNED = "pwned-by-registry"
# what a well-behaved client may ask this registry, and nothing else
ALLOWED_REQUEST = re.compile(
    r"/v2/?|/token|/v2/test/evil/(manifests/(1\.0|sha256:[0-9a-f]{64})|blobs/sha256:[0-9a-f]{64})"
)
EVIL_FILES = {"hello.txt": b"not what the manifest promised\n", "etc/arch": b"arm64v8\n"}


# attacks --------------------------------------------------------------------------------------

Attack = Callable[[HonestImage, Path], Served]


def _hostile_config_digest(image: HonestImage, digest: str, tail: str) -> Served:
    """The arm64 manifest names its config ``digest`` (the index names that manifest rightly,
    and the config is served at that name)."""
    image.arm64.manifest["config"]["digest"] = digest
    served = image.documents()
    served.add_blob(canonical(image.arm64.config), digest, tail=tail)
    return served


def config_digest_absolute(image: HonestImage, host: Path) -> Served:
    return _hostile_config_digest(image, f"sha256:{host}/etc/{PWNED}", f"{host}/etc/{PWNED}")


def config_digest_relative(image: HonestImage, host: Path) -> Served:
    # from the export folder (OUT/.image-creator-build-*/exports/*.tmp) up to tmp_path
    return _hostile_config_digest(
        image, f"sha256:../../../../{host.name}/etc/{PWNED}", f"{host.name}/etc/{PWNED}"
    )


def layer_digest_escapes(image: HonestImage, host: Path) -> Served:
    layer = image.arm64.manifest["layers"][0]
    honest_blob = layer["digest"]
    layer["digest"] = f"sha256:../../../../{host.name}/etc/{PWNED}"
    served = image.documents()
    served.add_blob(served.blobs[honest_blob], layer["digest"], tail=f"{host.name}/etc/{PWNED}")
    return served


def manifest_digest_escapes(image: HonestImage, host: Path) -> Served:
    hostile = f"sha256:../../../../{host.name}/etc/{PWNED}"
    served = image.documents()
    served.manifests[TAG] = canonical(image.index(arm64_digest=hostile))
    served.manifests[hostile] = image.arm64.manifest_bytes
    return served


def manifest_not_matching_the_index(image: HonestImage, host: Path) -> Served:
    """The index names the honest manifest; another (self-consistent) one is served."""
    served = image.documents()
    raw, blob = layer_blob(EVIL_FILES)
    config = canonical(config_for(ARM64, [raw]))
    served.add_blob(config)
    served.add_blob(blob)
    served.manifests[image.arm64.digest] = canonical(manifest_for(config, [blob]))
    return served


def _tamper_layer(image: HonestImage, served: Served) -> bytes:
    """Serve another layer under the honest layer's digest; returns the config matching it."""
    raw, blob = layer_blob(EVIL_FILES)
    served.blobs[image.arm64.manifest["layers"][0]["digest"]] = blob
    return canonical(config_for(ARM64, [raw]))


def tampered_layer_and_config(image: HonestImage, host: Path) -> Served:
    """Layer and config both replaced, the config's diff_ids matching the new layer."""
    served = image.documents()
    served.blobs[image.arm64.manifest["config"]["digest"]] = _tamper_layer(image, served)
    return served


def tampered_layer(image: HonestImage, host: Path) -> Served:
    served = image.documents()
    _tamper_layer(image, served)
    return served


def config_tampered_after_the_check(image: HonestImage, host: Path) -> Served:
    served = image.documents()
    served.later[image.arm64.manifest["config"]["digest"]] = _tamper_layer(image, served)
    return served


def manifest_swapped_after_the_check(image: HonestImage, host: Path) -> Served:
    """The manifest served under the digest the check verified turns hostile afterwards."""
    served = image.documents()
    honest_digest = image.arm64.digest
    hostile = _hostile_config_digest(image, f"sha256:{host}/etc/{PWNED}", f"{host}/etc/{PWNED}")
    served.blobs.update(hostile.blobs)
    served.tails.update(hostile.tails)
    served.later[honest_digest] = image.arm64.manifest_bytes
    return served


def truncated_gzip_layer(image: HonestImage, host: Path) -> Served:
    """A layer blob that is a gzip stream with its middle cut out (its trailer, so the size
    the check reads, kept), its digest and size in the manifest right."""
    raw, blob = layer_blob(EVIL_FILES)
    cut = blob[: len(blob) // 2] + blob[-8:]
    image.arm64.layers = [raw]
    image.arm64.config = config_for(ARM64, [raw])
    image.arm64.manifest = manifest_for(canonical(image.arm64.config), [cut])
    served = image.documents()
    served.add_blob(cut)
    return served


def _reshaped(change: Callable[[dict[str, Any]], object]) -> Attack:
    """The arm64 manifest changed by ``change`` (the index naming it rightly)."""

    def attack(image: HonestImage, host: Path) -> Served:
        change(image.arm64.manifest)
        return image.documents()

    return attack


def _reshaped_index(change: Callable[[dict[str, Any]], Any]) -> Attack:
    def attack(image: HonestImage, host: Path) -> Served:
        served = image.documents()
        index = image.index()
        served.manifests[TAG] = canonical(change(index))
        return served

    return attack


def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: Any = document
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return document


def _token_list(image: HonestImage, host: Path) -> Served:
    served = image.documents()
    served.token = b'["hostile"]'
    return served


def _manifest_bytes(bad: bytes) -> Attack:
    """``bad`` served as the arm64 manifest (the index naming it rightly)."""

    def attack(image: HonestImage, host: Path) -> Served:
        served = image.documents()
        served.manifests[TAG] = canonical(image.index(arm64_digest=sha256(bad)))
        served.manifests[sha256(bad)] = bad
        return served

    return attack


@dataclass(frozen=True)
class Case:
    attack: Attack
    expected: str  # in the error line
    seen_by_check: bool = True  # False: only a download reveals it

    def __str__(self) -> str:
        return getattr(self.attack, "__name__", "attack")


WRITES_ON_THE_HOST = {
    "config-digest-absolute": Case(config_digest_absolute, "is not sha256:<64 hex digits>"),
    "config-digest-relative": Case(config_digest_relative, "is not sha256:<64 hex digits>"),
    "layer-digest-escapes": Case(layer_digest_escapes, "is not sha256:<64 hex digits>"),
    "manifest-digest-escapes": Case(manifest_digest_escapes, "is not sha256:<64 hex digits>"),
}
LIES_ABOUT_CONTENT = {
    "manifest-not-matching-the-index": Case(
        manifest_not_matching_the_index, "does not match its digest"
    ),
    "tampered-layer-and-config": Case(tampered_layer_and_config, "does not match its digest"),
    "tampered-layer": Case(tampered_layer, "does not match its digest", seen_by_check=False),
    "config-tampered-after-the-check": Case(
        config_tampered_after_the_check, "does not match its digest", seen_by_check=False
    ),
    "truncated-gzip-layer": Case(truncated_gzip_layer, "export failed", seen_by_check=False),
    "manifest-swapped-after-the-check": Case(
        manifest_swapped_after_the_check, "does not match its digest", seen_by_check=False
    ),
}
MALFORMED = {
    "layer-size-null": Case(_reshaped(lambda m: _set(m, "layers.0.size", None)), "malformed"),
    "layer-size-text": Case(_reshaped(lambda m: _set(m, "layers.0.size", "123")), "malformed"),
    "config-a-string": Case(_reshaped(lambda m: _set(m, "config", "sha256:0")), "malformed"),
    "layers-strings": Case(_reshaped(lambda m: _set(m, "layers", ["sha256:0"])), "malformed"),
    "layers-an-object": Case(_reshaped(lambda m: _set(m, "layers", {"a": 1})), "malformed"),
    "layer-digest-a-list": Case(
        _reshaped(lambda m: _set(m, "layers.0.digest", [m["layers"][0]["digest"]])), "malformed"
    ),
    "media-type-a-list": Case(
        _reshaped(lambda m: _set(m, "layers.0.mediaType", ["gzip"])), "malformed"
    ),
    "no-layers": Case(_reshaped(lambda m: _set(m, "layers", [])), "has no layers"),
    "manifest-a-list": Case(_manifest_bytes(b'[{"layers": []}]'), "malformed"),
    "index-a-list": Case(_reshaped_index(lambda index: [index]), "malformed"),
    "index-entries-strings": Case(
        _reshaped_index(lambda index: _set(index, "manifests", ["sha256:0"])), "malformed"
    ),
    "index-platform-a-string": Case(
        _reshaped_index(lambda index: _set(index, "manifests.1.platform", "linux/arm64/v8")),
        "malformed",
    ),
    "index-digest-a-list": Case(
        _reshaped_index(lambda index: _set(index, "manifests.1.digest", ["sha256:0"])),
        "malformed",
    ),
    "manifest-not-json": Case(_manifest_bytes(b"{this is not json"), "not JSON"),
    "token-a-list": Case(_token_list, "token"),
}
CASES = {**WRITES_ON_THE_HOST, **LIES_ABOUT_CONTENT, **MALFORMED}


# fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools("openssl")
    folder = tmp_path_factory.mktemp("hostile-certs")
    make_certificates(folder)
    return folder


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> BaseImageLayout:
    require_tools("sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "debugfs")
    return make_base_image(tmp_path_factory.mktemp("base") / "base.img")


@pytest.fixture
def trusting(certs: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """requests (so docker-export and image-creator) trusts the test CA; loopback unproxied."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs / "ca.crt"))
    monkeypatch.setenv("NO_PROXY", LOOPBACK_NO_PROXY)
    monkeypatch.setenv("no_proxy", LOOPBACK_NO_PROXY)
    return certs


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    return Canary.plant(tmp_path / "host")


@dataclass(frozen=True)
class Run:
    code: int
    stderr: str
    registry: HostileRegistry
    output: Path | None  # None for --check


def run_main(
    served: Served,
    certs: Path,
    base: BaseImageLayout,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    check: bool,
) -> Run:
    """``main`` against a fresh hostile registry serving ``served``."""
    with running_hostile_registry(certs, served) as registry:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"base": str(base.path), "oci_images": [registry.ref]}))
        output = None if check else tmp_path / "out" / "hotspot.img"
        if output is not None:
            output.parent.mkdir(exist_ok=True)
        argv = ["--check", str(config)] if output is None else [str(config), str(output)]
        code = main(argv, reporter=NullReporter())
    return Run(code=code, stderr=capsys.readouterr().err, registry=registry, output=output)


def assert_harmless(run: Run, tmp_path: Path, canary: Canary) -> None:
    """Nothing written where the registry aimed, no request with a malformed digest, nothing
    left by the build."""
    canary.assert_unchanged()
    named = [path for path in tmp_path.rglob("*") if PWNED in path.name]
    assert not named, f"files named after a hostile digest: {named}"
    bad = [path for path in run.registry.requests if not ALLOWED_REQUEST.fullmatch(path)]
    assert not bad, f"requests made with a malformed digest: {bad}"
    if run.output is not None:
        assert_no_leaks(run.output)


def assert_refused(run: Run, case: Case) -> None:
    assert run.code == 4, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.stderr
    assert run.registry.ref in errors[0], run.stderr
    assert case.expected in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    if run.output is not None:
        assert not run.output.exists()


# tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_check_refuses_a_lying_registry(
    case: Case,
    trusting: Path,
    base_image: BaseImageLayout,
    canary: Canary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served = case.attack(honest_image(), canary.root)
    run = run_main(served, trusting, base_image, tmp_path, capsys, check=True)
    if case.seen_by_check:
        assert_refused(run, case)
    else:  # the check downloads no content: it cannot see this lie
        assert run.code == 0, run.stderr
    assert_harmless(run, tmp_path, canary)


@pytest.mark.root
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_build_refuses_a_lying_registry(
    case: Case,
    trusting: Path,
    base_image: BaseImageLayout,
    canary: Canary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_root()
    served = case.attack(honest_image(), canary.root)
    run = run_main(served, trusting, base_image, tmp_path, capsys, check=False)
    assert_refused(run, case)
    assert_harmless(run, tmp_path, canary)


@pytest.mark.root
def test_the_build_pulls_what_the_check_verified(
    trusting: Path,
    base_image: BaseImageLayout,
    canary: Canary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The tag moves to a hostile manifest after the check: the build still pulls the
    manifest the check verified, by its digest, and places that image."""
    require_root()
    image = honest_image()
    served = image.documents()
    hostile = config_digest_absolute(honest_image(), canary.root)
    served.later[TAG] = hostile.manifests.pop(TAG)
    served.manifests.update(hostile.manifests)
    served.blobs.update(hostile.blobs)
    served.tails.update(hostile.tails)
    run = run_main(served, trusting, base_image, tmp_path, capsys, check=False)
    assert run.code == 0, run.stderr
    assert run.output is not None
    placed = BuiltImage.open(run.output).dump_data(tmp_path / "dump") / "images"
    with tarfile.open(placed / export_filename(run.registry.ref)) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        config_name = json.load(handle)[0]["Config"]
    assert config_name == image.arm64.manifest["config"]["digest"].removeprefix("sha256:") + ".json"
    assert run.registry.requests.count(f"/v2/test/evil/manifests/{TAG}") == 1
    run.output.unlink()  # published, as it should: only leftovers are looked for
    assert_harmless(run, tmp_path, canary)

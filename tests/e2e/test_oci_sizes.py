"""get-oci-sizes against the local registry: the printed sizes are those of a separate export.

``filesize`` is checked against a tar exported on the side with docker-export itself, and
``fullsize`` against that tar's regular-file bytes, counted here both from the tar headers
and by extracting it to disk.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import docker_export
import pytest
import yaml
from docker_export import Image, Platform

from image_creator.config.document import parse_yaml
from image_creator.config.loader import parse_config
from image_creator.config.model import Pull
from image_creator.fetch.oci import export_filename
from image_creator.oci_sizes import ImageSizes, format_entry, human_size, main
from tests.support.oci_layout import retagged
from tests.support.registry import Registry

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "get-oci-sizes.py"
ARM64 = "linux/arm64/v8"

registry = pytest.mark.registry


@pytest.fixture(autouse=True)
def plain_download_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-export without progressbar2, which prints its progress with print().

    progressbar2 binds sys.stderr when it is first imported; under capsys that is one test's
    stream, closed when that test ends, and every later bar would write to it. The plain
    print() also shows that get-oci-sizes keeps docker-export's output off stdout.
    """
    monkeypatch.setattr(docker_export, "progressbar", None)


def export_separately(ref: str, target: Path, platform: str = ARM64) -> Path:
    """The same image, exported by docker-export directly (not through image_creator)."""
    with contextlib.redirect_stdout(sys.stderr):  # its progress: not in the captured snippet
        docker_export.export(
            image=Image.parse(ref),
            platform=Platform.parse(platform),
            to=target,
            build_dir=target.parent / "build",
        )
    return target


def regular_file_bytes(tar_path: Path) -> int:
    with tarfile.open(tar_path) as tar:
        return sum(member.size for member in tar.getmembers() if member.isfile())


def extracted_file_bytes(tar_path: Path, into: Path) -> int:
    """What the original get-oci-sizes.py measured: extract, then add up the files' sizes."""
    into.mkdir()
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return sum(path.stat().st_size for path in into.rglob("*") if path.is_file())


def entries(stdout: str) -> list[dict[str, Any]]:
    document = yaml.safe_load(stdout)
    assert isinstance(document, dict), stdout
    assert list(document) == ["oci_images"]
    items = document["oci_images"]
    assert isinstance(items, list)
    return items


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_format_entry_matches_the_spec_sample() -> None:
    pulled = ImageSizes(
        ident="ghcr.io/offspot/base-httpd:dev",
        filename="ghcr.io_offspot_base-httpd_dev_linuxarm64v8.tar",
        filesize=5980160,
        fullsize=5944584,
    )
    guessed = ImageSizes(
        ident="caddy-2.6.1-alpine_armv6",
        filename="caddy-2.6.1-alpine_armv6.tar",
        filesize=43847680,
        fullsize=43803832,
        ident_guessed=True,
    )
    assert format_entry(pulled) == (
        "  - ident: ghcr.io/offspot/base-httpd:dev\n"
        "    # url: PREFIX/ghcr.io_offspot_base-httpd_dev_linuxarm64v8.tar\n"
        "    filesize: 5980160  # 5.70MiB\n"
        "    fullsize: 5944584  # 5.67MiB\n"
    )
    assert format_entry(guessed) == (
        "  - ident: caddy-2.6.1-alpine_armv6  # !fixup\n"
        "    # url: PREFIX/caddy-2.6.1-alpine_armv6.tar\n"
        "    filesize: 43847680  # 41.82MiB\n"
        "    fullsize: 43803832  # 41.77MiB\n"
    )


def test_human_size_and_awkward_idents() -> None:
    assert [human_size(size) for size in (0, 1023, 1024, 10_752, 3 * 2**30, 5 * 2**50)] == [
        "0B",
        "1023B",
        "1.00KiB",
        "10.50KiB",
        "3.00GiB",
        "5.00PiB",
    ]
    # a file name YAML would misread is quoted, so that the ident still reads back as is
    odd = ImageSizes(ident="1.0 #x: y", filename="a.tar", filesize=1, fullsize=1)
    assert yaml.safe_load("oci_images:\n" + format_entry(odd))["oci_images"][0]["ident"] == (
        "1.0 #x: y"
    )


@registry
def test_pulled_image_sizes_match_a_separate_export(
    registry_env: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = registry_env.ref("test/hello:1.0")

    assert main([ref]) == 0
    captured = capsys.readouterr()

    separate = export_separately(ref, tmp_path / "separate" / "hello.tar")
    filesize = separate.stat().st_size
    fullsize = regular_file_bytes(separate)
    assert fullsize == extracted_file_bytes(separate, tmp_path / "extracted")
    assert entries(captured.out) == [{"ident": ref, "filesize": filesize, "fullsize": fullsize}]
    assert captured.out == (
        "oci_images:\n"
        f"  - ident: {ref}\n"
        f"    # url: PREFIX/{export_filename(ref)}\n"
        f"    filesize: {filesize}  # {human_size(filesize)}\n"
        f"    fullsize: {fullsize}  # {human_size(fullsize)}\n"
    )
    assert f"Downloading {ref} using docker-export" in captured.err
    assert error_lines(captured.err) == []


@registry
def test_snippet_pasted_in_a_config_loads_unchanged(
    registry_env: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = [registry_env.ref("test/hello:1.0"), registry_env.ref("test/hello:2.0")]

    assert main(refs) == 0
    snippet = capsys.readouterr().out

    assert snippet.count("oci_images:") == 1
    printed = entries(snippet)
    assert [entry["ident"] for entry in printed] == refs
    text = "base: 1.2.1\n" + snippet
    loaded = parse_config(parse_yaml(text, "config.yaml"), label="config.yaml", base_dir=tmp_path)
    assert [
        (image.ident, image.origin, image.filesize, image.fullsize)
        for image in loaded.config.oci_images
    ] == [(entry["ident"], Pull(), entry["filesize"], entry["fullsize"]) for entry in printed]
    assert loaded.warnings == ()


@registry
def test_local_tar_takes_its_ident_from_repo_tags(
    registry_env: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = registry_env.ref("test/hello:2.0")
    tar = export_separately(ref, tmp_path / "hello-2.tar")
    capsys.readouterr()

    assert main([str(tar)]) == 0
    captured = capsys.readouterr()

    assert entries(captured.out) == [
        {"ident": ref, "filesize": tar.stat().st_size, "fullsize": regular_file_bytes(tar)}
    ]
    assert "    # url: PREFIX/hello-2.tar\n" in captured.out
    assert "!fixup" not in captured.out
    assert "Downloading" not in captured.err
    assert captured.err == ""


@registry
def test_tar_without_repo_tags_is_marked_for_fixing(
    registry_env: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = export_separately(registry_env.ref("test/hello:1.0"), tmp_path / "tagged.tar")
    tar = retagged(exported, tmp_path / "hello-arm64_v8.tar", None)
    capsys.readouterr()

    assert main([str(tar)]) == 0
    captured = capsys.readouterr()

    assert "  - ident: hello-arm64_v8  # !fixup\n" in captured.out
    assert "    # url: PREFIX/hello-arm64_v8.tar\n" in captured.out
    assert entries(captured.out) == [
        {
            "ident": "hello-arm64_v8",
            "filesize": tar.stat().st_size,
            "fullsize": regular_file_bytes(tar),
        }
    ]


@registry
def test_tar_of_another_architecture_is_measured_with_a_warning(
    registry_env: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = registry_env.ref("test/hello:1.0")
    tar = export_separately(ref, tmp_path / "hello-amd64.tar", platform="linux/amd64")
    capsys.readouterr()

    assert main([str(tar)]) == 0
    captured = capsys.readouterr()

    assert [entry["ident"] for entry in entries(captured.out)] == [ref]
    assert captured.err.splitlines() == [
        f"warning: {tar}: the image is for amd64 architecture, not {ARM64}"
    ]


@registry
def test_each_failure_is_one_error_line_and_the_rest_is_printed(
    registry_env: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = registry_env.ref("test/nothere:1.0")
    good = registry_env.ref("test/hello:1.0")
    amd64_only = registry_env.ref("test/amd64only:1.0")
    missing = str(tmp_path / "missing.tar")
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar at all\n" * 64)

    code = main([unknown, good, amd64_only, missing, str(broken)])
    captured = capsys.readouterr()

    assert code != 0
    assert [entry["ident"] for entry in entries(captured.out)] == [good]
    errors = error_lines(captured.err)
    assert len(errors) == 4, captured.err
    for line, argument in zip(errors, (unknown, amd64_only, missing, str(broken)), strict=True):
        assert line.startswith(f"error: {argument}: "), line
    assert "linux/amd64" in errors[1]  # the platforms it does have
    assert ARM64 in errors[1]
    assert "no such file" in errors[2]
    assert "not a readable image tar" in errors[3]


@registry
def test_root_script_runs_on_its_own(registry_env: Registry, tmp_path: Path) -> None:
    ref = registry_env.ref("test/hello:1.0")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    assert env["REQUESTS_CA_BUNDLE"] == str(registry_env.ca)

    result = subprocess.run(
        ["./get-oci-sizes.py", ref], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    [entry] = entries(result.stdout)
    assert entry["ident"] == ref
    assert entry["filesize"] > entry["fullsize"] > 0


@registry
def test_root_script_uses_src_when_the_package_is_not_installed(
    registry_env: Registry, tmp_path: Path
) -> None:
    """``python -S`` skips the editable install's .pth: only the dependencies are importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(docker_export.__file__).resolve().parent.parent)
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import importlib.util as u; print(u.find_spec('image_creator'))",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "None"
    ref = registry_env.ref("test/hello:2.0")

    result = subprocess.run(
        [sys.executable, "-S", str(SCRIPT), ref],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert [entry["ident"] for entry in entries(result.stdout)] == [ref]

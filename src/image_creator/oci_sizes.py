"""get-oci-sizes: print the ``oci_images`` entries of a config, with their sizes.

Each argument is either an image reference, pulled for linux/arm64/v8 with docker-export into
a temporary directory (removed afterwards), or the path of a docker-load tar exported earlier.
Either way the tar is verified (every layer against the image config's diff_ids) and
measured; a YAML snippet ready to paste under ``oci_images:`` goes to stdout, progress and
errors go to stderr. A failing argument is reported as one ``error: ARG: ...`` line and the
others are still processed; the exit code is then non-zero.

The two sizes, in bytes:

``filesize``
    The size of the docker-load tar (what is downloaded from ``url`` and copied).
``fullsize``
    The sum of the sizes of the regular files in that tar: the layer tars, the image config,
    each layer's ``VERSION`` and ``json``, ``manifest.json`` and ``repositories``. That is the
    bytes of file content it occupies once unpacked; directories, links, tar headers and
    padding, and filesystem block rounding are not counted. It is
    :func:`image_creator.fetch.oci.verify_export`'s ``extracted_size``, and what the original
    get-oci-sizes.py measured by extracting the tar and adding up its files' sizes.

When a tar's manifest has no RepoTags, the ident is guessed from the file name and marked
``# !fixup``: replace it with the image's reference before using the entry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from image_creator.config.model import OCI_PLATFORM
from image_creator.errors import ExitCode, SourceError
from image_creator.fetch.client import HttpClient
from image_creator.fetch.oci import export_filename, export_image, parse_ident, verify_export

_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")
_EXPORTED_ARCHITECTURE = "arm64"


@dataclass(frozen=True)
class ImageSizes:
    """One ``oci_images`` entry: what to write and where the numbers come from."""

    ident: str
    filename: str  # the tar's file name, for the ``url`` hint
    filesize: int
    fullsize: int
    ident_guessed: bool = False  # no RepoTags: the ident is the file name, to be fixed


def human_size(size: int) -> str:
    """``5980160`` -> ``5.70MiB``: binary units, two decimals, as in the spec's sample."""
    if size < 1024:
        return f"{size}B"
    value = size / 1024
    index = 0
    while value >= 1024 and index < len(_BINARY_UNITS) - 1:
        value /= 1024
        index += 1
    return f"{value:.2f}{_BINARY_UNITS[index]}"


def _yaml_scalar(text: str) -> str:
    """``text`` as is when YAML reads it back unchanged, double-quoted otherwise."""
    with contextlib.suppress(yaml.YAMLError):
        if yaml.safe_load(f"key: {text}") == {"key": text}:
            return text
    return json.dumps(text)


def format_entry(sizes: ImageSizes) -> str:
    """The lines of one list item under ``oci_images:`` (with a final newline)."""
    fixup = "  # !fixup" if sizes.ident_guessed else ""
    return (
        f"  - ident: {_yaml_scalar(sizes.ident)}{fixup}\n"
        f"    # url: PREFIX/{sizes.filename}\n"
        f"    filesize: {sizes.filesize}  # {human_size(sizes.filesize)}\n"
        f"    fullsize: {sizes.fullsize}  # {human_size(sizes.fullsize)}\n"
    )


def sizes_of_tar(path: Path, *, label: str) -> ImageSizes:
    """Verify and measure a docker-load tar; the ident comes from its RepoTags if any."""
    exported = verify_export(path, label=label)
    if exported.architecture != _EXPORTED_ARCHITECTURE:
        print(
            f"warning: {label}: the image is for {exported.architecture or 'an unknown'} "
            f"architecture, not {OCI_PLATFORM}",
            file=sys.stderr,
        )
    if exported.repo_tags:
        return ImageSizes(
            ident=exported.repo_tags[0],
            filename=path.name,
            filesize=exported.size,
            fullsize=exported.extracted_size,
        )
    return ImageSizes(
        ident=path.stem,
        filename=path.name,
        filesize=exported.size,
        fullsize=exported.extracted_size,
        ident_guessed=True,
    )


def sizes_of_image(ident: str, *, workdir: Path, client: HttpClient) -> ImageSizes:
    """Pull ``ident`` for linux/arm64/v8 into ``workdir``, measure it, remove the tar."""
    try:
        filename = export_filename(ident)
    except ValueError as exc:
        raise SourceError(f"{ident}: not an image reference ({exc})") from exc
    target = workdir / filename
    print(f"Downloading {ident} using docker-export", file=sys.stderr)
    try:
        exported = export_image(ident, target, client=client, build_dir=workdir / "build")
    finally:
        target.unlink(missing_ok=True)  # images can be large: keep one at a time
    return ImageSizes(
        ident=ident, filename=filename, filesize=exported.size, fullsize=exported.extracted_size
    )


def measure(argument: str, *, workdir: Path, client: HttpClient) -> ImageSizes:
    """An existing path is a tar to measure; anything else is an image reference to pull."""
    path = Path(argument)
    if path.exists():
        return sizes_of_tar(path, label=argument)
    if argument.endswith(".tar"):
        raise SourceError(f"{argument}: no such file")
    try:
        parse_ident(argument)
    except ValueError as exc:
        raise SourceError(f"{argument}: not an image reference ({exc})") from exc
    return sizes_of_image(argument, workdir=workdir, client=client)


def _error_line(argument: str, exc: SourceError) -> str:
    """One line, starting with the argument (messages from fetch.oci usually already do)."""
    message = "; ".join(" ".join(line.split()) for line in exc.lines())
    if not message.startswith(f"{argument}: "):
        message = f"{argument}: {message}"
    return f"error: {message}"


@contextlib.contextmanager
def _docker_export_logs(verbose: bool) -> Iterator[None]:
    """docker-export logs every step at INFO; only show that with --verbose."""
    docker_export_logger = logging.getLogger("docker-export")
    previous = docker_export_logger.level
    docker_export_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        docker_export_logger.setLevel(previous)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="get-oci-sizes",
        description=(
            f"Print the oci_images entries (filesize, fullsize) of {OCI_PLATFORM} images "
            "for an image-creator config."
        ),
        epilog=(
            "Images are pulled into a temporary directory (honours TMPDIR) and removed. "
            "exit codes: 0 all measured, 4 some argument failed, 130 interrupted."
        ),
    )
    parser.add_argument(
        "images",
        metavar="IMAGE_OR_TAR",
        nargs="+",
        help="an image reference (ghcr.io/offspot/base-httpd:dev) or an exported .tar",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show docker-export's progress messages"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    failed = False
    header_printed = False
    try:
        with (
            _docker_export_logs(args.verbose),
            tempfile.TemporaryDirectory(prefix="get-oci-sizes-") as workdir,
            HttpClient() as client,
        ):
            for argument in args.images:
                try:
                    sizes = measure(argument, workdir=Path(workdir), client=client)
                except SourceError as exc:
                    failed = True
                    print(_error_line(argument, exc), file=sys.stderr, flush=True)
                    continue
                if not header_printed:
                    sys.stdout.write("oci_images:\n")
                    header_printed = True
                sys.stdout.write(format_entry(sizes))
                sys.stdout.flush()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    return int(ExitCode.INVALID_SOURCES) if failed else int(ExitCode.OK)

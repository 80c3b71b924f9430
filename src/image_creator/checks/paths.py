"""The paths a run writes to: OUTPUT and --report.

OUTPUT must be a regular file or absent: with -X a device node, a FIFO or a link there would
otherwise be replaced by the image (``image-creator -X config.yaml /dev/sdb``). The report
may not overwrite what the run reads or makes (OUTPUT, the config) and must be writable
where it is asked for, before anything is built rather than after.
"""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from image_creator.config.model import Config
from image_creator.errors import OutputError
from image_creator.localfile import describe_mode
from image_creator.options import Options

BUILD_FOLDER_PREFIX = ".image-creator-build-"


def _kind(path: Path) -> str | None:
    """What is at ``path`` (not following a link): "file", a phrase, or None when nothing is."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    return "file" if stat.S_ISREG(mode) else describe_mode(mode)


def check_output_path(options: Options, config: Config) -> None:
    output = options.output
    if output is None:
        return
    kind = _kind(output)
    if kind is not None and kind != "file":
        raise OutputError(f"{output}: OUTPUT is {kind}; give the path of an image file")
    if not output.absolute().parent.is_dir():
        raise OutputError(f"{output}: the folder {output.absolute().parent} does not exist")
    base_url = urlsplit(config.base.url)
    if base_url.scheme == "file":
        base_path = Path(url2pathname(base_url.path))
        if output.resolve() == base_path.resolve():
            raise OutputError(f"{output}: OUTPUT is the base image itself")
    if kind is not None and not options.overwrite:
        raise OutputError(
            f"{output}: already exists",
            hint="pass -X/--overwrite to replace it once the build succeeds",
        )


def check_report_path(options: Options) -> None:
    """Refuse a --report that would overwrite an input or the image, or cannot be written."""
    report = options.report
    if report is None:
        return
    kind = _kind(report)
    if kind is not None and kind != "file":
        raise OutputError(f"--report {report}: is {kind}; give the path of a file")
    folder = report.absolute().parent
    if not folder.is_dir():
        raise OutputError(f"--report {report}: the folder {folder} does not exist")
    if any(part.startswith(BUILD_FOLDER_PREFIX) for part in report.absolute().parts):
        raise OutputError(f"--report {report}: inside a build folder, which is removed")
    resolved = report.resolve()
    if options.output is not None and resolved == options.output.resolve():
        raise OutputError(f"--report {report}: is OUTPUT; the report would replace the image")
    local_config = urlsplit(options.config_src).scheme.lower() not in ("http", "https")
    if local_config and resolved == Path(options.config_src).expanduser().resolve():
        raise OutputError(f"--report {report}: is the config file")

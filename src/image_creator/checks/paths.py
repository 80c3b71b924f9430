"""The paths a run writes to: OUTPUT, the build folder and --report.

OUTPUT must be a regular file or absent: with -X a device node, a FIFO or a link there would
otherwise be replaced by the image (``image-creator -X config.yaml /dev/sdb``). Its name
must fit its filesystem (255 bytes), and its folder, like the build folder, be writable (a
read-only mount, an immutable folder). The report may not overwrite what the run reads or
makes (OUTPUT, the config) and must be writable where it is asked for, before anything is
built rather than after.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from image_creator.config.model import Config
from image_creator.errors import OutputError
from image_creator.localfile import describe_mode
from image_creator.options import Mode, Options
from image_creator.units import NAME_MAX
from image_creator.workspace import BUILD_FOLDER_PREFIX


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
    name_max = _name_max(output.absolute().parent)
    if len(os.fsencode(output.name)) > name_max:
        raise OutputError(
            f"{output}: OUTPUT's name is {len(os.fsencode(output.name))} bytes long, "
            f"more than the {name_max} a file name may have"
        )
    try:
        kind = _kind(output)
    except OSError as exc:
        raise OutputError(f"{output}: OUTPUT cannot be used: {exc.strerror}") from exc
    if kind is not None and kind != "file":
        raise OutputError(f"{output}: OUTPUT is {kind}; give the path of an image file")
    folder = output.absolute().parent
    if not folder.is_dir():
        raise OutputError(f"{output}: the folder {folder} does not exist")
    # --check may run as another user than the build: only a read-only mount is certain
    permissions = options.mode is Mode.BUILD or os.geteuid() == 0
    _ensure_writable(folder, "the folder of OUTPUT", permissions=permissions)
    build_dir = options.build_dir.absolute() if options.build_dir is not None else folder
    _ensure_writable(_existing(build_dir), "the build folder", permissions=permissions)
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


def _name_max(folder: Path) -> int:
    try:
        return min(NAME_MAX, os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _ensure_writable(folder: Path, what: str, *, permissions: bool) -> None:
    """``folder`` can take new files: not on a read-only mount, and (``permissions``) not
    immutable and writable by this user (access(2) tells both, for root too)."""
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        reason = os.strerror(errno.EROFS)
    elif permissions and not os.access(folder, os.W_OK | os.X_OK):
        reason = "not writable"
    else:
        return
    raise OutputError(f"{folder}: {what} is not writable ({reason})")


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

"""The one subprocess helper: argv lists, LANG=C, no stdin, stderr always kept."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from image_creator.errors import CommandError, HostError

logger = logging.getLogger(__name__)

# binary -> Debian package that ships it (the hint given when it is missing)
DEBIAN_PACKAGES: Mapping[str, str] = {
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
    "partx": "util-linux",
    "sfdisk": "fdisk",
    "parted": "parted",
    "e2fsck": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "mke2fs": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "tune2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mmd": "mtools",
    "mtype": "mtools",
    "mkfs.vfat": "dosfstools",
    "xz": "xz-utils",
    "sync": "coreutils",
}


def which(binary: str) -> str | None:
    """Like shutil.which, but also looks in the sbin directories a non-root PATH may lack."""
    found = shutil.which(binary)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_tools(binaries: Iterable[str]) -> list[str]:
    """The binaries not found, each with the Debian package to install."""
    return [
        f"{binary} (apt-get install {DEBIAN_PACKAGES.get(binary, binary)})"
        for binary in binaries
        if which(binary) is None
    ]


def _prepare(
    argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None
) -> tuple[list[str], dict[str, str]]:
    args = [str(arg) for arg in argv]
    binary = which(args[0])
    if binary is None:
        package = DEBIAN_PACKAGES.get(args[0], args[0])
        raise HostError(f"missing tool: {args[0]}", hint=f"apt-get install {package}")
    logger.debug("run: %s", " ".join(args))
    return [binary, *args[1:]], {**os.environ, "LANG": "C", "LC_ALL": "C", **(env or {})}


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    ok_codes: Iterable[int] = (0,),
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command and return its result; raise CommandError on an exit code not in ok_codes.

    Tools with several success codes say so: ``run(["e2fsck", ...], ok_codes=(0, 1, 2))``.
    """
    command, full_env = _prepare(argv, env)
    result = subprocess.run(
        command,
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
        # Out of the terminal's process group: Ctrl-C reaches us alone, and we decide. A
        # running command is killed when we stop, but an unmount during clean-up is not.
        start_new_session=True,
    )
    args = [str(arg) for arg in argv]
    if result.returncode not in set(ok_codes):
        raise CommandError(args, result.returncode, result.stderr, result.stdout)
    if result.stderr.strip():
        logger.debug("stderr of %s: %s", args[0], result.stderr.strip())
    return result


@contextmanager
def piped(
    argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A command as a filter: write to its stdin, read its stdout, in binary.

    Its stderr goes to a temporary file, kept for the error. On leaving the block the command
    must have exited 0 (CommandError otherwise); on an error or Ctrl-C it is killed.
    """
    command, full_env = _prepare(argv, env)
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=full_env,
            start_new_session=True,
        )
        try:
            yield process
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            for stream in (process.stdin, process.stdout):
                if stream is not None and not stream.closed:
                    stream.close()
        returncode = process.wait()
        if returncode != 0:
            errors.seek(0)
            stderr = errors.read().decode("utf-8", errors="replace")
            raise CommandError([str(arg) for arg in argv], returncode, stderr)

"""What a build needs from the host: which backend, and what that backend needs.

The mounted backend needs root, loop devices, ext4 and the tools; the rootless one needs
only libext2fs and e2fsprogs, sfdisk and mtools (no losetup, no mount).
"""

from __future__ import annotations

import os
from pathlib import Path

from image_creator.checks.settle import settle
from image_creator.context import Context
from image_creator.errors import HostError
from image_creator.options import Mode, Options
from image_creator.sink import Backend
from image_creator.system.ext2fs import EXT2_LIBRARY, load_libraries
from image_creator.system.run import missing_tools

LOOP_CONTROL = Path("/dev/loop-control")
ROOTLESS_TOOLS = ("sfdisk", "e2fsck", "resize2fs", "tune2fs", "dumpe2fs", "mcopy")
BUILD_TOOLS = (
    "losetup",
    "sfdisk",
    "e2fsck",
    "resize2fs",
    "tune2fs",
    "dumpe2fs",
    "mount",
    "umount",
    "mcopy",
)


def check_host(ctx: Context) -> tuple[Backend, str]:
    """The backend a build uses (told, with why), and what this host lacks for it."""
    backend, reason = choose_backend(ctx.options)
    if ctx.options.mode is not Mode.BUILD:
        ctx.reporter.info(f"a build would use the {backend} backend: {reason}")
    elif backend is Backend.ROOTLESS and not ctx.options.rootless:
        ctx.reporter.info(f"building rootless (no loop device, no mount): {reason}")
    settle(
        ctx,
        host_problems(backend),
        prefix="this host cannot build images: ",
        hint="install the listed tools"
        if backend is Backend.ROOTLESS
        else "run as root on a Linux host with loop devices and the listed tools",
    )
    return backend, reason


def choose_backend(options: Options) -> tuple[Backend, str]:
    """The backend a build uses, and why: rootless when asked, when not root, or when the
    loop devices cannot be used; mounted otherwise."""
    if options.rootless:
        return Backend.ROOTLESS, "asked with --rootless"
    if os.geteuid() != 0:
        return Backend.ROOTLESS, "not running as root"
    try:
        os.close(os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return Backend.ROOTLESS, f"no usable loop devices ({LOOP_CONTROL}: {exc.strerror})"
    return Backend.MOUNTED, "running as root with loop devices"


def host_problems(backend: Backend = Backend.MOUNTED) -> list[str]:
    """Everything this host lacks for a build with ``backend``, each with how to fix it."""
    if backend is Backend.ROOTLESS:
        return _rootless_problems()
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("not running as root (a build attaches loop devices and mounts them)")
    if not Path("/dev/loop-control").exists():
        problems.append("no loop device support (/dev/loop-control missing: modprobe loop)")
    if not _supports_ext4():
        problems.append("the kernel does not support ext4 (modprobe ext4)")
    problems.extend(f"missing tool: {tool}" for tool in missing_tools(BUILD_TOOLS))
    return problems


def _supports_ext4() -> bool:
    try:
        filesystems = Path("/proc/filesystems").read_text(encoding="ascii")
    except OSError:
        return False
    if any(line.split()[-1:] == ["ext4"] for line in filesystems.splitlines()):
        return True
    # Not loaded yet, but loadable as a module on first mount.
    release = os.uname().release
    return any(Path(f"/lib/modules/{release}").glob("kernel/fs/ext4/ext4.ko*"))


def _rootless_problems() -> list[str]:
    problems: list[str] = []
    try:
        load_libraries()
    except HostError as exc:
        problems.append(f"{EXT2_LIBRARY} cannot be loaded ({exc}): install libext2fs2")
    problems.extend(f"missing tool: {tool}" for tool in missing_tools(ROOTLESS_TOOLS))
    return problems

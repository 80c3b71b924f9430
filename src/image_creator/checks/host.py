"""What a build needs from the host: root, loop devices, ext4, tools."""

from __future__ import annotations

import os
from pathlib import Path

from image_creator.system.run import missing_tools

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


def host_problems() -> list[str]:
    """Everything this host lacks for a build, each with how to fix it."""
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

"""What a failed or interrupted build may leave behind, found, reported and cleaned up.

A build writes ``OUTPUT`` through a partial image next to it (``.NAME.*.partial``), a build
folder next to it (``.image-creator-build-*``), a loop device over the partial image and a
mount of that device inside the build folder. After a failure none of these may remain:

    leftovers = find_leftovers(output)      # look, change nothing
    assert_no_leaks(output)                 # look, clean up what is there, then fail if any
    assert_no_leaks(output, kept=partial)   # -K: that partial image may stay (detached)
    clean_leftovers(output)                 # teardown: clean up without judging

Loop devices are found both ways: ``losetup -j`` of every file in the folder and every device
in ``losetup -l`` whose backing file is (or was, before it was deleted) in the folder. Mounts
are read from /proc/self/mountinfo: anything at or below the folder, and any build folder
elsewhere (a ``--build-dir`` in /tmp).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from image_creator.system.run import run

BUILD_DIR_PREFIX = ".image-creator-build-"
_DELETED_SUFFIX = " (deleted)"
_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class LoopDevice:
    name: str  # /dev/loopN
    backing_file: str  # as the kernel reports it, " (deleted)" removed
    deleted: bool

    def __str__(self) -> str:
        return f"{self.name} -> {self.backing_file}{_DELETED_SUFFIX if self.deleted else ''}"


@dataclass(frozen=True)
class Leftovers:
    """Everything found for one OUTPUT path; empty (falsy) when the build left nothing."""

    folder: Path
    output: Path | None  # OUTPUT itself, when it exists
    partials: tuple[Path, ...]
    build_dirs: tuple[Path, ...]
    loop_devices: tuple[LoopDevice, ...]
    mounts: tuple[str, ...]  # mount points, deepest first

    def __bool__(self) -> bool:
        return bool(
            self.output or self.partials or self.build_dirs or self.loop_devices or self.mounts
        )

    def describe(self) -> str:
        lines = [f"left behind for {self.folder}:"]
        if self.output is not None:
            lines.append(f"  OUTPUT exists: {self.output}")
        lines += [f"  partial image: {path}" for path in self.partials]
        lines += [f"  build folder: {path}" for path in self.build_dirs]
        lines += [f"  loop device: {device}" for device in self.loop_devices]
        lines += [f"  mount: {point}" for point in self.mounts]
        return "\n".join(lines)


def find_leftovers(
    output: Path, *, kept: Path | None = None, build_dir: Path | None = None
) -> Leftovers:
    """What remains of a build of ``output``; ``kept`` (a -K partial image) is allowed to
    exist, but not to be attached or mounted. ``build_dir``: the --build-dir given, if any."""
    output = output.absolute()
    folder = output.parent
    kept = kept.absolute() if kept is not None else None
    partials = tuple(
        path for path in sorted(folder.glob(f".{output.name}.*.partial")) if path != kept
    )
    parents = [folder] if build_dir is None else [folder, build_dir.absolute()]
    build_dirs = tuple(
        sorted({path for parent in parents for path in parent.glob(f"{BUILD_DIR_PREFIX}*")})
    )
    return Leftovers(
        folder=folder,
        output=output if output.exists() or output.is_symlink() else None,
        partials=partials,
        build_dirs=build_dirs,
        loop_devices=tuple(loop_devices_in(folder)),
        mounts=tuple(mounts_in(*parents)),
    )


def assert_no_leaks(
    output: Path, *, kept: Path | None = None, build_dir: Path | None = None
) -> None:
    """Fail if the build of ``output`` left anything behind; clean it up first, so that one
    failing test does not leave a mounted image or a loop device to the next."""
    leftovers = find_leftovers(output, kept=kept, build_dir=build_dir)
    if leftovers:
        clean_leftovers(output, kept=kept, build_dir=build_dir)
    assert not leftovers, leftovers.describe()


def clean_leftovers(
    output: Path, *, kept: Path | None = None, build_dir: Path | None = None
) -> Leftovers:
    """Unmount, detach and delete whatever a build of ``output`` left (except ``kept``, which
    is only detached and unmounted); returns what was found. Safe to call when nothing is."""
    leftovers = find_leftovers(output, kept=kept, build_dir=build_dir)
    for point in leftovers.mounts:
        _unmount(point)
    for device in leftovers.loop_devices:
        run(["losetup", "--detach", device.name], ok_codes=(0, 1))
    # never delete a folder something is still mounted in: rmtree would empty that filesystem
    still_mounted = set(mounts_in(*{directory.parent for directory in leftovers.build_dirs}))
    for directory in leftovers.build_dirs:
        if not any(Path(point).is_relative_to(directory) for point in still_mounted):
            shutil.rmtree(directory, ignore_errors=True)
    for path in leftovers.partials:
        path.unlink(missing_ok=True)
    if leftovers.output is not None:
        leftovers.output.unlink(missing_ok=True)
    return leftovers


def loop_devices_in(folder: Path) -> list[LoopDevice]:
    """Loop devices backed by a file in ``folder`` (or below it), deleted files included."""
    folder = folder.absolute()
    found: dict[str, LoopDevice] = {}
    listing = json.loads(run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"]).stdout)
    for entry in listing.get("loopdevices", []):
        device = _loop_device(entry)
        if device is not None and _is_below(Path(device.backing_file), folder):
            found[device.name] = device
    # and the way a user would ask: `losetup -j` for every file in the folder
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if path.is_file() and not path.is_symlink():
            for name in associated_loop_devices(path):
                found.setdefault(name, LoopDevice(name, str(path), deleted=False))
    return sorted(found.values(), key=lambda device: device.name)


def associated_loop_devices(path: Path) -> list[str]:
    """``losetup -j PATH``: the devices backed by that file."""
    result = run(["losetup", "--list", "--noheadings", "--output", "NAME", "--associated", path])
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _loop_device(entry: dict[str, object]) -> LoopDevice | None:
    name, backing = entry.get("name"), entry.get("back-file")
    if not isinstance(name, str) or not isinstance(backing, str) or not backing:
        return None
    deleted = backing.endswith(_DELETED_SUFFIX)
    return LoopDevice(name, backing.removesuffix(_DELETED_SUFFIX), deleted=deleted)


def mounts_in(*folders: Path) -> list[str]:
    """Mount points at or below any of ``folders``, and below a build folder in the temp
    folder (``/tmp/.image-creator-build-*``, where --build-dir /tmp puts it), deepest first.

    Build folders elsewhere are left out: they may belong to another build running now.
    """
    temp_builds = _temp_build_dirs()
    found = {
        point
        for point in mount_points()
        if any(Path(point).is_relative_to(build) for build in temp_builds)
        or any(_is_below(Path(point), folder.absolute()) for folder in folders)
    }
    return sorted(found, key=lambda point: (-len(Path(point).parts), point))


def _temp_build_dirs() -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).resolve().glob(f"{BUILD_DIR_PREFIX}*"))


def mount_points() -> list[str]:
    points: list[str] = []
    with Path("/proc/self/mountinfo").open(encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split(" ")
            if len(fields) > 4:
                points.append(
                    _MOUNTINFO_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), fields[4])
                )
    return points


def _is_below(path: Path, folder: Path) -> bool:
    resolved_folder = folder.resolve()
    return any(
        candidate == base or candidate.is_relative_to(base)
        for candidate in (path, path.resolve() if path.exists() else path)
        for base in (folder, resolved_folder)
    )


def _unmount(point: str) -> None:
    result = run(["umount", point], ok_codes=range(256))
    if result.returncode != 0:
        run(["umount", "--lazy", point], ok_codes=range(256))

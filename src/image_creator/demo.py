"""A small Offspot-like base image and a demo config, built without root.

Tests build their base images with :func:`make_base_image`; ``python -m image_creator.demo
OUTDIR`` writes a base image, a few local content files and a ``demo.yaml`` that uses only
local sources, so a full build can be tried offline.

The image mirrors the real base image's layout: an MBR disk with partition 1 FAT32 (boot),
partition 2 ext4 (root) and partition 3 ext4 (data), every partition aligned on 1 MiB.
The FAT is written with mtools and the ext4 filesystems with ``mke2fs -d``, both at an offset
inside the image file, since neither needs a loop device nor a kernel filesystem driver.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import logging
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from image_creator.errors import ImageCreatorError
from image_creator.system.partitions import Partition, read_partition_table
from image_creator.system.run import run
from image_creator.units import SECTOR_SIZE

logger = logging.getLogger(__name__)

MIB = 2**20
# 1 MiB, the alignment of every partition (as on the real base image)
ALIGNMENT_SECTORS = MIB // SECTOR_SIZE
# The MBR disk identifier; fixed so that PARTUUIDs (cmdline.txt) are known in advance.
DISK_ID = 0x6F66660A
# FAT32 needs at least 65525 clusters: with 512-byte clusters and two FATs that is just
# over 33 MiB. mtools refuses a smaller "FAT32" (mkfs.vfat only warns).
MIN_BOOT_MIB = 34
# Fixed FAT volume id, for reproducible boot partitions.
BOOT_VOLUME_ID = "0fa55e70"
EXT4_BLOCK_SIZE = 4096

# How offspot/base-image formats the data partition (export-image/prerun.sh:
# `mkfs.ext4 -T largefile -m 1 -L data`): one inode per MiB, which growing keeps, and 1% of
# the blocks reserved for root.
OFFICIAL_DATA_MKFS: tuple[str, ...] = ("-T", "largefile", "-m", "1")

DEFAULT_BOOT_FILES: Mapping[str, bytes] = {
    "config.txt": (
        b"# offspot demo base image\n[all]\narm_64bit=1\ndtparam=audio=on\ndisable_overscan=1\n"
    ),
    "cmdline.txt": (
        f"console=serial0,115200 console=tty1 root=PARTUUID={DISK_ID:08x}-02 "
        "rootfstype=ext4 fsck.repair=yes rootwait\n"
    ).encode(),
}
DEFAULT_ROOT_FILES: Mapping[str, bytes] = {
    "etc/hostname": b"offspot\n",
    "etc/os-release": b'PRETTY_NAME="Offspot demo base"\nID=offspot-demo\n',
}
DEFAULT_DATA_FILES: Mapping[str, bytes] = {
    "contents/readme.txt": b"This file was on the base image's data partition.\n",
}


@dataclass(frozen=True)
class BaseImageLayout:
    """What :func:`make_base_image` wrote, as read back from the partition table."""

    path: Path
    size: int
    disk_id: str  # as sfdisk prints it: "0x6f66660a"
    boot: Partition
    root: Partition
    data: Partition
    xz_path: Path | None = None

    @property
    def partitions(self) -> tuple[Partition, Partition, Partition]:
        return (self.boot, self.root, self.data)


def _relative_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or ".." in path.parts:
        raise ValueError(f"file name must be a relative path inside the partition: {name!r}")
    return path


def _stage(folder: Path, files: Mapping[str, bytes]) -> Path:
    """Write files into a new folder (the tree to copy onto a partition)."""
    folder.mkdir()
    for name, content in files.items():
        target = folder.joinpath(*_relative_path(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return folder


def _partition_table(boot_mib: int, root_mib: int, data_mib: int) -> str:
    sizes = [boot_mib, root_mib, data_mib]
    types = ["c", "83", "83"]
    lines = ["label: dos", f"label-id: 0x{DISK_ID:08x}", "unit: sectors", ""]
    start = ALIGNMENT_SECTORS
    for index, (size_mib, type_id) in enumerate(zip(sizes, types, strict=True)):
        sectors = size_mib * MIB // SECTOR_SIZE
        line = f"start={start}, size={sectors}, type={type_id}"
        if index == 0:
            line += ", bootable"
        lines.append(line)
        start += sectors
    return "\n".join(lines) + "\n"


def read_layout(path: Path) -> BaseImageLayout:
    """Read an image's partition table back (with sfdisk, as a build reads it)."""
    table = read_partition_table(path)
    partitions = list(table.partitions)
    if len(partitions) != 3:
        raise ValueError(f"{path}: expected 3 partitions, found {len(partitions)}")
    boot, root, data = partitions
    return BaseImageLayout(
        path=path,
        size=path.stat().st_size,
        disk_id=table.disk_id,
        boot=boot,
        root=root,
        data=data,
    )


def _make_boot_filesystem(image: Path, partition: Partition, tree: Path) -> None:
    run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-n",
            "BOOT",
            "-i",
            BOOT_VOLUME_ID,
            f"--offset={partition.start_bytes // SECTOR_SIZE}",
            image,
            str(partition.size_bytes // 1024),
        ]
    )
    entries = sorted(tree.iterdir())
    if entries:
        # -s: recurse into folders; -Q: stop at the first error instead of going on
        run(["mcopy", "-s", "-Q", "-i", f"{image}@@{partition.start_bytes}", *entries, "::/"])


def _make_ext4_filesystem(
    image: Path,
    partition: Partition,
    tree: Path,
    label: str,
    *,
    options: Sequence[str] = (),
) -> None:
    # nodiscard: mke2fs would otherwise punch holes, which is pointless on a fresh sparse file
    run(
        [
            "mke2fs",
            "-q",
            "-t",
            "ext4",
            "-F",
            "-b",
            str(EXT4_BLOCK_SIZE),
            *options,
            "-L",
            label,
            "-E",
            f"offset={partition.start_bytes},nodiscard,root_owner=0:0",
            "-d",
            tree,
            image,
            f"{partition.size_bytes // 1024}k",
        ]
    )


def make_base_image(
    path: Path,
    *,
    boot_files: Mapping[str, bytes] | None = None,
    root_files: Mapping[str, bytes] | None = None,
    data_files: Mapping[str, bytes] | None = None,
    boot_mib: int = 64,
    root_mib: int = 48,
    data_mib: int = 16,
    xz: bool = False,
    data_mkfs: Sequence[str] = (),
) -> BaseImageLayout:
    """Build a small offspot-like base image at ``path`` (and ``path.xz`` if ``xz``).

    ``*_files`` map a relative path inside the partition to its content; ``None`` uses the
    ``DEFAULT_*_FILES`` (pass ``{**DEFAULT_DATA_FILES, ...}`` to add to them). The image is
    built under a temporary name and renamed into place once complete.

    The data filesystem gets mke2fs's defaults plus the options in ``data_mkfs``; the
    official base image's are :data:`OFFICIAL_DATA_MKFS`.
    """
    if boot_mib < MIN_BOOT_MIB:
        raise ValueError(f"boot_mib must be at least {MIN_BOOT_MIB} for a valid FAT32")
    if root_mib < 8 or data_mib < 8:
        raise ValueError("root_mib and data_mib must be at least 8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total_mib = 1 + boot_mib + root_mib + data_mib
    with tempfile.TemporaryDirectory(prefix=".base-image-", dir=path.parent) as workdir:
        work = Path(workdir)
        image = work / path.name
        with image.open("wb") as handle:
            handle.truncate(total_mib * MIB)
        run(
            ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image],
            input_text=_partition_table(boot_mib, root_mib, data_mib),
        )
        layout = read_layout(image)
        _make_boot_filesystem(
            image,
            layout.boot,
            _stage(work / "boot", DEFAULT_BOOT_FILES if boot_files is None else boot_files),
        )
        _make_ext4_filesystem(
            image,
            layout.root,
            _stage(work / "root", DEFAULT_ROOT_FILES if root_files is None else root_files),
            "rootfs",
        )
        _make_ext4_filesystem(
            image,
            layout.data,
            _stage(work / "data", DEFAULT_DATA_FILES if data_files is None else data_files),
            "data",
            options=data_mkfs,
        )
        xz_path: Path | None = None
        if xz:
            run(["xz", "-T0", "-k", "-f", image])
            xz_path = path.with_suffix(path.suffix + ".xz")
            image.with_suffix(image.suffix + ".xz").replace(xz_path)
        image.replace(path)
    logger.debug("base image written: %s", path)
    return BaseImageLayout(
        path=path,
        size=layout.size,
        disk_id=layout.disk_id,
        boot=layout.boot,
        root=layout.root,
        data=layout.data,
        xz_path=xz_path,
    )


# the demo content files: name -> content
DEMO_TEXT = b"Hello from the image-creator demo.\n"
DEMO_ARCHIVE_FILES: Mapping[str, bytes] = {
    "index.html": b"<!doctype html><title>demo</title><p>Hello, Offspot.</p>\n",
    "docs/about.txt": b"Packed in an archive, expanded onto the data partition.\n",
    "docs/licence.txt": b"Public domain.\n",
}


def _tar_gz(files: Mapping[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def _zip(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return buffer.getvalue()


def write_demo(outdir: Path) -> Path:
    """Write the base image, the content files and demo.yaml into outdir; return demo.yaml."""
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    layout = make_base_image(outdir / "base.img", xz=True)
    base_xz = layout.xz_path or outdir / "base.img.xz"

    text = outdir / "hello.txt"
    text.write_bytes(DEMO_TEXT)
    tarball = outdir / "site.tar.gz"
    tarball.write_bytes(_tar_gz(DEMO_ARCHIVE_FILES))
    zipped = outdir / "site.zip"
    zipped.write_bytes(_zip(DEMO_ARCHIVE_FILES))

    config = {
        # local sources both ways: plain paths (base, tarball) and file:// URLs
        "base": {"source": str(base_xz), "root_size": layout.root.size_bytes},
        "files": [
            {
                "url": text.as_uri(),
                "to": "/data/contents/hello.txt",
                "via": "direct",
                "checksum": {"algo": "sha-256", "value": hashlib.sha256(DEMO_TEXT).hexdigest()},
            },
            {"url": str(tarball), "to": "/data/contents/site-tar", "via": "gztar"},
            {"url": zipped.as_uri(), "to": "/data/contents/site-zip", "via": "zip"},
            {"to": "/data/conf/message.txt", "content": "Built by image-creator's demo."},
        ],
        "write_config": True,
        "offspot": {
            "timezone": "Africa/Bamako",
            "ap": {"ssid": "Offspot Demo", "as-gateway": False, "domain": "demo", "tld": "offspot"},
        },
    }
    config_path = outdir / "demo.yaml"
    config_path.write_text(
        "# written by `python -m image_creator.demo`; every source is local\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return config_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m image_creator.demo",
        description="Write a small base image, local content files and a demo config (no root).",
    )
    parser.add_argument("outdir", metavar="OUTDIR", type=Path, help="folder to write into")
    options = parser.parse_args(argv)
    try:
        config_path = write_demo(options.outdir)
    except ImageCreatorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return int(exc.exit_code)
    print(config_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the offline writer wrote, as the kernel's ext4 driver reads it (loop mount, root)."""

from __future__ import annotations

import hashlib
import os
import random
import stat
from pathlib import Path

from image_creator.demo import make_base_image
from image_creator.system.image import grow_data_partition, grow_image_file
from image_creator.system.loop import attached_partition
from image_creator.system.mount import mounted
from image_creator.system.offline_fs import Attributes
from image_creator.system.queued_writer import QueuedWriter
from image_creator.system.run import run
from image_creator.system.side_resize import grow_filesystem_offline
from tests.support.requirements import require_root, require_tools

MIB = 2**20
MTIME = 1_700_000_000_987_654_321


def test_the_kernel_reads_what_the_offline_writer_wrote(tmp_path: Path) -> None:
    require_root()
    require_tools("losetup", "mount", "umount", "sfdisk", "e2fsck", "resize2fs", "dumpe2fs")
    image = make_base_image(tmp_path / "base.img").path
    grow_image_file(image, 256 * MIB)
    partition = grow_data_partition(image)
    grow_filesystem_offline(image, partition)
    content = random.Random(5).randbytes(24 * MIB)

    with QueuedWriter(image, partition) as writer:
        writer.write_file(
            "contents/zims/a.zim",
            (content[start : start + MIB] for start in range(0, len(content), MIB)),
            Attributes(mode=0o640, uid=1000, gid=100, mtime_ns=MTIME),
        )
        writer.hard_link("contents/zims/a.zim", "contents/a-again.zim")
        writer.symlink("contents/latest", "zims/a.zim")
        for index in range(300):
            writer.write_file(f"contents/small/{index}", [f"{index}\n".encode()])

    run(["e2fsck", "-f", "-n", f"{image}?offset={partition.start_bytes}"])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with attached_partition(image, partition) as device, mounted(device, mountpoint):
        zim = mountpoint / "contents" / "zims" / "a.zim"
        assert hashlib.sha256(zim.read_bytes()).digest() == hashlib.sha256(content).digest()
        info = zim.lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 1000, 100)
        assert (info.st_mtime_ns, info.st_nlink) == (MTIME, 2)
        assert (mountpoint / "contents" / "a-again.zim").lstat().st_ino == info.st_ino
        assert os.readlink(mountpoint / "contents" / "latest") == "zims/a.zim"
        small = mountpoint / "contents" / "small"
        assert sorted(int(name) for name in os.listdir(small)) == list(range(300))
        assert (small / "299").read_bytes() == b"299\n"
        free = os.statvfs(mountpoint)
        assert free.f_bfree > 0

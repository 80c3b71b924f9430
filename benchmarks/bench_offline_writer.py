"""Writing a large file onto the data partition: the offline writer vs cp into a loop mount.

    sudo .venv/bin/python benchmarks/bench_offline_writer.py [--size-mib 512] [--repeat 3]

Each round builds one grown image and copies it (sparse) for every method, then writes the
same source file (random bytes, read from disk, so in the page cache for all) to
``contents/big.bin``:

- ``loop+cp``: losetup, mount, ``cp``, syncfs and umount, losetup -d (needs root);
- ``offline``: OfflineFilesystem.write_file from the caller's thread, then close (fsync);
- ``queued``: QueuedWriter.write_file: the caller reads, the writer thread writes.

Figures are medians over the rounds; ratios are taken against loop+cp in the same run.
Each written image is checked with ``e2fsck -fn`` and its file's sha256 with debugfs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from image_creator.demo import make_base_image
from image_creator.system.image import grow_data_partition, grow_image_file
from image_creator.system.loop import attached_partition
from image_creator.system.mount import mounted
from image_creator.system.offline_fs import OfflineFilesystem
from image_creator.system.partitions import Partition
from image_creator.system.queued_writer import QueuedWriter
from image_creator.system.run import run
from image_creator.system.side_resize import grow_filesystem_offline

MIB = 2**20
CHUNK = MIB


def chunks_of(source: Path) -> Iterator[bytes]:
    with source.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            yield chunk


def write_loop_cp(image: Path, partition: Partition, source: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-mnt-") as folder:
        mountpoint = Path(folder)
        with attached_partition(image, partition) as device, mounted(device, mountpoint):
            run(["cp", source, mountpoint / "contents" / "big.bin"])


def write_offline(image: Path, partition: Partition, source: Path) -> None:
    with OfflineFilesystem(image, partition) as fs:
        fs.write_file("contents/big.bin", chunks_of(source))


def write_queued(image: Path, partition: Partition, source: Path) -> None:
    with QueuedWriter(image, partition) as writer:
        writer.write_file("contents/big.bin", chunks_of(source))


METHODS: dict[str, Callable[[Path, Partition, Path], None]] = {
    "loop+cp": write_loop_cp,
    "offline": write_offline,
    "queued": write_queued,
}


def verify(image: Path, partition: Partition, digest: str) -> None:
    target = f"{image}?offset={partition.start_bytes}"
    run(["e2fsck", "-f", "-n", target])
    content = subprocess.run(
        ["debugfs", "-R", "cat /contents/big.bin", target], capture_output=True, check=True
    ).stdout
    if hashlib.sha256(content).hexdigest() != digest:
        raise SystemExit(f"{image}: contents/big.bin differs from its source")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: /var/tmp)")
    options = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (the loop mount it compares with)", file=sys.stderr)
        return 2
    size = options.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="bench-offline-", dir=options.dir or "/var/tmp"))
    try:
        source = work / "source.bin"
        with source.open("wb") as out:
            for _ in range(options.size_mib):
                out.write(os.urandom(MIB))
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        base = make_base_image(work / "base.img").path
        grow_image_file(base, size + 512 * MIB + 128 * MIB)
        partition = grow_data_partition(base)
        grow_filesystem_offline(base, partition)

        timings: dict[str, list[float]] = {name: [] for name in METHODS}
        for round_number in range(options.repeat):
            for name, method in METHODS.items():
                image = work / f"{name}.img"
                run(["cp", "--sparse=always", base, image])
                os.sync()
                started = time.perf_counter()
                method(image, partition, source)
                timings[name].append(time.perf_counter() - started)
                verify(image, partition, digest)
                image.unlink()
            print(
                f"round {round_number + 1}: "
                + ", ".join(f"{name} {values[-1]:.2f}s" for name, values in timings.items()),
                flush=True,
            )
        reference = statistics.median(timings["loop+cp"])
        print(f"\n{options.size_mib} MiB, median of {options.repeat} rounds:")
        for name, values in timings.items():
            median = statistics.median(values)
            rate = size / MIB / median
            print(
                f"  {name:8} {median:6.2f}s  {rate:7.1f} MiB/s  "
                f"{median / reference:5.2f}x the time of loop+cp"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

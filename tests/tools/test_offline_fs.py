"""Writing the data partition without root: the side-file resize and the libext2fs writer.

Real tools on sparse files: make_base_image, sfdisk, e2fsck, resize2fs, dumpe2fs, and
debugfs as the oracle that reads back what the writer wrote. Run as root, the whole module
runs again as ``nobody`` (test_as_nobody), and one build runs as ``nobody`` on an image in a
folder ``nobody`` cannot write (test_rootless_build_needs_only_the_image_file).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

import image_creator
from image_creator.demo import DEFAULT_DATA_FILES, make_base_image
from image_creator.errors import BuildError
from image_creator.system import ext2fs
from image_creator.system.ext2fs import Ext2fsError
from image_creator.system.ext4 import ensure_cleanly_unmounted
from image_creator.system.image import grow_data_partition, grow_image_file
from image_creator.system.offline_fs import Attributes, OfflineFilesystem
from image_creator.system.partitions import Partition, data_partition, read_partition_table
from image_creator.system.queued_writer import QueuedWriter
from image_creator.system.run import run
from image_creator.system.side_resize import copy_sparse, grow_filesystem_offline
from tests.support.requirements import require_tools
from tests.support.users import reachable_by_everyone

MIB = 2**20
BLOCK = 4096
GROWN = 512 * MIB
AS_NOBODY = "IMAGE_CREATOR_TEST_AS_NOBODY"
TOOLS = ("sfdisk", "mke2fs", "e2fsck", "resize2fs", "dumpe2fs", "tune2fs", "debugfs", "mcopy")


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools(*TOOLS)


def at_offset(image: Path, partition: Partition) -> str:
    return f"{image}?offset={partition.start_bytes}"


def base_image(folder: Path, *, data_mib: int = 16, data_mkfs: tuple[str, ...] = ()) -> Path:
    return make_base_image(folder / "base.img", data_mib=data_mib, data_mkfs=data_mkfs).path


def grown_image(folder: Path, size: int = GROWN, *, work_dir: Path | None = None) -> Partition:
    """A base image grown to ``size``: partition by sfdisk, filesystem by the side file."""
    image = base_image(folder)
    grow_image_file(image, size)
    partition = grow_data_partition(image)
    grow_filesystem_offline(image, partition, work_dir=work_dir)
    return partition


def fsck_clean(image: Path, partition: Partition) -> None:
    result = run(["e2fsck", "-f", "-n", at_offset(image, partition)], ok_codes=(0, 1, 2, 4, 8))
    assert result.returncode == 0, result.stdout + result.stderr


def superblock(image: Path, partition: Partition) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in run(["dumpe2fs", "-h", at_offset(image, partition)]).stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def backup_superblocks(image: Path, partition: Partition) -> list[int]:
    listing = run(["dumpe2fs", at_offset(image, partition)]).stdout
    return [int(found) for found in re.findall(r"Backup superblock at (\d+)", listing)]


def assert_backups_readable(image: Path, partition: Partition) -> None:
    """Every backup superblock reads back and describes the grown filesystem."""
    expected = superblock(image, partition)["Block count"]
    backups = backup_superblocks(image, partition)
    assert backups
    for number in backups:
        result = run(
            [
                "dumpe2fs",
                "-h",
                "-o",
                f"superblock={number}",
                "-o",
                f"blocksize={BLOCK}",
                at_offset(image, partition),
            ]
        )
        assert f"Block count:              {expected}" in result.stdout, number


def debugfs(image: Path, partition: Partition, request: str) -> str:
    return run(["debugfs", "-R", request, at_offset(image, partition)]).stdout


def catted(image: Path, partition: Partition, path: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", f'cat "{path}"', at_offset(image, partition)],
        capture_output=True,
        check=True,
    ).stdout


@dataclass(frozen=True)
class Stat:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    links: int
    mtime_ns: int
    fast_link: str | None


def debugfs_stat(image: Path, partition: Partition, path: str) -> Stat:
    """An inode as debugfs describes it: the oracle, independent of our binding."""
    text = debugfs(image, partition, f'stat "{path}"')
    kind = re.search(r"Type: (\w+)", text)
    mode = re.search(r"Mode:\s+(\d+)", text)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", text)
    size = re.search(r"Size: (\d+)", text)
    links = re.search(r"Links: (\d+)", text)
    mtime = re.search(r"mtime: 0x([0-9a-f]+):([0-9a-f]+)", text)
    fast = re.search(r'Fast link dest: "(.*)"', text)
    assert kind and mode and owner and size and links and mtime, text
    seconds, extra = int(mtime.group(1), 16), int(mtime.group(2), 16)
    signed = seconds - 2**32 if seconds >= 2**31 else seconds
    mtime_ns = (signed + ((extra & 3) << 32)) * 10**9 + (extra >> 2)
    return Stat(
        kind=kind.group(1),
        mode=int(mode.group(1), 8),
        uid=int(owner.group(1)),
        gid=int(owner.group(2)),
        size=int(size.group(1)),
        links=int(links.group(1)),
        mtime_ns=mtime_ns,
        fast_link=fast.group(1) if fast else None,
    )


def names_in(image: Path, partition: Partition, folder: str) -> set[str]:
    listing = debugfs(image, partition, f'ls -l "{folder}"')
    names: set[str] = set()
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 9:
            names.add(fields[-1])
    return names - {".", ".."}


def noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def noise_chunks(seed: int, total: int, chunk: int = MIB) -> Iterator[bytes]:
    generator = random.Random(seed)
    for start in range(0, total, chunk):
        yield generator.randbytes(min(chunk, total - start))


# the binding --------------------------------------------------------------------------


def test_inode_layout_matches_the_headers() -> None:
    assert ext2fs.INODE_LARGE_SIZE == 160
    offsets = {"i_block": 0x28, "l_i_uid_high": 0x78, "i_extra_isize": 0x80, "i_projid": 0x9C}
    for name, offset in offsets.items():
        assert getattr(ext2fs.Inode, name).offset == offset, name


@pytest.mark.parametrize(
    "ns", [0, 1_700_000_000_123_456_789, 2**31 * 10**9, (2**32 + 5) * 10**9 + 7, -(10**9)]
)
def test_times_round_trip_with_the_epoch_bits(ns: int) -> None:
    inode = ext2fs.Inode()
    inode.i_extra_isize = 32
    inode.set_times_ns(mtime_ns=ns)
    assert inode.mtime_ns() == ns


def test_errors_name_the_operation_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.img"
    with pytest.raises(Ext2fsError) as caught:
        ext2fs.Ext2Filesystem(missing, 0, writable=False)
    assert str(caught.value) == (
        f"{missing}?offset=0: open the filesystem failed: No such file or directory"
    )


# sparse copies and the side-file resize --------------------------------------------------


def test_copy_sparse_makes_the_range_equal_and_keeps_holes(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    with source.open("wb") as file:
        file.truncate(8 * MIB)
        file.seek(MIB)
        file.write(noise(1, 3 * BLOCK) + bytes(4 * BLOCK) + noise(2, 100))
        file.seek(5 * MIB)
        file.write(noise(3, MIB))
    with target.open("wb") as file:
        file.write(noise(4, 10 * MIB))  # junk everywhere, holes in the source included

    written = copy_sparse(source, 0, target, MIB, 8 * MIB)

    assert written == 3 * BLOCK + BLOCK + MIB  # the 100 bytes go as one block of the source
    assert target.stat().st_size == 10 * MIB
    data = target.read_bytes()
    assert data[MIB : 9 * MIB] == source.read_bytes()
    assert data[:MIB] == noise(4, 10 * MIB)[:MIB]  # outside the range: untouched
    assert data[9 * MIB :] == noise(4, 10 * MIB)[9 * MIB :]
    # the junk over the source's holes was punched out, not written as zeros
    assert target.stat().st_blocks * 512 <= 2 * MIB + written + 16 * BLOCK


def test_side_resize_grows_the_filesystem_to_the_partition(tmp_path: Path) -> None:
    image = base_image(tmp_path, data_mkfs=("-T", "largefile", "-m", "1"))
    before = read_partition_table(image)
    head = image.read_bytes()[: data_partition(before).start_bytes]
    grow_image_file(image, 4 * 2**30)
    partition = grow_data_partition(image)

    grow_filesystem_offline(image, partition, work_dir=tmp_path)

    fields = superblock(image, partition)
    assert int(fields["Block count"]) * BLOCK == partition.size_bytes
    assert fields["Filesystem state"] == "clean"
    fsck_clean(image, partition)
    assert_backups_readable(image, partition)
    assert image.stat().st_size == 4 * 2**30  # not truncated to anything
    after = image.read_bytes()[: partition.start_bytes]
    # boot and root partitions untouched; the MBR differs only in partition 3's entry
    assert after[512:] == head[512:]
    assert (
        catted(image, partition, "/contents/readme.txt")
        == (DEFAULT_DATA_FILES["contents/readme.txt"])
    )
    assert image.stat().st_blocks * 512 < 64 * MIB  # the cost follows the content
    assert not [entry for entry in tmp_path.iterdir() if entry.suffix == ".ext4"]


def test_side_resize_refuses_a_damaged_filesystem_and_leaves_no_side_file(
    tmp_path: Path,
) -> None:
    image = base_image(tmp_path)
    grow_image_file(image, GROWN)
    partition = grow_data_partition(image)
    with image.open("r+b") as file:  # both superblock copies of group 0 and 1 gone
        file.seek(partition.start_bytes)
        file.write(bytes(2 * BLOCK))
        file.seek(partition.start_bytes + 32768 * BLOCK)
        file.write(bytes(BLOCK))
    original = image.read_bytes()

    with pytest.raises(BuildError):
        grow_filesystem_offline(image, partition, work_dir=tmp_path)

    assert image.read_bytes() == original
    assert [entry.name for entry in tmp_path.iterdir()] == [image.name]


# the writer -------------------------------------------------------------------------------


MTIME = 1_600_000_000_123_456_789
FAR_MTIME = (2**32 + 77) * 10**9 + 5  # past 2106: needs the epoch bits
LONG_TARGET = "../" * 30 + "somewhere/far/away"  # over 60 bytes: kept in a block


def test_a_full_write_reads_back_through_debugfs(tmp_path: Path) -> None:
    partition = grown_image(tmp_path)
    image = tmp_path / "base.img"
    big_digest = hashlib.sha256()
    small = {f"contents/many/{index:04d}.txt": f"file {index}\n".encode() for index in range(2000)}

    def big_stream() -> Iterator[bytes]:
        for chunk in noise_chunks(7, 64 * MIB):
            big_digest.update(chunk)
            yield chunk

    with QueuedWriter(image, partition) as writer:
        free_before = writer.free_space()
        writer.make_folders(
            "contents/a/b/c", Attributes(mode=0o750, uid=1000, gid=1001, mtime_ns=MTIME)
        )

        def producer(share: list[str]) -> None:
            for path in share:
                writer.write_file(path, [small[path]], Attributes(mtime_ns=MTIME))

        paths = sorted(small)
        with ThreadPoolExecutor(max_workers=4) as pool:
            shares = [paths[index::3] for index in range(3)]
            futures = [pool.submit(producer, share) for share in shares]
            big = pool.submit(
                writer.write_file,
                "contents/a/b/c/big.bin",
                big_stream(),
                Attributes(mode=0o600, uid=123456, gid=654321, mtime_ns=FAR_MTIME),
            )
            for future in futures:
                future.result()
            assert big.result() == 64 * MIB

        writer.symlink("contents/short", "a/b/c/big.bin", Attributes(uid=5, gid=6))
        writer.symlink("contents/long", LONG_TARGET)
        writer.hard_link("contents/a/b/c/big.bin", "contents/hard.bin")
        writer.write_file("contents/readme.txt.new", [b"replaced\n"])
        writer.rename("contents/readme.txt.new", "contents/readme.txt")
        writer.write_file("contents/many/0000.txt", [b"written twice\n"])
        writer.set_attributes("contents/many/0001.txt", Attributes(mode=0o400, mtime_ns=0))
        # a folder's time changes with its entries (as in the kernel): set once they are in
        writer.set_attributes("contents/a/b/c", Attributes(mtime_ns=MTIME))
        free_after = writer.free_space()
        assert writer.stat("contents/hard.bin") == writer.stat("contents/a/b/c/big.bin")

    assert free_before.free_bytes - free_after.free_bytes >= 64 * MIB
    # the small files, big.bin, 4 folders (a, b, c, many), 2 symlinks; replacements free theirs
    assert free_before.free_inodes - free_after.free_inodes == 2000 + 1 + 4 + 2
    fsck_clean(image, partition)
    assert superblock(image, partition)["Filesystem state"] == "clean"
    assert_backups_readable(image, partition)

    big_path = "/contents/a/b/c/big.bin"
    assert hashlib.sha256(catted(image, partition, big_path)).hexdigest() == (
        big_digest.hexdigest()
    )
    assert debugfs_stat(image, partition, big_path) == Stat(
        "regular", 0o600, 123456, 654321, 64 * MIB, 2, FAR_MTIME, None
    )
    assert debugfs_stat(image, partition, "/contents/a/b/c") == Stat(
        "directory", 0o750, 1000, 1001, BLOCK, 2, MTIME, None
    )
    assert names_in(image, partition, "/contents/many") == {
        PurePosixPath(path).name for path in small
    }
    assert catted(image, partition, "/contents/many/0000.txt") == b"written twice\n"
    for index in (1, 999, 1999):
        path = f"/contents/many/{index:04d}.txt"
        assert catted(image, partition, path) == small[path[1:]]
    assert debugfs_stat(image, partition, "/contents/many/0001.txt").mode == 0o400
    assert debugfs_stat(image, partition, "/contents/many/0001.txt").mtime_ns == 0
    assert debugfs_stat(image, partition, "/contents/many/0002.txt").mtime_ns == MTIME
    short = debugfs_stat(image, partition, "/contents/short")
    assert (short.kind, short.fast_link, short.uid, short.gid) == (
        "symlink",
        "a/b/c/big.bin",
        5,
        6,
    )
    assert catted(image, partition, "/contents/readme.txt") == b"replaced\n"
    assert names_in(image, partition, "/contents") == {
        "a",
        "many",
        "short",
        "long",
        "hard.bin",
        "readme.txt",
    }
    dump = tmp_path / "dump"
    dump.mkdir()
    subprocess.run(
        ["debugfs", "-R", f"rdump /contents {dump}", at_offset(image, partition)],
        capture_output=True,
        check=True,
    )
    assert os.readlink(dump / "contents" / "long") == LONG_TARGET
    assert os.readlink(dump / "contents" / "short") == "a/b/c/big.bin"


def test_a_link_on_the_way_is_refused(tmp_path: Path) -> None:
    partition = grown_image(tmp_path)
    image = tmp_path / "base.img"
    with OfflineFilesystem(image, partition) as fs:
        fs.symlink("contents/escape", "/srv")
        fs.write_file("contents/plain.txt", [b"plain\n"])
        with pytest.raises(BuildError) as through_link:
            fs.write_file("contents/escape/inside/x.txt", [b"x"])
        with pytest.raises(BuildError) as through_file:
            fs.make_folders("contents/plain.txt/sub")
        with pytest.raises(BuildError) as over_folder:
            fs.write_file("contents", [b"x"])
        for bad in ("/etc/passwd", "../outside", "contents/../../x", ""):
            with pytest.raises(BuildError, match="not a path inside the data partition"):
                fs.write_file(bad, [b"x"])
        # a link at the final name is replaced, not written through
        fs.write_file("contents/escape", [b"now a file\n"])
        assert fs.stat("contents/escape") is not None
    assert str(through_link.value) == (
        "/data/contents/escape/inside/x.txt: /data/contents/escape is a symbolic link "
        "(to /srv): refusing to write through it"
    )
    assert str(through_file.value) == (
        "/data/contents/plain.txt/sub: /data/contents/plain.txt is not a folder: "
        "refusing to write through it"
    )
    assert str(over_folder.value) == "/data/contents: is a folder: refusing to replace it"
    assert debugfs_stat(image, partition, "/contents/escape").kind == "regular"
    assert names_in(image, partition, "/contents") == {"readme.txt", "plain.txt", "escape"}
    fsck_clean(image, partition)


def test_a_full_partition_is_a_clear_error_and_a_clean_filesystem(tmp_path: Path) -> None:
    image = base_image(tmp_path)  # 16 MiB, not grown
    partition = data_partition(read_partition_table(image))
    with QueuedWriter(image, partition) as writer:
        before = writer.free_space()
        with pytest.raises(Ext2fsError) as caught:
            writer.write_file("contents/huge.bin", noise_chunks(1, 64 * MIB))
        assert caught.value.no_space
        assert writer.free_space() == before  # the partial file's blocks are freed
        assert writer.stat("contents/huge.bin") is None
        writer.write_file("contents/after.txt", [b"still writable\n"])  # the writer goes on
    assert re.fullmatch(
        r"/data/contents/huge\.bin: write failed: No space left on device \(\d+ bytes free\)",
        str(caught.value),
    )
    fsck_clean(image, partition)
    assert names_in(image, partition, "/contents") == {"readme.txt", "after.txt"}


def test_running_out_of_inodes_is_a_clear_error(tmp_path: Path) -> None:
    image = base_image(tmp_path, data_mkfs=("-T", "largefile", "-m", "1"))  # 16 inodes
    partition = data_partition(read_partition_table(image))
    with OfflineFilesystem(image, partition) as fs:
        with pytest.raises(Ext2fsError) as caught:
            for index in range(100):
                fs.write_file(f"contents/{index}.txt", [b"x"])
        assert caught.value.no_space
    assert "allocate an inode failed" in str(caught.value)
    fsck_clean(image, partition)


def test_positional_writes_folders_listed_moved_and_removed(tmp_path: Path) -> None:
    """What the rootless sink needs besides streaming: pieces written at their offset (a
    segmented download), folders listed, renamed in place and removed once empty; a folder
    whose entries change gets the time of the change."""
    image = base_image(tmp_path)
    partition = data_partition(read_partition_table(image))
    pieces = [(offset, noise(offset, 100_000)) for offset in (300_000, 0, 200_000, 100_000)]
    with QueuedWriter(image, partition) as writer:
        writer.set_attributes("contents", Attributes(mtime_ns=1_000_000_000 * 10**9))
        with writer.open_file("contents/stage/pieces.bin") as file:
            for offset, data in pieces:
                file.write_at(offset, data)
            assert file.commit() == 400_000
        with writer.open_file("contents/stage/dropped.bin") as file:
            file.write(b"never named")
            file.abort()
        writer.symlink("contents/stage/link", "pieces.bin")
        assert writer.list_folder("contents/stage") == ["link", "pieces.bin"]
        assert writer.list_folder() == ["contents", "lost+found"]
        writer.rename_folder("contents/stage", "final")
        with pytest.raises(BuildError, match="not empty"):
            writer.remove_folder("contents/final")
        writer.make_folders("contents/empty/inner")
        writer.remove_folder("contents/empty/inner")
        writer.remove_folder("contents/empty")
        assert writer.list_folder("contents") == ["final", "readme.txt"]
        changed = writer.stat("contents")
        assert changed is not None and changed.mtime_ns > 1_000_000_000 * 10**9
    fsck_clean(image, partition)
    expected = b"".join(data for _, data in sorted(pieces))
    assert catted(image, partition, "/contents/final/pieces.bin") == expected
    assert names_in(image, partition, "/contents") == {"final", "readme.txt"}
    assert names_in(image, partition, "/contents/final") == {"link", "pieces.bin"}


def test_an_error_in_the_producer_or_the_writer_reaches_the_producer(tmp_path: Path) -> None:
    partition = grown_image(tmp_path)
    image = tmp_path / "base.img"

    def failing() -> Iterator[bytes]:
        yield noise(1, MIB)
        raise OSError("connection reset")

    def writer_fails(_fs: OfflineFilesystem) -> None:
        raise BuildError("in the writer thread")

    with QueuedWriter(image, partition) as writer:
        with pytest.raises(OSError, match="connection reset"):
            writer.write_file("contents/partial.bin", failing())
        seen: list[str] = []

        def call_from_thread() -> None:
            try:
                writer.call(writer_fails)
            except BuildError as exc:
                seen.append(f"{threading.current_thread().name}: {exc}")

        thread = threading.Thread(target=call_from_thread, name="producer")
        thread.start()
        thread.join()
        assert seen == ["producer: in the writer thread"]
        # a chunk that fails in the writer: the stream stops, the producer gets the error
        with pytest.raises(BuildError, match="not a folder"):
            writer.write_file("contents/readme.txt/x", noise_chunks(2, 8 * MIB))
        assert writer.stat("contents/partial.bin") is None
    assert names_in(image, partition, "/contents") == {"readme.txt"}
    fsck_clean(image, partition)


def test_a_writer_left_by_an_error_is_marked_not_clean(tmp_path: Path) -> None:
    partition = grown_image(tmp_path)
    image = tmp_path / "base.img"
    with pytest.raises(RuntimeError), QueuedWriter(image, partition) as writer:
        writer.write_file("contents/x.txt", [b"x"])
        raise RuntimeError("the build failed elsewhere")
    with pytest.raises(BuildError, match="not written in full"):
        ensure_cleanly_unmounted(Path(at_offset(image, partition)))
    with pytest.raises(BuildError, match="not marked clean") as caught:
        OfflineFilesystem(image, partition).__enter__()
    assert caught.value.hint == "run e2fsck -f"
    fsck_clean(image, partition)  # consistent, only not marked clean


# without root ----------------------------------------------------------------------------


NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def _as_nobody(argv: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    package = Path(image_creator.__file__).parent
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", AS_NOBODY: "1", "HOME": str(cwd)}
    with reachable_by_everyone(
        Path(sys.executable).parent, Path(sys.executable).resolve(), package
    ):
        return subprocess.run(
            [*NOBODY, *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def root_owned_dir() -> Iterator[Path]:
    """A 0755 folder owned by root, outside pytest's private tree: nobody reads, not writes."""
    folder = Path(tempfile.mkdtemp(prefix="image-creator-offline-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


ROOTLESS_BUILD = """
import hashlib, sys
from pathlib import Path
from image_creator.system.image import grow_data_partition, grow_image_file
from image_creator.system.offline_fs import Attributes
from image_creator.system.queued_writer import QueuedWriter
from image_creator.system.side_resize import grow_filesystem_offline

image, work = Path(sys.argv[1]), Path(sys.argv[2])
grow_image_file(image, 256 * 2**20)
partition = grow_data_partition(image)
grow_filesystem_offline(image, partition, work_dir=work)
with QueuedWriter(image, partition) as writer:
    writer.write_file("contents/zims/a.zim", (bytes([n]) * 2**20 for n in range(32)))
    writer.symlink("contents/latest.zim", "zims/a.zim")
    writer.set_attributes("contents/zims", Attributes(mode=0o700, uid=1000, gid=1000))
print(partition.start_bytes)
"""


def test_rootless_build_needs_only_the_image_file(root_owned_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("run as root: it switches to nobody itself")
    require_tools("setpriv")
    image = base_image(root_owned_dir)
    os.chown(image, 65534, 65534)
    image.chmod(0o600)
    work = root_owned_dir / "work"
    work.mkdir()
    os.chown(work, 65534, 65534)

    result = _as_nobody(
        [sys.executable, "-c", ROOTLESS_BUILD, str(image), str(work)], root_owned_dir, 300
    )

    assert result.returncode == 0, result.stdout + result.stderr
    partition = data_partition(read_partition_table(image))
    assert int(result.stdout.strip()) == partition.start_bytes
    assert sorted(entry.name for entry in root_owned_dir.iterdir()) == ["base.img", "work"]
    assert list(work.iterdir()) == []
    fsck_clean(image, partition)
    expected = b"".join(bytes([n]) * MIB for n in range(32))
    assert catted(image, partition, "/contents/latest.zim") == b""  # a link: not followed
    assert catted(image, partition, "/contents/zims/a.zim") == expected
    assert debugfs_stat(image, partition, "/contents/zims").mode == 0o700


def test_as_nobody() -> None:
    """This module again, as nobody (skipped there: it is what runs it)."""
    if os.environ.get(AS_NOBODY) or os.geteuid() != 0:
        pytest.skip("already unprivileged")
    require_tools("setpriv")
    folder = Path(tempfile.mkdtemp(prefix="image-creator-nobody-"))
    try:
        os.chown(folder, 65534, 65534)
        result = _as_nobody(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                f"--basetemp={folder / 'tmp'}",
                "--rootdir",
                str(Path(__file__).parents[2]),
                "-k",
                "not test_as_nobody and not test_rootless_build",
                __file__,
            ],
            Path(__file__).parents[2],
            900,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout

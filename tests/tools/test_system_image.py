"""Partition tables, growing and the FAT boot partition, with the real tools on sparse files."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from image_creator.errors import BuildError, CommandError, SourceError
from image_creator.system.ext4 import check_filesystem, filesystem_size
from image_creator.system.fat import write_fat_file
from image_creator.system.image import grow_data_partition, grow_image_file
from image_creator.system.partitions import (
    Partition,
    PartitionTable,
    data_partition,
    parse_mbr,
    read_partition_table,
)
from image_creator.system.run import run
from tests.support.fat import list_fat_dir, read_fat_file
from tests.support.requirements import require_tools

MIB = 1024 * 1024
PART_SIZE = 8 * MIB
BOOT_START, ROOT_START, DATA_START = 1 * MIB, 9 * MIB, 17 * MIB
BASE_SIZE = DATA_START + PART_SIZE
DISK_ID = "0x0badcafe"  # a leading zero, to check both readers keep all eight digits
CONFIG_TXT = b"arm_64bit=1\ndtparam=audio=on\n"


def make_small_image(folder: Path, *, with_data_partition: bool = True) -> Path:
    """A 25 MiB offspot-like image: FAT boot (with config.txt), ext4 root, ext4 data (hello.txt)."""
    require_tools("sfdisk", "mkfs.vfat", "mcopy", "mke2fs")
    image = folder / "base.img"
    with image.open("wb") as file:
        file.truncate(BASE_SIZE)
    layout = [(BOOT_START, "c, bootable"), (ROOT_START, "83")]
    ext4_filesystems = [(ROOT_START, "root")]
    if with_data_partition:
        layout.append((DATA_START, "83"))
        ext4_filesystems.append((DATA_START, "data"))
    run(
        ["sfdisk", "--quiet", image],
        input_text=f"label: dos\nlabel-id: {DISK_ID}\n"
        + "".join(
            f"start={start // 512}, size={PART_SIZE // 512}, type={t}\n" for start, t in layout
        ),
    )
    run(
        [
            "mkfs.vfat",
            "-n",
            "BOOT",
            "--offset",
            str(BOOT_START // 512),
            image,
            str(PART_SIZE // 1024),
        ]
    )
    config = folder / "config.txt"
    config.write_bytes(CONFIG_TXT)
    run(
        ["mcopy", "-i", f"{image}@@{BOOT_START}", config, "::/config.txt"],
        env={"MTOOLS_SKIP_CHECK": "1"},
    )
    content = folder / "data-content"
    content.mkdir()
    (content / "hello.txt").write_text("hello\n")
    for start, label in ext4_filesystems:
        run(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                label,
                "-d",
                content,
                "-E",
                f"offset={start}",
                image,
                "8M",
            ]
        )
    return image


def region_digest(image: Path, start: int, size: int) -> str:
    with image.open("rb") as file:
        file.seek(start)
        return hashlib.sha256(file.read(size)).hexdigest()


def first_sector(image: Path) -> bytes:
    with image.open("rb") as file:
        return file.read(512)


EXPECTED_PARTITIONS = (
    Partition(number=1, start_bytes=BOOT_START, size_bytes=PART_SIZE, type="c"),
    Partition(number=2, start_bytes=ROOT_START, size_bytes=PART_SIZE, type="83"),
    Partition(number=3, start_bytes=DATA_START, size_bytes=PART_SIZE, type="83"),
)


def test_read_partition_table_reads_the_layout(tmp_path: Path) -> None:
    table = read_partition_table(make_small_image(tmp_path))

    assert table == PartitionTable(
        label="dos", disk_id=DISK_ID, sector_size=512, partitions=EXPECTED_PARTITIONS
    )


def test_parse_mbr_agrees_with_sfdisk(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)

    assert parse_mbr(first_sector(image)) == read_partition_table(image)


def test_parse_mbr_skips_empty_entries(tmp_path: Path) -> None:
    image = make_small_image(tmp_path, with_data_partition=False)

    table = parse_mbr(first_sector(image))

    assert table == read_partition_table(image)
    assert [part.number for part in table.partitions] == [1, 2]


@pytest.mark.parametrize(
    ("sector", "message"),
    [
        (b"\x00" * 100, "100 bytes given"),
        (b"\x00" * 512, "boot signature"),
        (b"\x00" * 0x1C2 + b"\xee" + b"\x00" * 59 + b"\x55\xaa", "GPT"),
    ],
)
def test_parse_mbr_rejects_what_is_not_an_mbr(sector: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_mbr(sector)


def test_data_partition_is_partition_3() -> None:
    table = PartitionTable("dos", DISK_ID, 512, EXPECTED_PARTITIONS)

    assert data_partition(table) == EXPECTED_PARTITIONS[2]


def test_data_partition_must_exist() -> None:
    table = PartitionTable("dos", DISK_ID, 512, EXPECTED_PARTITIONS[:2])

    with pytest.raises(BuildError, match="no partition 3"):
        data_partition(table)


def test_data_partition_must_be_the_last() -> None:
    after_data = Partition(number=4, start_bytes=BASE_SIZE, size_bytes=PART_SIZE, type="83")
    table = PartitionTable("dos", DISK_ID, 512, (*EXPECTED_PARTITIONS, after_data))

    with pytest.raises(BuildError, match="not the last"):
        data_partition(table)


def test_grow_image_file_keeps_it_sparse(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)
    allocated_before = image.stat().st_blocks

    grow_image_file(image, 1024 * MIB)

    assert image.stat().st_size == 1024 * MIB
    assert image.stat().st_blocks == allocated_before


def test_grow_image_file_to_its_size_changes_nothing(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)
    digest = region_digest(image, 0, BASE_SIZE)

    grow_image_file(image, BASE_SIZE)

    assert region_digest(image, 0, BASE_SIZE + 1) == digest


@pytest.mark.parametrize(
    ("size", "message"), [(BASE_SIZE - 512, "shrinking"), (BASE_SIZE + 1, "multiple")]
)
def test_grow_image_file_refuses(tmp_path: Path, size: int, message: str) -> None:
    image = make_small_image(tmp_path)

    with pytest.raises(BuildError, match=message):
        grow_image_file(image, size)
    assert image.stat().st_size == BASE_SIZE


def test_grow_data_partition_reaches_the_last_sector_and_keeps_the_rest(tmp_path: Path) -> None:
    require_tools("e2fsck", "dumpe2fs")
    image = make_small_image(tmp_path)
    before = read_partition_table(image)
    boot_root_digests = [
        region_digest(image, part.start_bytes, part.size_bytes) for part in before.partitions[:2]
    ]
    # disk id at 0x1B8, then the p1 and p2 entries: none of these bytes may change
    mbr_kept_before = first_sector(image)[0x1B8 : 0x1BE + 32]
    data_digest = region_digest(image, DATA_START, PART_SIZE)
    # an odd number of sectors: the end must not be rounded down to an alignment boundary
    new_size = 64 * MIB + 7 * 512
    grow_image_file(image, new_size)

    grown = grow_data_partition(image)

    after = read_partition_table(image)
    assert grown == after.partitions[2]
    assert grown.start_bytes == DATA_START
    assert grown.end_bytes == new_size
    assert after.disk_id == DISK_ID
    assert after.partitions[:2] == before.partitions[:2]
    assert parse_mbr(first_sector(image)) == after
    assert first_sector(image)[0x1B8 : 0x1BE + 32] == mbr_kept_before
    assert [
        region_digest(image, part.start_bytes, part.size_bytes) for part in after.partitions[:2]
    ] == boot_root_digests
    # only the entry grew: the data filesystem is intact and still its old size
    assert region_digest(image, DATA_START, PART_SIZE) == data_digest
    data_filesystem = Path(f"{image}?offset={DATA_START}")
    check_filesystem(data_filesystem, fix=False)
    assert filesystem_size(data_filesystem) == PART_SIZE


def test_grow_data_partition_twice_is_a_no_op(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)
    grow_image_file(image, 32 * MIB)
    first = grow_data_partition(image)
    digest = region_digest(image, 0, 32 * MIB)

    assert grow_data_partition(image) == first
    assert region_digest(image, 0, 32 * MIB) == digest


def test_grow_data_partition_needs_a_data_partition(tmp_path: Path) -> None:
    image = make_small_image(tmp_path, with_data_partition=False)
    grow_image_file(image, 32 * MIB)
    digest = region_digest(image, 0, 512)

    with pytest.raises(BuildError, match="no partition 3"):
        grow_data_partition(image)
    assert region_digest(image, 0, 512) == digest


def test_check_filesystem_without_fix_reports_damage(tmp_path: Path) -> None:
    require_tools("e2fsck")
    image = make_small_image(tmp_path)
    with image.open("r+b") as file:
        # the ext4 superblock starts 1024 bytes into the partition; garble its inode count
        file.seek(DATA_START + 1024)
        file.write(b"\xff\xff\xff\x7f")

    with pytest.raises(CommandError) as raised:
        check_filesystem(Path(f"{image}?offset={DATA_START}"), fix=False)
    assert raised.value.argv[:3] == ["e2fsck", "-f", "-n"]
    assert raised.value.returncode >= 4


def test_fat_write_read_round_trip_keeps_config_txt(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)
    payload = bytes(range(256)) * 64  # every byte value: content must pass through untouched

    write_fat_file(image, BOOT_START, "offspot.yaml", payload)

    assert read_fat_file(image, BOOT_START, "offspot.yaml") == payload
    assert read_fat_file(image, BOOT_START, "config.txt") == CONFIG_TXT
    assert list_fat_dir(image, BOOT_START) == ["config.txt", "offspot.yaml"]


def test_fat_write_replaces_an_existing_file(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)

    write_fat_file(image, BOOT_START, "/config.txt", b"short\n")

    assert read_fat_file(image, BOOT_START, "config.txt") == b"short\n"
    assert list_fat_dir(image, BOOT_START, "/") == ["config.txt"]


def test_fat_lists_subdirectories(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)
    run(["mmd", "-i", f"{image}@@{BOOT_START}", "::/overlays"], env={"MTOOLS_SKIP_CHECK": "1"})

    write_fat_file(image, BOOT_START, "overlays/offspot.dtbo", b"\x00dtbo")

    assert list_fat_dir(image, BOOT_START) == ["config.txt", "overlays/"]
    assert list_fat_dir(image, BOOT_START, "overlays") == ["offspot.dtbo"]
    assert read_fat_file(image, BOOT_START, "overlays/offspot.dtbo") == b"\x00dtbo"


def test_fat_read_of_a_missing_file_fails(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)

    with pytest.raises(CommandError, match="not found"):
        read_fat_file(image, BOOT_START, "missing.txt")


def test_fat_partition_does_not_leak_into_neighbours(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)
    root_digest = region_digest(image, ROOT_START, BASE_SIZE - ROOT_START)

    write_fat_file(image, BOOT_START, "big.bin", b"\xab" * (6 * MIB))

    assert region_digest(image, ROOT_START, BASE_SIZE - ROOT_START) == root_digest
    assert image.stat().st_size == BASE_SIZE


def test_fat_files_need_no_root(tmp_path: Path) -> None:
    image = make_small_image(tmp_path)
    if os.geteuid() != 0:
        write_fat_file(image, BOOT_START, "user.txt", b"unprivileged\n")
        assert read_fat_file(image, BOOT_START, "user.txt") == b"unprivileged\n"
        return
    # as root, prove it in a child that drops to nobody, on a copy that nobody may write
    shared = Path(tempfile.mkdtemp(prefix="image-creator-test-"))
    try:
        shared.chmod(0o777)
        user_image = shared / "base.img"
        shutil.copyfile(image, user_image)
        user_image.chmod(0o666)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child; must never return into pytest
            try:
                os.setgid(65534)
                os.setuid(65534)
                write_fat_file(user_image, BOOT_START, "user.txt", b"unprivileged\n")
                same = read_fat_file(user_image, BOOT_START, "user.txt") == b"unprivileged\n"
                os._exit(0 if same else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert read_fat_file(user_image, BOOT_START, "user.txt") == b"unprivileged\n"
    finally:
        shutil.rmtree(shared)

"""The config files a device reads: /data/conf/image.yaml and offspot.yaml on the boot partition."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from image_creator.steps.placement import destination, staged
from image_creator.system.fat import write_fat_file

IMAGE_CONFIG_PATH = PurePosixPath("conf/image.yaml")
OFFSPOT_CONFIG_NAME = "offspot.yaml"


def dump_yaml(document: Mapping[str, Any]) -> bytes:
    return yaml.safe_dump(
        dict(document), sort_keys=False, allow_unicode=True, default_flow_style=False
    ).encode("utf-8")


def write_image_config(root: Path, document: Mapping[str, Any]) -> None:
    """The config as read, at /data/conf/image.yaml."""
    target = destination(root, IMAGE_CONFIG_PATH)
    with staged(target) as staging:
        staging.write_bytes(dump_yaml(document))


def write_offspot_config(image: Path, boot_offset: int, offspot: Mapping[str, Any]) -> None:
    """The runtime config at the root of the FAT boot partition, written with mtools."""
    write_fat_file(image, boot_offset, OFFSPOT_CONFIG_NAME, dump_yaml(offspot))

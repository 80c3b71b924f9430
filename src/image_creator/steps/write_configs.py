"""The config files a device reads: the config copy on the data partition, offspot.yaml on the
boot partition.

The copy of the config goes to two places with the same bytes (one file, hard-linked):
``/data/image.yaml``, where Offspot's own programs look for it (offspot/demo tells an
ordering-service image by it), and ``/data/conf/image.yaml``, the reference spec's path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from image_creator.config.model import CONFIG_COPIES, DATA_ROOT
from image_creator.sink import Sink
from image_creator.system.fat import write_fat_file

OFFSPOT_CONFIG_NAME = "offspot.yaml"


def dump_yaml(document: Mapping[str, Any]) -> bytes:
    return yaml.safe_dump(
        dict(document), sort_keys=False, allow_unicode=True, default_flow_style=False
    ).encode("utf-8")


def write_image_config(sink: Sink, raw: bytes) -> None:
    """The config's bytes as read, at /data/image.yaml and (hard-linked) /data/conf/image.yaml."""
    first, *others = (path.relative_to(DATA_ROOT) for path in CONFIG_COPIES)
    with sink.new_file(first) as file:
        file.write(raw)
    for target in others:
        sink.hard_link(first, target)


def write_offspot_config(image: Path, boot_offset: int, offspot: Mapping[str, Any]) -> None:
    """The runtime config at the root of the FAT boot partition, written with mtools."""
    write_fat_file(image, boot_offset, OFFSPOT_CONFIG_NAME, dump_yaml(offspot))

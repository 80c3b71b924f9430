"""Command-line options as one frozen object."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from image_creator.config.model import DEFAULT_BASE_URL_TEMPLATE

DEFAULT_CONCURRENCY = 4


class Mode(StrEnum):
    SHOW_CACHE = "show-cache"  # list the cache and what its policy would evict; nothing else
    CHECK = "check"  # every check, nothing downloaded or written (--check, or --show-cache)
    BUILD = "build"


@dataclass(frozen=True)
class Options:
    config_src: str
    output: Path | None
    build_dir: Path | None = None
    cache_dir: Path | None = None
    show_cache: bool = False
    check: bool = False
    keep: bool = False
    overwrite: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    max_size: int | None = None
    report: Path | None = None
    debug: bool = False
    rootless: bool = False  # write the image without root, loop devices or mounts
    # where release numbers (base: 1.2.1) are fetched from: IMAGE_CREATOR_BASE_URL_TEMPLATE
    release_url_template: str = DEFAULT_BASE_URL_TEMPLATE

    @property
    def mode(self) -> Mode:
        if self.show_cache and not self.config_src:
            return Mode.SHOW_CACHE
        return Mode.CHECK if self.check or self.show_cache else Mode.BUILD

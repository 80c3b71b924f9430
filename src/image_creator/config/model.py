"""The config as typed, frozen objects. Built only by ``config.loader``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from image_creator.digests import ChecksumAlgo

# Where the data partition is mounted on the running device; every file goes below it.
DATA_ROOT = PurePosixPath("/data")
# What the build writes itself on the data partition: no file entry may land there.
IMAGES_DIR = DATA_ROOT / "images"  # the OCI images, as docker-load tars
CONFIG_COPIES = (DATA_ROOT / "image.yaml", DATA_ROOT / "conf" / "image.yaml")  # write_config
OCI_PLATFORM = "linux/arm64/v8"
DEFAULT_BASE_URL_TEMPLATE = "https://drive.offspot.it/base/offspot-base-arm64-{version}.img.xz"
BASE_URL_TEMPLATE_ENV = "IMAGE_CREATOR_BASE_URL_TEMPLATE"
# The largest config read: generated configs embed branding images (a few hundred KB).
CONFIG_LIMIT = 16 * 2**20


class Via(StrEnum):
    DIRECT = "direct"
    BASE64 = "base64"  # only with `content`: the text is base64 of the file's bytes
    TAR = "tar"
    GZTAR = "gztar"
    BZTAR = "bztar"
    XZTAR = "xztar"
    ZIP = "zip"

    @property
    def is_archive(self) -> bool:
        return self not in (Via.DIRECT, Via.BASE64)

    @property
    def tar_compression(self) -> str:
        """Compression suffix for tarfile's streaming mode ("" for plain tar)."""
        return {Via.TAR: "", Via.GZTAR: "gz", Via.BZTAR: "bz2", Via.XZTAR: "xz"}[self]


class ChecksumKind(StrEnum):
    DIGEST = "digest"
    URL = "url"


@dataclass(frozen=True)
class Checksum:
    algo: ChecksumAlgo
    value: str  # lowercase hex digest, or the URL to read it from (kind url)
    kind: ChecksumKind = ChecksumKind.DIGEST


@dataclass(frozen=True)
class BaseImage:
    url: str  # http(s):// or file:// (local paths are turned into file:// URLs)
    root_size: int | None = None
    checksum: Checksum | None = None
    version: str | None = None  # set when given as an official release number

    @property
    def is_xz(self) -> bool:
        return self.url.split("?", 1)[0].endswith(".xz")


@dataclass(frozen=True)
class Pull:
    """An OCI image pulled from the registry its reference names."""


@dataclass(frozen=True)
class Export:
    """An OCI image downloaded as an exported docker-load tar from ``url``."""

    url: str


@dataclass(frozen=True)
class OciImage:
    ident: str  # the image reference: ghcr.io/offspot/kiwix-serve:3.7.0
    origin: Pull | Export = field(default_factory=Pull)
    filesize: int | None = None
    fullsize: int | None = None


@dataclass(frozen=True)
class Download:
    """A file downloaded from ``url`` (http(s), or file:// for a local path)."""

    url: str


@dataclass(frozen=True)
class Inline:
    """A file whose bytes the config gives (``content``, which wins over a url)."""

    content: bytes


@dataclass(frozen=True)
class FileEntry:
    to: PurePosixPath  # absolute, normalised, below /data
    origin: Download | Inline
    via: Via = Via.DIRECT
    size: int | None = None  # expanded size for archives, else the file's size
    checksum: Checksum | None = None

    @property
    def source_text(self) -> str:
        """Where the bytes come from, for messages: the URL, or "inline content"."""
        return self.origin.url if isinstance(self.origin, Download) else "inline content"

    @property
    def relative_to_data(self) -> PurePosixPath:
        """Where the entry lands on the data partition (``/data/x`` is ``x`` there)."""
        return self.to.relative_to(DATA_ROOT)


@dataclass(frozen=True)
class Config:
    base: BaseImage
    output_size: int | None = None  # None means auto
    oci_images: tuple[OciImage, ...] = ()
    files: tuple[FileEntry, ...] = ()
    write_config: bool = False
    offspot: Mapping[str, Any] = field(default_factory=dict)
    # The config's bytes exactly as read (file or URL): the copy written with write_config.
    raw: bytes = field(default=b"", compare=False, repr=False)

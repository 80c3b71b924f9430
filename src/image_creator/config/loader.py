"""Strict YAML -> Config. Every problem is reported at once, each with its key path."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from docker_export import Image

from image_creator.config.document import describe, parse_yaml
from image_creator.config.files import read_files
from image_creator.config.model import (
    BASE_URL_TEMPLATE_ENV,
    CONFIG_LIMIT,
    DEFAULT_BASE_URL_TEMPLATE,
    BaseImage,
    Checksum,
    Config,
    Export,
    OciImage,
    Pull,
)
from image_creator.config.reader import REMOTE_SCHEMES, ConfigReader, read_checksum
from image_creator.errors import ConfigError, os_reason
from image_creator.localfile import read_regular
from image_creator.units import SECTOR_SIZE, round_up

logger = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    warnings: tuple[str, ...] = ()
    sha256: str = ""  # of the config text as read


def _base_url_for_version(reader: ConfigReader, version: str) -> str | None:
    template = reader.release_url_template
    try:
        url = template.format(version=version)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        reader.problem(
            "base",
            f"{BASE_URL_TEMPLATE_ENV}={template!r} is not a URL template with {{version}} "
            f"({type(exc).__name__}: {exc})",
        )
        return None
    return reader.source_url("base", url)


def _read_base(reader: ConfigReader, value: Any) -> BaseImage | None:
    if value is None:
        reader.problem("base", "required: a release version (like 1.2.1), a URL or a path")
        return None
    root_size: int | None = None
    checksum: Checksum | None = None
    path = "base"
    source: Any = value
    if isinstance(value, Mapping):
        reader.check_keys("base", value, ("source", "root_size", "rootfs_size", "checksum"))
        path = "base.source"
        source = value.get("source")
        if "root_size" in value and "rootfs_size" in value:
            reader.problem("base", "give root_size or its alias rootfs_size, not both")
        size_key = "root_size" if "root_size" in value else "rootfs_size"
        root_size = reader.optional_size(f"base.{size_key}", value.get(size_key))
        if value.get("checksum") is not None:
            checksum = read_checksum(reader, "base.checksum", value["checksum"])
    if isinstance(source, str) and VERSION_PATTERN.match(source.strip()):
        version = source.strip()
        release_url = _base_url_for_version(reader, version)
        if release_url is None:
            return None
        return BaseImage(url=release_url, root_size=root_size, checksum=checksum, version=version)
    if isinstance(source, int | float) and not isinstance(source, bool):
        reader.problem(path, f"version {source!r} must be a full release number like 1.2.1")
        return None
    url = reader.source_url(path, source)
    return None if url is None else BaseImage(url=url, root_size=root_size, checksum=checksum)


def _read_output_size(reader: ConfigReader, value: Any) -> int | None:
    if value is None:
        return None
    mapping = reader.mapping("output", value)
    if mapping is None:
        return None
    reader.check_keys("output", mapping, ("size",))
    size = mapping.get("size", "auto")
    if isinstance(size, str) and size.strip().lower() == "auto":
        return None
    parsed = reader.size("output.size", size)
    if parsed is not None and parsed % SECTOR_SIZE:
        rounded = round_up(parsed, SECTOR_SIZE)
        reader.warn(
            "output.size",
            f"{parsed} bytes is not a whole number of {SECTOR_SIZE}-byte sectors; "
            f"rounded up to {rounded}",
        )
        return rounded
    return parsed


def _read_oci_image(reader: ConfigReader, path: str, value: Any) -> OciImage | None:
    url: str | None = None
    filesize = fullsize = None
    if isinstance(value, Mapping):
        reader.check_keys(path, value, ("ident", "id", "url", "filesize", "fullsize"))
        key = "ident" if "ident" in value else "id"
        ident = reader.string(f"{path}.{key}", value.get(key))
        if value.get("url") is not None:
            url = reader.source_url(f"{path}.url", value["url"])
        filesize = reader.optional_size(f"{path}.filesize", value.get("filesize"))
        fullsize = reader.optional_size(f"{path}.fullsize", value.get("fullsize"))
        key_path = f"{path}.{key}"
    else:
        ident = reader.string(path, value)
        key_path = path
    if ident is None:
        return None
    try:
        Image.parse(ident)
    except ValueError as exc:
        reader.problem(key_path, f"not an image reference ({exc}): {ident!r}")
        return None
    origin = Pull() if url is None else Export(url)
    return OciImage(ident=ident, origin=origin, filesize=filesize, fullsize=fullsize)


def parse_config(
    document: Any,
    *,
    label: str,
    base_dir: Path,
    base_url: str | None = None,
    release_url_template: str = DEFAULT_BASE_URL_TEMPLATE,
) -> LoadedConfig:
    """A Config from a parsed YAML document, or a ConfigError listing every problem.

    Relative paths in it are relative to ``base_dir``, or to ``base_url`` when given; a
    release number (``base: 1.2.1``) becomes ``release_url_template`` with it.
    """
    reader = ConfigReader(
        label=label,
        base_dir=base_dir,
        base_url=base_url,
        release_url_template=release_url_template,
    )
    if not isinstance(document, Mapping):
        raise ConfigError([f"{label}: expected a mapping at the top, got {describe(document)}"])
    reader.check_keys(
        "", document, ("base", "output", "oci_images", "files", "write_config", "offspot")
    )
    base = _read_base(reader, document.get("base"))
    output_size = _read_output_size(reader, document.get("output"))

    oci_images: list[OciImage] = []
    seen_idents: dict[str, int] = {}
    for index, item in enumerate(reader.items("oci_images", document.get("oci_images"))):
        image = _read_oci_image(reader, f"oci_images[{index}]", item)
        if image is None:
            continue
        if image.ident in seen_idents:
            reader.problem(
                f"oci_images[{index}]",
                f"{image.ident} is already listed at oci_images[{seen_idents[image.ident]}]",
            )
            continue
        seen_idents[image.ident] = index
        oci_images.append(image)

    write_config = reader.boolean("write_config", document.get("write_config"), False)
    files = read_files(reader, document.get("files"), write_config=write_config)
    offspot = document.get("offspot") or {}
    if not isinstance(offspot, Mapping):
        reader.problem("offspot", f"expected a mapping, got {describe(offspot)}")

    if reader.problems or base is None:
        raise ConfigError(reader.problems)
    config = Config(
        base=base,
        output_size=output_size,
        oci_images=tuple(oci_images),
        files=tuple(files),
        write_config=write_config,
        offspot=dict(offspot),
    )
    return LoadedConfig(config=config, warnings=tuple(reader.warnings))


def load_config(
    source: str,
    *,
    read_url: Callable[[str], bytes],
    release_url_template: str = DEFAULT_BASE_URL_TEMPLATE,
) -> LoadedConfig:
    """Read CONFIG_SRC (a path or an http(s) URL) and parse it; its bytes are kept as read."""
    base_url = None
    if urlsplit(source).scheme.lower() in REMOTE_SCHEMES:
        raw = read_url(source)
        base_dir, base_url = Path.cwd(), source
    else:
        path = Path(source).expanduser()
        try:
            raw = read_regular(path, CONFIG_LIMIT)
        except (OSError, ValueError) as exc:
            raise ConfigError([f"{source}: cannot read config: {os_reason(exc)}"]) from exc
        base_dir = path.resolve().parent
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: cannot read config: not UTF-8 text ({exc.reason})"]) from exc
    loaded = parse_config(
        parse_yaml(text, source),
        label=source,
        base_dir=base_dir,
        base_url=base_url,
        release_url_template=release_url_template,
    )
    return replace(
        loaded,
        config=replace(loaded.config, raw=raw),
        sha256=hashlib.sha256(raw).hexdigest(),
    )

"""Strict YAML -> Config. Every problem is reported at once, each with its key path."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

import yaml
from docker_export import Image

from image_creator.config.document import DocumentReader, describe
from image_creator.config.model import (
    BASE_URL_TEMPLATE_ENV,
    CONFIG_COPIES,
    CONFIG_LIMIT,
    DATA_ROOT,
    DEFAULT_BASE_URL_TEMPLATE,
    IMAGES_DIR,
    BaseImage,
    Checksum,
    ChecksumKind,
    Config,
    FileEntry,
    OciImage,
    Via,
)
from image_creator.config.units import NAME_MAX, SECTOR_SIZE, round_up
from image_creator.digests import ChecksumAlgo
from image_creator.errors import ConfigError, one_line, os_reason
from image_creator.localfile import read_regular

logger = logging.getLogger(__name__)

REMOTE_SCHEMES = ("http", "https")
URL_SCHEMES = (*REMOTE_SCHEMES, "file")
VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    warnings: tuple[str, ...] = ()
    sha256: str = ""  # of the config text as read


MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping."""


def _construct_mapping_no_duplicates(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    """A mapping whose own keys are distinct and hashable. Merge keys (``<<: *defaults``, as
    compose files use them) are standard YAML: what they bring may be overridden."""
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=deep)
        problem = None
        try:
            if key in seen:
                problem = f"duplicate key {key!r}"
        except TypeError:
            problem = f"a {type(key).__name__} cannot be a key"
        if problem is not None:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, problem, key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping_no_duplicates,
)


def parse_yaml(text: str, label: str) -> Any:
    """The YAML document; a syntax error or duplicate key becomes a one-line ConfigError."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise ConfigError([f"{where}: invalid YAML: {exc.problem}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: invalid YAML: {one_line(str(exc))}"]) from exc
    except RecursionError as exc:
        raise ConfigError([f"{label}: invalid YAML: nested too deeply"]) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors: an int of over 4300 digits, a bad !!timestamp, !!binary...
        raise ConfigError([f"{label}: invalid YAML: {one_line(str(exc))}"]) from exc


@dataclass
class _Reader(DocumentReader):
    """Walks the config; unknown keys are warnings (the config may come from newer tools)."""

    base_dir: Path = field(default_factory=Path.cwd)
    base_url: str | None = None  # a config read from a URL: relative sources are relative URLs
    release_url_template: str = DEFAULT_BASE_URL_TEMPLATE

    def string(self, path: str, value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(path, f"expected a non-empty string, got {describe(value)}")
            return None
        problem = text_problem(value)
        if problem is not None:
            self.problem(path, problem)
            return None
        return value.strip()

    def optional_size(self, path: str, value: Any) -> int | None:
        """A size, or None when absent. Generators write a negative number for "unknown"
        (offspot-config: -1, or -2 when its HEAD request failed): that is unknown too."""
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            self.warn(path, f"{value} means unknown: the size is taken from the source")
            return None
        return None if value is None else self.size(path, value)

    def source_url(self, path: str, value: Any) -> str | None:
        """An http(s)/file URL; a local path (relative to the config's folder) becomes file://."""
        text = self.string(path, value)
        if text is None:
            return None
        try:
            parts = urlsplit(text)
        except ValueError as exc:
            self.problem(path, f"not a valid URL ({exc}): {text}")
            return None
        scheme = parts.scheme.lower()
        if scheme in URL_SCHEMES:
            if scheme in REMOTE_SCHEMES and not parts.netloc:
                self.problem(path, f"URL without a host: {text}")
                return None
            return text
        if scheme and len(scheme) > 1:  # one letter would be a Windows drive, not a scheme
            self.problem(path, f"unsupported URL scheme {scheme!r}: {text} (use http, https, file)")
            return None
        if self.base_url is not None and not text.startswith(("/", "~")):
            return urljoin(self.base_url, text)
        try:
            return (self.base_dir / Path(text).expanduser()).resolve().as_uri()
        except (OSError, RuntimeError, ValueError) as exc:
            self.problem(path, f"not a usable path ({os_reason(exc)}): {text}")
            return None


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be used as a name, URL or content (None when it can)."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    return None


def _base_url_for_version(reader: _Reader, version: str) -> str | None:
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


def _read_checksum(reader: _Reader, path: str, value: Any) -> Checksum | None:
    mapping = reader.mapping(path, value)
    if mapping is None:
        return None
    reader.check_keys(path, mapping, ("algo", "value", "kind"))
    algo = reader.choice(f"{path}.algo", mapping.get("algo"), ChecksumAlgo)
    kind = reader.choice(f"{path}.kind", mapping.get("kind", "digest"), ChecksumKind)
    text = reader.string(f"{path}.value", mapping.get("value"))
    if algo is None or kind is None or text is None:
        return None
    if kind is ChecksumKind.URL:
        url = reader.source_url(f"{path}.value", text)
        return None if url is None else Checksum(algo=algo, value=url, kind=kind)
    digest = text.lower()
    if len(digest) != algo.hex_length or not re.fullmatch(r"[0-9a-f]+", digest):
        reader.problem(
            f"{path}.value",
            f"not a {algo.value} hex digest ({algo.hex_length} hex digits): {text!r}",
        )
        return None
    return Checksum(algo=algo, value=digest, kind=kind)


def _read_base(reader: _Reader, value: Any) -> BaseImage | None:
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
            checksum = _read_checksum(reader, "base.checksum", value["checksum"])
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


def _read_output_size(reader: _Reader, value: Any) -> int | None:
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


def _read_oci_image(reader: _Reader, path: str, value: Any) -> OciImage | None:
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
    return OciImage(ident=ident, url=url, filesize=filesize, fullsize=fullsize)


def _destination(reader: _Reader, path: str, value: Any) -> PurePosixPath | None:
    text = reader.string(path, value)
    if text is None:
        return None
    if not text.startswith("/"):
        reader.problem(path, f"must be an absolute path below {DATA_ROOT}: {text!r}")
        return None
    if ".." in PurePosixPath(text).parts:
        reader.problem(path, f"'..' is not allowed: {text!r}")
        return None
    normal = PurePosixPath(posixpath.normpath(text))
    if normal == DATA_ROOT or DATA_ROOT not in normal.parents:
        reader.problem(path, f"must be inside {DATA_ROOT}: {text!r}")
        return None
    too_long = [part for part in normal.parts if len(part.encode()) > NAME_MAX]
    if too_long:
        reader.problem(path, f"a name may have at most {NAME_MAX} bytes: {too_long[0][:40]}...")
        return None
    return normal


def _read_file(reader: _Reader, path: str, value: Any) -> FileEntry | None:
    mapping = reader.mapping(path, value)
    if mapping is None:
        return None
    reader.check_keys(path, mapping, ("to", "url", "content", "via", "size", "checksum"))
    problems_before = len(reader.problems)
    to = _destination(reader, f"{path}.to", mapping.get("to"))
    via = reader.choice(f"{path}.via", mapping.get("via") or "direct", Via)
    size = reader.optional_size(f"{path}.size", mapping.get("size"))
    checksum = None
    if mapping.get("checksum") is not None:
        checksum = _read_checksum(reader, f"{path}.checksum", mapping["checksum"])
    content: bytes | None = None
    url: str | None = None
    raw_content = mapping.get("content")
    if raw_content is not None:
        if not isinstance(raw_content, str):
            reader.problem(f"{path}.content", f"expected text, got {describe(raw_content)}")
        elif via is Via.BASE64:
            try:
                content = base64.b64decode(raw_content, validate=False)
            except (binascii.Error, ValueError) as exc:
                reader.problem(f"{path}.content", f"invalid base64: {exc}")
        elif via is not None and via.is_archive:
            reader.problem(f"{path}.via", f"{via.value!r} needs a url; content is written as is")
        else:
            try:
                content = raw_content.encode("utf-8")
            except UnicodeEncodeError:
                reader.problem(f"{path}.content", "is not valid Unicode text (a lone surrogate)")
        if mapping.get("url") is not None:
            reader.warn(f"{path}.url", "ignored: content is given and wins over url")
    elif mapping.get("url") is not None:
        url = reader.source_url(f"{path}.url", mapping["url"])
        if via is Via.BASE64:
            reader.problem(f"{path}.via", "'base64' applies to content, not to a url")
    else:
        reader.problem(path, "needs a url or a content")
    if len(reader.problems) > problems_before or to is None or via is None:
        return None
    return FileEntry(to=to, via=via, url=url, content=content, size=size, checksum=checksum)


def _read_files(reader: _Reader, value: Any, *, write_config: bool) -> list[FileEntry]:
    """The file entries; two may not share a destination, an entry may sit inside another's
    destination only when that one is an archive (extracted into a folder), and none may land
    where the build writes itself (the OCI images, the config copies)."""
    by_destination: dict[PurePosixPath, tuple[int, FileEntry]] = {}
    for index, item in enumerate(reader.items("files", value)):
        entry = _read_file(reader, f"files[{index}]", item)
        if entry is None:
            continue
        reserved = _reserved_by_the_build(entry, write_config=write_config)
        if reserved:
            reader.problem(f"files[{index}].to", f"{entry.to}: {reserved}")
            continue
        if entry.to in by_destination:
            reader.problem(
                f"files[{index}].to",
                f"{entry.to} is already the destination of files[{by_destination[entry.to][0]}]",
            )
            continue
        by_destination[entry.to] = (index, entry)
    for index, entry in by_destination.values():
        for folder in entry.to.parents:
            outer = by_destination.get(folder)
            if outer is not None and not outer[1].via.is_archive:
                reader.problem(
                    f"files[{index}].to",
                    f"{entry.to} needs {folder} to be a folder, "
                    f"but files[{outer[0]}] writes a file there",
                )
                break
    return [entry for _, entry in by_destination.values()]


def _reserved_by_the_build(entry: FileEntry, *, write_config: bool) -> str | None:
    """Why ``entry`` may not be written where it says, if the build itself writes there."""
    if entry.to == IMAGES_DIR or IMAGES_DIR in entry.to.parents:
        return f"{IMAGES_DIR} holds the OCI images the build places; choose another path"
    if write_config:
        if entry.to in CONFIG_COPIES:
            return "write_config puts the config's copy there; choose another path"
        if not entry.via.is_archive and any(entry.to in path.parents for path in CONFIG_COPIES):
            return "write_config needs this folder for the config's copy; choose another path"
    return None


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
    reader = _Reader(
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
    files = _read_files(reader, document.get("files"), write_config=write_config)
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

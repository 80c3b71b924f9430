"""The config's ``files``: each entry read and checked, then the entries checked together
(distinct destinations, nesting only inside archives, nothing where the build writes)."""

from __future__ import annotations

import base64
import binascii
import posixpath
from pathlib import PurePosixPath
from typing import Any

from image_creator.config.document import describe
from image_creator.config.model import (
    CONFIG_COPIES,
    DATA_ROOT,
    IMAGES_DIR,
    Download,
    FileEntry,
    Inline,
    Via,
)
from image_creator.config.reader import ConfigReader, read_checksum
from image_creator.units import NAME_MAX


def _destination(reader: ConfigReader, path: str, value: Any) -> PurePosixPath | None:
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


def _read_file(reader: ConfigReader, path: str, value: Any) -> FileEntry | None:
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
        checksum = read_checksum(reader, f"{path}.checksum", mapping["checksum"])
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
    origin: Download | Inline
    if content is not None:
        origin = Inline(content)
    elif url is not None:
        origin = Download(url)
    else:
        return None
    return FileEntry(to=to, origin=origin, via=via, size=size, checksum=checksum)


def read_files(reader: ConfigReader, value: Any, *, write_config: bool) -> list[FileEntry]:
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

"""The config's reader: the shared strict walk (config/document.py) plus the config's own
value types (non-empty strings, sizes that may be "unknown", source URLs, checksums)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from image_creator.config.document import DocumentReader, describe
from image_creator.config.model import DEFAULT_BASE_URL_TEMPLATE, Checksum, ChecksumKind
from image_creator.digests import ChecksumAlgo
from image_creator.errors import os_reason

REMOTE_SCHEMES = ("http", "https")
URL_SCHEMES = (*REMOTE_SCHEMES, "file")


@dataclass
class ConfigReader(DocumentReader):
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


def read_checksum(reader: ConfigReader, path: str, value: Any) -> Checksum | None:
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

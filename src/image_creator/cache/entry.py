"""A cache entry's metadata, kept in a JSON file beside its content (works on any filesystem).

The metadata is read as untrusted input: anyone who can write the cache folder can write it.
It is parsed strictly (exact types, no coercion) and the store checks that it describes the
entry it sits beside; nothing in it ever names a path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

_T = TypeVar("_T")


class EntryKind(StrEnum):
    FILES = "files"  # remote files and base images, as downloaded (before extraction)
    OCI_IMAGES = "oci_images"  # exported docker-load tars, keyed by reference and platform


@dataclass(frozen=True)
class CacheEntry:
    """One complete cache entry (not a config's file entry: that is config.model.FileEntry)."""

    kind: EntryKind
    source: str  # the URL, or the image reference (what policy patterns match)
    key: str  # unique key: the URL, or "reference|platform"
    # the entry's id (a hash of kind and key; "ident" in the JSON): its names in the folder
    entry_id: str
    size: int
    added: datetime
    last_used: datetime
    use_count: int
    version: str  # remote version marker: ETag, size+Last-Modified, or manifest digest
    checked: datetime  # last time the version marker was compared with the remote
    xxh3: str  # xxh3-128 of the content, checked on every use (against damage, not tampering)
    # config checksums verified when the entry was written, for people: never read back as
    # proof, since whoever writes the metadata can write these too
    digests: dict[str, str] = field(default_factory=dict)

    def used(self, now: datetime) -> CacheEntry:
        return replace(self, last_used=now, use_count=self.use_count + 1)

    def to_json(self) -> str:
        document: dict[str, Any] = asdict(self)
        for name in ("added", "last_used", "checked"):
            document[name] = getattr(self, name).isoformat()
        document["kind"] = self.kind.value
        document["ident"] = document.pop("entry_id")  # the name written by earlier versions
        return json.dumps(document, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CacheEntry:
        """Raises ValueError naming the first field that is missing or of the wrong type."""
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        digests = document.get("digests", {})
        if not isinstance(digests, dict) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in digests.items()
        ):
            raise ValueError("digests: not a mapping of strings")
        try:
            kind = EntryKind(_field(document, "kind", str))
        except ValueError as exc:
            raise ValueError(f"kind: {exc}") from exc
        size = _field(document, "size", int)
        use_count = _field(document, "use_count", int)
        if size < 0 or use_count < 0:
            raise ValueError("size and use_count must not be negative")
        return cls(
            kind=kind,
            source=_field(document, "source", str),
            key=_field(document, "key", str),
            entry_id=_field(document, "ident", str),
            size=size,
            added=_datetime(document, "added"),
            last_used=_datetime(document, "last_used"),
            use_count=use_count,
            version=_field(document, "version", str),
            checked=_datetime(document, "checked"),
            xxh3=_field(document, "xxh3", str),
            digests=dict(digests),
        )


def _field(document: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = document.get(name)
    # bool is an int to Python, never to this format
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{name}: missing or not a {kind.__name__}")
    return value


def _datetime(document: dict[str, Any], name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(_field(document, name, str))
    except ValueError as exc:
        raise ValueError(f"{name}: not a date ({exc})") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

"""A cache entry's metadata, kept in a JSON file beside its content (works on any filesystem)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class EntryKind(StrEnum):
    FILES = "files"  # remote files and base images, as downloaded (before extraction)
    OCI_IMAGES = "oci_images"  # exported docker-load tars, keyed by reference and platform


@dataclass(frozen=True)
class Entry:
    """One complete, verified cache entry."""

    kind: EntryKind
    source: str  # the URL, or the image reference (what policy patterns match)
    key: str  # unique key: the URL, or "reference|platform"
    ident: str  # the entry's id: its file names in the cache
    size: int
    added: datetime
    last_used: datetime
    use_count: int
    version: str  # remote version marker: ETag, size+Last-Modified, or manifest digest
    checked: datetime  # last time the version marker was compared with the remote
    xxh3: str  # xxh3-128 of the content, checked on every use
    digests: dict[str, str] = field(default_factory=dict)  # config algo -> hex, when verified

    def used(self, now: datetime) -> Entry:
        return replace(self, last_used=now, use_count=self.use_count + 1)

    def to_json(self) -> str:
        document: dict[str, Any] = asdict(self)
        for name in ("added", "last_used", "checked"):
            document[name] = getattr(self, name).isoformat()
        document["kind"] = self.kind.value
        return json.dumps(document, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Entry:
        document = json.loads(text)
        return cls(
            kind=EntryKind(document["kind"]),
            source=str(document["source"]),
            key=str(document["key"]),
            ident=str(document["ident"]),
            size=int(document["size"]),
            added=_datetime(document["added"]),
            last_used=_datetime(document["last_used"]),
            use_count=int(document["use_count"]),
            version=str(document["version"]),
            checked=_datetime(document["checked"]),
            xxh3=str(document["xxh3"]),
            digests={str(k): str(v) for k, v in dict(document.get("digests", {})).items()},
        )


def _datetime(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

"""The machine-readable record of a build or a check (``--report FILE``), and step timings.

The document's shape is fixed by ``schemas/report.schema.json`` (shipped in the package).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_creator.__about__ import __version__
from image_creator.config.model import OCI_PLATFORM
from image_creator.steps.base_image import FetchedBase
from image_creator.steps.files import PlacedFile
from image_creator.steps.images import PlacedImage
from image_creator.steps.sizes import SizePlan
from image_creator.steps.sources import Inventory
from image_creator.ui.base import Reporter

REPORT_FORMAT = "image-creator-report/1"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "report.schema.json"


@dataclass
class Timeline:
    """Steps as they run: their durations, and the one that was running when a failure hit."""

    reporter: Reporter
    steps: list[tuple[str, float]] = field(default_factory=list)
    current: str | None = None

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.current = title
        started = time.monotonic()
        with self.reporter.step(title):
            yield
        self.steps.append((title, time.monotonic() - started))
        self.current = None


@dataclass
class Report:
    """Filled in as the run goes; written whatever the outcome."""

    mode: str
    config_source: str
    config_sha256: str | None = None
    inventory: Inventory | None = None
    sizes: SizePlan | None = None
    base: FetchedBase | None = None
    images: list[PlacedImage] | None = None
    files: list[PlacedFile] | None = None
    output: Path | None = None
    output_sha256: str | None = None
    error: dict[str, Any] | None = None

    def document(self, timeline: Timeline) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "tool": {"name": "image-creator", "version": __version__},
            "mode": self.mode,
            "result": "failure" if self.error else "success",
            "error": self.error,
            "config": {"source": self.config_source, "sha256": self.config_sha256},
            "base": self._base(),
            "oci_images": self._images(),
            "files": self._files(),
            "sizes": self._sizes(),
            "output": self._output(),
            "steps": [
                {"name": name, "seconds": round(seconds, 3)} for name, seconds in timeline.steps
            ],
        }

    def _base(self) -> dict[str, Any] | None:
        if self.inventory is None:
            return None
        base = self.inventory.base
        return {
            "source": base.image.url,
            "download_size": base.download_size,
            "image_size": self.base.image_size if self.base else None,
            "checksum": _checksum(base.checksum is not None, self.base is not None),
            "from_cache": self.base.from_cache if self.base else None,
        }

    def _images(self) -> list[dict[str, Any]]:
        if self.inventory is None:
            return []
        placed = self.images or []
        documents = []
        for index, source in enumerate(self.inventory.images):
            done = placed[index] if index < len(placed) else None
            documents.append(
                {
                    "ident": source.image.ident,
                    "platform": OCI_PLATFORM,
                    "source": source.image.url or "registry",
                    "manifest_digest": source.manifest_digest,
                    "planned_filesize": source.filesize,
                    "planned_fullsize": source.fullsize,
                    "tar": done.tar_name if done else None,
                    "size": done.size if done else None,
                    "architecture": done.architecture if done else None,
                    "from_cache": done.from_cache if done else None,
                }
            )
        return documents

    def _files(self) -> list[dict[str, Any]]:
        if self.inventory is None:
            return []
        placed = self.files or []
        documents = []
        for index, source in enumerate(self.inventory.files):
            entry = source.entry
            done = placed[index] if index < len(placed) else None
            documents.append(
                {
                    "source": entry.url if entry.content is None else None,
                    "to": str(entry.to),
                    "via": entry.via.value,
                    "download_size": source.download_size,
                    "planned_size": source.expanded_size,
                    "size_from": source.size_from.value,
                    "archive_size": source.archive_size,
                    "bytes_written": done.bytes_written if done else None,
                    "junk_skipped": done.junk_skipped if done else None,
                    "checksum": _checksum(entry.checksum is not None, done is not None),
                    "from_cache": done.from_cache if done else None,
                }
            )
        return documents

    def _sizes(self) -> dict[str, Any] | None:
        if self.sizes is None:
            return None
        return {
            "output": self.sizes.output,
            "minimum": self.sizes.minimum,
            "exact": self.sizes.exact,
            "content": self.sizes.content,
            "data_blocks": self.sizes.data_blocks,
            "inodes": self.sizes.inodes,
            "before_data": self.sizes.before_data,
            "existing_data": self.sizes.existing_data,
            "offspot_config_minimum": self.sizes.offspot_config_minimum,
        }

    def _output(self) -> dict[str, Any] | None:
        if self.output is None:
            return None
        return {
            "path": str(self.output),
            "size": self.output.stat().st_size if self.output.exists() else None,
            "sha256": self.output_sha256,
        }

    def write(self, path: Path, timeline: Timeline) -> None:
        """Atomically: a reader never sees half a report."""
        text = json.dumps(self.document(timeline), indent=2) + "\n"
        path = path.absolute()
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
            Path(name).replace(path)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise


def _checksum(declared: bool, done: bool) -> str:
    """``verified``, ``none`` (no checksum given) or ``pending`` (not reached)."""
    if not declared:
        return "none"
    return "verified" if done else "pending"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()

"""The machine-readable record of a build or a check (``--report FILE``).

The document's shape is fixed by ``schemas/report.schema.json`` (shipped in the package).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_creator.__about__ import __version__
from image_creator.config.model import OCI_PLATFORM, Download, Export, Pull
from image_creator.errors import ImageCreatorError, exit_code_for
from image_creator.fetch.segmented import Transfer
from image_creator.localfile import write_atomically
from image_creator.options import Mode, Options
from image_creator.plan import Built, Plan, SizePlan
from image_creator.timeline import Timeline

REPORT_FORMAT = "image-creator-report/1"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "report.schema.json"


@dataclass
class Outcome:
    """What the record of a run is made of, as far as the run got."""

    config_sha256: str | None = None
    plan: Plan | None = None
    built: Built = field(default_factory=Built)
    error: dict[str, Any] | None = None


def error_record(error: BaseException, step: str | None) -> dict[str, Any]:
    lines = error.lines() if isinstance(error, ImageCreatorError) else [str(error)]
    return {"message": "; ".join(lines), "step": step, "exit_code": int(exit_code_for(error))}


def report_document(options: Options, outcome: Outcome, timeline: Timeline) -> dict[str, Any]:
    plan, built = outcome.plan, outcome.built
    sizes = built.sizes or (plan.sizes if plan else None)
    return {
        "format": REPORT_FORMAT,
        "tool": {"name": "image-creator", "version": __version__},
        "mode": "build" if options.mode is Mode.BUILD else "check",
        "result": "failure" if outcome.error else "success",
        "error": outcome.error,
        "config": {"source": options.config_src, "sha256": outcome.config_sha256},
        "base": _base(plan, built),
        "oci_images": _images(plan, built),
        "files": _files(plan, built),
        "sizes": _sizes(sizes),
        "output": _output(built),
        "backend": _backend(plan),
        "steps": [{"name": name, "seconds": round(seconds, 3)} for name, seconds in timeline.steps],
    }


def _base(plan: Plan | None, built: Built) -> dict[str, Any] | None:
    if plan is None:
        return None
    base, done = plan.inventory.base, built.base
    return {
        "source": base.image.url,
        "download_size": base.download_size,
        "image_size": done.image_size if done else None,
        "checksum": _checksum(base.checksum is not None, done is not None),
        "from_cache": done.from_cache if done else None,
    }


def _images(plan: Plan | None, built: Built) -> list[dict[str, Any]]:
    if plan is None:
        return []
    documents = []
    for index, source in enumerate(plan.inventory.images):
        done = built.images[index] if index < len(built.images) else None
        documents.append(
            {
                "ident": source.image.ident,
                "platform": OCI_PLATFORM,
                "source": _image_source(source.image.origin),
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


def _files(plan: Plan | None, built: Built) -> list[dict[str, Any]]:
    if plan is None:
        return []
    documents = []
    for index, source in enumerate(plan.inventory.files):
        entry = source.entry
        done = built.files[index] if index < len(built.files) else None
        documents.append(
            {
                "source": entry.origin.url if isinstance(entry.origin, Download) else None,
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
                **_how_it_came(done.transfer if done else None),
            }
        )
    return documents


def _how_it_came(transfer: Transfer | None) -> dict[str, Any]:
    """How a plain file came: connections at most at once (0 from the cache), and the
    bytes each URL (the source's, or a mirror's) sent; null for archives and content."""
    if transfer is None:
        return {"connections": None, "mirrors": None}
    return {
        "connections": transfer.connections,
        "mirrors": [{"url": url, "bytes": count} for url, count in transfer.bytes_from.items()],
    }


def _sizes(sizes: SizePlan | None) -> dict[str, Any] | None:
    if sizes is None:
        return None
    return {
        "output": sizes.output,
        "minimum": sizes.minimum,
        "exact": sizes.exact,
        "content": sizes.content,
        "data_blocks": sizes.data_blocks,
        "inodes": sizes.inodes,
        "before_data": sizes.before_data,
        "existing_data": sizes.existing_data,
        "offspot_config_minimum": sizes.offspot_config_minimum,
    }


def _backend(plan: Plan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {"name": plan.backend.value, "reason": plan.backend_reason}


def _output(built: Built) -> dict[str, Any] | None:
    if built.output is None:
        return None
    return {
        "path": str(built.output),
        "size": built.output.stat().st_size if built.output.exists() else None,
        "sha256": built.output_sha256,
    }


def write_report(path: Path, document: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a report."""
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def _checksum(declared: bool, done: bool) -> str:
    """``verified``, ``none`` (no checksum given) or ``pending`` (not reached)."""
    if not declared:
        return "none"
    return "verified" if done else "pending"


def _image_source(origin: Pull | Export) -> str:
    return origin.url if isinstance(origin, Export) else "registry"

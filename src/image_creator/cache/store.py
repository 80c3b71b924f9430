"""The download cache on disk: complete, verified entries only, safe for concurrent builds.

Layout of CACHE_DIR:
  policy.yaml             the policy (written with the defaults when absent)
  entries/ID              an entry's content, exactly as downloaded
  entries/ID.json         its metadata (an entry exists once this file does)
  tmp/                    content being written; never read as an entry
  locks/ID.lock           one lock file per entry (flock), kept forever (they are tiny)
  .lock                   taken exclusively while evicting

Concurrency, between threads and between processes: a build reading an entry holds its lock
shared; one writing, refreshing or evicting it holds it exclusively. So an entry is never read
while written or removed, and a second build that needs a source another build is
downloading waits for it and then finds it in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import xxhash

from image_creator.cache.entry import Entry, EntryKind
from image_creator.cache.eviction import Eviction, Incoming, plan_evictions
from image_creator.cache.policy import Policy, ResolvedRule

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def entry_id(kind: EntryKind, key: str) -> str:
    return hashlib.sha256(f"{kind.value}\0{key}".encode()).hexdigest()[:32]


def xxh3_file(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return str(digest.hexdigest())


class CacheWriter:
    """Receives an entry's content as it is downloaded; hashes it on the way."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._xxh3 = xxhash.xxh3_128()
        self.size = 0
        self.complete = False  # set once the whole source went through
        self.digests: dict[str, str] = {}  # config checksums verified on this content

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._xxh3.update(data)
        self.size += len(data)
        return len(data)

    @property
    def xxh3(self) -> str:
        return str(self._xxh3.hexdigest())


@dataclass
class Slot:
    """What the cache offers for one source: a verified entry to use, a writer to fill, or
    neither (not cacheable)."""

    entry: Entry | None = None
    path: Path | None = None  # content of ``entry``
    writer: CacheWriter | None = None
    version: str = ""


class CacheStore:
    def __init__(
        self, root: Path, policy: Policy, *, clock: Clock = utc_now, read_only: bool = False
    ) -> None:
        """``read_only``: for looking only (--check, --show-cache): creates nothing."""
        self.root = root
        self.policy = policy
        self.clock = clock
        self.entries_dir = root / "entries"
        self.tmp_dir = root / "tmp"
        self.locks_dir = root / "locks"
        if not read_only:
            for folder in (self.entries_dir, self.tmp_dir, self.locks_dir):
                folder.mkdir(parents=True, exist_ok=True)

    # reading ------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every complete entry (metadata readable and content present)."""
        found = []
        for meta in sorted(self.entries_dir.glob("*.json")):
            entry = self._read_meta(meta)
            if entry is not None and (self.entries_dir / entry.ident).is_file():
                found.append(entry)
        return found

    def _read_meta(self, meta: Path) -> Entry | None:
        try:
            return Entry.from_json(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("cache: unreadable metadata %s (%s): ignored", meta, exc)
            return None

    def lookup(self, kind: EntryKind, key: str) -> Entry | None:
        ident = entry_id(kind, key)
        entry = self._read_meta(self.entries_dir / f"{ident}.json")
        if entry is None or not (self.entries_dir / ident).is_file():
            return None
        return entry

    def peek(self, kind: EntryKind, source: str, key: str, *, version: str) -> Path | None:
        """The content of a current entry, for a quick look (no lock, no verification)."""
        entry = self.lookup(kind, key)
        if entry is None or not self.is_current(entry, self.rule_for(kind, source), version):
            return None
        return self.entries_dir / entry.ident

    def is_current(self, entry: Entry, rule: ResolvedRule, version: str) -> bool:
        """Usable without downloading: within check_after, or the remote has not changed."""
        within = rule.check_after is not None and self.clock() - entry.checked < rule.check_after
        return within or not version or version == entry.version

    def rule_for(self, kind: EntryKind, source: str) -> ResolvedRule:
        return self.policy.rule_for(kind, source)

    # locking ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, ident: str, mode: int) -> Iterator[int]:
        handle = os.open(self.locks_dir / f"{ident}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, mode)
            yield handle
        finally:
            os.close(handle)  # closing releases the lock

    # using and filling -------------------------------------------------------------------

    @contextlib.contextmanager
    def slot(
        self, kind: EntryKind, source: str, key: str, *, version: str, size: int | None = None
    ) -> Iterator[Slot]:
        """Under the entry's lock: a fresh, verified entry, or a writer for a new one.

        ``version`` is the remote's current version marker, or "" when it is not known (then
        an entry is used as long as it verifies). The new entry is committed when the block
        ends without an error and the writer was marked complete; otherwise it is dropped.
        """
        rule = self.rule_for(kind, source)
        too_big = size is not None and rule.max_size is not None and size > rule.max_size
        if not rule.cacheable or too_big:
            yield Slot(version=version)
            return
        ident = entry_id(kind, key)
        with self._locked(ident, fcntl.LOCK_SH) as handle:
            entry = self._usable(kind, key, rule, version)
            if entry is None:
                # Exclusive to write; another build may have filled it while we waited.
                fcntl.flock(handle, fcntl.LOCK_EX)
                entry = self._usable(kind, key, rule, version)
                if entry is None:
                    with self._writing(kind, source, key, version) as slot:
                        yield slot
                    return
                fcntl.flock(handle, fcntl.LOCK_SH)
            entry = self._touch(entry, version)
            yield Slot(entry=entry, path=self.entries_dir / entry.ident, version=version)

    def _usable(self, kind: EntryKind, key: str, rule: ResolvedRule, version: str) -> Entry | None:
        """The entry if it is intact and not outdated; a bad one is removed (lock held)."""
        entry = self.lookup(kind, key)
        if entry is None:
            return None
        content = self.entries_dir / entry.ident
        if content.stat().st_size != entry.size or xxh3_file(content) != entry.xxh3:
            logger.warning("cache: %s is corrupt: evicted", entry.source)
            self._remove(entry)
            return None
        if not self.is_current(entry, rule, version):
            logger.info("cache: %s changed at its source: evicted", entry.source)
            self._remove(entry)
            return None
        return entry

    def _touch(self, entry: Entry, version: str) -> Entry:
        """Count a use. Readers share the entry's lock, so the metadata's read-modify-write
        takes a lock of its own: concurrent builds must not lose each other's counts."""
        with self._locked(f"{entry.ident}.meta", fcntl.LOCK_EX):
            current = self.lookup(entry.kind, entry.key) or entry
            now = self.clock()
            updated = current.used(now)
            if version and version == current.version:
                updated = replace(updated, checked=now)
            self._write_meta(updated)
        return updated

    @contextlib.contextmanager
    def _writing(self, kind: EntryKind, source: str, key: str, version: str) -> Iterator[Slot]:
        ident = entry_id(kind, key)
        temporary = self.tmp_dir / f"{ident}.{uuid.uuid4().hex[:8]}"
        try:
            with temporary.open("wb") as file:
                writer = CacheWriter(file)
                yield Slot(writer=writer, version=version)
                if not writer.complete:
                    return
                file.flush()
                os.fsync(file.fileno())
            now = self.clock()
            entry = Entry(
                kind=kind,
                source=source,
                key=key,
                ident=ident,
                size=writer.size,
                added=now,
                last_used=now,
                use_count=1,
                version=version,
                checked=now,
                xxh3=writer.xxh3,
                digests=dict(writer.digests),
            )
            temporary.replace(self.entries_dir / ident)
            self._write_meta(entry)
            logger.debug("cache: added %s (%d bytes)", source, entry.size)
        finally:
            temporary.unlink(missing_ok=True)

    def _write_meta(self, entry: Entry) -> None:
        meta = self.entries_dir / f"{entry.ident}.json"
        temporary = self.tmp_dir / f"{entry.ident}.json.{uuid.uuid4().hex[:8]}"
        with temporary.open("w", encoding="utf-8") as file:
            file.write(entry.to_json())
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(meta)

    def _remove(self, entry: Entry) -> None:
        # metadata first: without it the content is no entry, even if removal stops halfway
        (self.entries_dir / f"{entry.ident}.json").unlink(missing_ok=True)
        (self.entries_dir / entry.ident).unlink(missing_ok=True)

    # eviction -----------------------------------------------------------------------------

    def plan(
        self, *, incoming: Sequence[Incoming] = (), protected: Sequence[str] = ()
    ) -> list[Eviction]:
        return plan_evictions(
            self.entries(), self.policy, now=self.clock(), incoming=incoming, protected=protected
        )

    def evict(
        self, *, incoming: Sequence[Incoming] = (), protected: Sequence[str] = ()
    ) -> list[Eviction]:
        """Apply the policy; entries in use by another build are skipped, not waited for."""
        done: list[Eviction] = []
        with self._global_lock():
            for eviction in self.plan(incoming=incoming, protected=protected):
                entry = eviction.entry
                try:
                    with self._locked(entry.ident, fcntl.LOCK_EX | fcntl.LOCK_NB):
                        current = self.lookup(entry.kind, entry.key)
                        if current is None or current.added != entry.added:
                            continue  # replaced or removed meanwhile
                        self._remove(entry)
                        done.append(eviction)
                except BlockingIOError:
                    logger.debug("cache: %s in use, not evicted now", entry.source)
        self._sweep_temporary()
        return done

    @contextlib.contextmanager
    def _global_lock(self) -> Iterator[None]:
        handle = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)

    def _sweep_temporary(self) -> None:
        """Drop temporary files left by builds that died (their entry lock is free)."""
        for temporary in self.tmp_dir.iterdir():
            ident = temporary.name.split(".", 1)[0]
            try:
                with self._locked(ident, fcntl.LOCK_EX | fcntl.LOCK_NB):
                    temporary.unlink(missing_ok=True)
            except BlockingIOError:
                continue

"""The download cache: complete, verified entries only, safe for concurrent builds.

How the folder is laid out and why nothing in it is trusted: cache/folder.py.

Concurrency, between threads and between processes: a build reading an entry holds its lock
shared; one writing, refreshing or evicting it holds it exclusively. So an entry is never read
while written or removed, and a second build that needs a source another build is
downloading waits for it and then finds it in the cache.

An entry handed out is opened once, checked on that descriptor and handed out as that
descriptor (``/proc/self/fd/N``), so renaming names afterwards changes nothing. The xxh3
digest catches damage, not tampering (whoever writes the metadata can recompute it): a config
checksum is verified on the bytes as they are copied, never taken from the metadata, and a
cached copy that fails it is dropped (``discard``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO

import xxhash

from image_creator.cache.entry import CacheEntry, EntryKind
from image_creator.cache.eviction import Eviction, Incoming, plan_evictions
from image_creator.cache.folder import CacheFolder, UnusableFileError, id_for, reason, short
from image_creator.cache.policy import Policy, ResolvedRule
from image_creator.errors import os_reason

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_PROC_FDS = Path("/proc/self/fd")


def utc_now() -> datetime:
    return datetime.now(UTC)


class CacheWriter:
    """Receives an entry's content as it is downloaded; hashes it on the way."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._xxh3 = xxhash.xxh3_128()
        self.size = 0
        self.complete = False  # set once the whole source went through
        self.digests: dict[str, str] = {}  # config checksums verified (recorded, not trusted)

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
    """What the cache offers for one source: an entry to use, a writer to fill, or neither
    (not cacheable).

    For an entry, ``file`` is its content, open and checked, and ``path`` names that open
    file (``/proc/self/fd/N``): valid until the slot closes, whatever happens to the names in
    the cache folder meanwhile.
    """

    entry: CacheEntry | None = None
    path: Path | None = None
    file: BinaryIO | None = None
    writer: CacheWriter | None = None
    version: str = ""
    lock: int | None = None  # the entry's lock file descriptor, held shared


class CacheStore:
    def __init__(
        self, root: Path, policy: Policy, *, clock: Clock = utc_now, read_only: bool = False
    ) -> None:
        """``read_only``: for looking only (--check, --show-cache): creates nothing.

        Raises ConfigError when one of the cache's own folders is something else (a symlink,
        a file): the cache would write outside itself.
        """
        self.root = root
        self.policy = policy
        self.clock = clock
        self.read_only = read_only
        self.folder = CacheFolder(root, read_only=read_only)

    # reading ------------------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every complete entry. Entries whose metadata does not fit are left out (told when
        looking only; a build drops them when it evicts)."""
        valid, rejected = self.folder.scan()
        if self.read_only:
            for entry_id, problem in rejected:
                self.folder.warn(f"cache: {self.folder.where(entry_id)}: {problem}: ignored")
        return valid

    def lookup(self, kind: EntryKind, key: str, source: str | None = None) -> CacheEntry | None:
        """The entry for ``key`` if its metadata fits; content not verified, nothing locked."""
        entry_id = id_for(kind, key)
        try:
            entry = self.folder.load(entry_id)
            _require_same(entry, kind, key, source)
        except FileNotFoundError:
            return None
        except (UnusableFileError, OSError) as exc:
            if self.read_only:  # a build drops it, and says so, when it uses or evicts it
                where = self.folder.where(entry_id)
                self.folder.warn(f"cache: {source or key} ({where}): {reason(exc)}: ignored")
            return None
        return entry

    def peek(self, kind: EntryKind, source: str, key: str, *, version: str) -> Path | None:
        """The content of a current entry, for a quick look at its head (no lock, no
        verification: only sizes are computed from it, the build verifies what it uses)."""
        entry = self.lookup(kind, key, source)
        if entry is None or not self.is_current(entry, self.rule_for(kind, source), version):
            return None
        return self.folder.entries_dir / entry.entry_id

    def is_current(self, entry: CacheEntry, rule: ResolvedRule, version: str) -> bool:
        """Usable without downloading: within check_after, or the remote has not changed."""
        within = rule.check_after is not None and self.clock() - entry.checked < rule.check_after
        return within or not version or version == entry.version

    def rule_for(self, kind: EntryKind, source: str) -> ResolvedRule:
        return self.policy.rule_for(kind, source)

    # using and filling -------------------------------------------------------------------

    @contextlib.contextmanager
    def slot(
        self, kind: EntryKind, source: str, key: str, *, version: str, size: int | None = None
    ) -> Iterator[Slot]:
        """Under the entry's lock: a fresh, verified entry, or a writer for a new one.

        ``version`` is the remote's current version marker, or "" when it is not known (then
        an entry is used as long as it verifies). The new entry is committed when the block
        ends without an error and the writer was marked complete; otherwise it is dropped.
        An entry that is not of the cache's making is dropped, with a warning naming it.
        """
        rule = self.rule_for(kind, source)
        too_big = size is not None and rule.max_size is not None and size > rule.max_size
        if not rule.cacheable or too_big:
            yield Slot(version=version)
            return
        entry_id = id_for(kind, key)
        try:
            handle = self.folder.open_lock(entry_id)
        except (UnusableFileError, OSError) as exc:
            where = self.folder.locks_dir / f"{entry_id}.lock"
            self.folder.warn(f"cache: {source}: {where}: {reason(exc)}: not cached")
            yield Slot(version=version)
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_SH)
            found = self._usable(kind, source, key, rule, version, exclusive=False)
            if found is None:
                # Exclusive to write; another build may have filled it while we waited.
                fcntl.flock(handle, fcntl.LOCK_EX)
                found = self._usable(kind, source, key, rule, version, exclusive=True)
                if found is None:
                    with self._writing(kind, source, key, version) as slot:
                        yield slot
                    return
                fcntl.flock(handle, fcntl.LOCK_SH)
            entry, file = found
            with file:
                entry = self._touch(entry, version)
                path = _PROC_FDS / str(file.fileno())
                if not _PROC_FDS.is_dir():  # no /proc: the name, as checked a moment ago
                    path = self.folder.entries_dir / entry_id
                yield Slot(entry=entry, path=path, file=file, version=version, lock=handle)
        finally:
            os.close(handle)

    def discard(self, slot: Slot, problem: str) -> None:
        """Drop the entry ``slot`` handed out: its content failed the caller's own check (a
        config checksum). The slot's shared lock becomes exclusive for that."""
        assert slot.entry is not None and slot.lock is not None
        fcntl.flock(slot.lock, fcntl.LOCK_EX)
        entry_id = slot.entry.entry_id
        self.folder.drop(
            entry_id, f"{slot.entry.source} ({self.folder.where(entry_id)}): {problem}"
        )

    def _usable(
        self,
        kind: EntryKind,
        source: str,
        key: str,
        rule: ResolvedRule,
        version: str,
        *,
        exclusive: bool,
    ) -> tuple[CacheEntry, BinaryIO] | None:
        """The entry and its open, verified content if it is intact and not outdated. With
        the lock held ``exclusive``, a bad or outdated entry is removed."""
        entry_id = id_for(kind, key)
        try:
            entry = self.folder.load(entry_id)
            _require_same(entry, kind, key, source)
            if not self.is_current(entry, rule, version):
                if exclusive:
                    logger.info("cache: %s changed at its source: evicted", source)
                    self.folder.discard_names(entry_id)
                return None
            return entry, self.folder.open_content(entry)
        except FileNotFoundError:
            return None
        except (UnusableFileError, OSError) as exc:
            if exclusive:
                where = self.folder.where(entry_id)
                self.folder.drop(entry_id, f"{source} ({where}): {reason(exc)}")
            return None

    def _touch(self, entry: CacheEntry, version: str) -> CacheEntry:
        """Count a use. Readers share the entry's lock, so the metadata's read-modify-write
        takes a lock of its own: concurrent builds must not lose each other's counts."""
        try:
            with self.folder.locked(f"{entry.entry_id}.meta", fcntl.LOCK_EX):
                current = self.lookup(entry.kind, entry.key, entry.source) or entry
                now = self.clock()
                updated = current.used(now)
                if version and version == current.version:
                    updated = replace(updated, checked=now)
                self.folder.write_meta(updated)
        except (UnusableFileError, OSError) as exc:
            self.folder.warn(f"cache: {entry.source}: use not recorded ({reason(exc)})")
            return entry
        return updated

    @contextlib.contextmanager
    def _writing(self, kind: EntryKind, source: str, key: str, version: str) -> Iterator[Slot]:
        entry_id = id_for(kind, key)
        temporary = self.folder.new_temporary(entry_id)
        try:
            with temporary.open("xb") as file:  # exclusive: never through a planted name
                os.fchmod(file.fileno(), 0o644)
                writer = CacheWriter(file)
                yield Slot(writer=writer, version=version)
                if not writer.complete:
                    return
                file.flush()
                os.fsync(file.fileno())
            now = self.clock()
            entry = CacheEntry(
                kind=kind,
                source=source,
                key=key,
                entry_id=entry_id,
                size=writer.size,
                added=now,
                last_used=now,
                use_count=1,
                version=version,
                checked=now,
                xxh3=writer.xxh3,
                digests=dict(writer.digests),
            )
            try:
                self.folder.commit(temporary, entry)
            except OSError as exc:
                where = self.folder.where(entry_id)
                self.folder.warn(f"cache: {source}: not kept ({where}: {os_reason(exc)})")
                return
            logger.debug("cache: added %s (%d bytes)", source, entry.size)
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)

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
        """Apply the policy, and drop what is not of the cache's making; entries in use by
        another build are skipped, not waited for."""
        done: list[Eviction] = []
        try:
            global_lock = self.folder.open_global_lock()
        except (UnusableFileError, OSError) as exc:
            self.folder.warn(f"cache: {self.root / '.lock'}: {reason(exc)}: nothing evicted")
            return done
        try:
            fcntl.flock(global_lock, fcntl.LOCK_EX)
            self.folder.drop_rejected()
            for eviction in self.plan(incoming=incoming, protected=protected):
                entry = eviction.entry
                try:
                    with self.folder.locked(entry.entry_id, fcntl.LOCK_EX | fcntl.LOCK_NB):
                        current = self.lookup(entry.kind, entry.key, entry.source)
                        if current is None or current.added != entry.added:
                            continue  # replaced or removed meanwhile
                        self.folder.discard_names(entry.entry_id)
                        done.append(eviction)
                except BlockingIOError:
                    logger.debug("cache: %s in use, not evicted now", entry.source)
                except (UnusableFileError, OSError) as exc:
                    self.folder.warn(f"cache: {entry.source}: not evicted ({reason(exc)})")
        finally:
            os.close(global_lock)
        self.folder.sweep_temporary()
        return done


def _require_same(entry: CacheEntry, kind: EntryKind, key: str, source: str | None) -> None:
    if (
        entry.kind is not kind
        or entry.key != key
        or (source is not None and entry.source != source)
    ):
        raise UnusableFileError(f"metadata of another source ({short(entry.source)!r})")

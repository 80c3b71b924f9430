"""The download cache on disk: complete, verified entries only, safe for concurrent builds.

Layout of CACHE_DIR:
  policy.yaml             the policy (written with the defaults when absent)
  entries/ID              an entry's content, exactly as downloaded
  entries/ID.json         its metadata (an entry exists once this file does)
  tmp/                    content being written; never read as an entry
  locks/ID.lock           one lock file per entry (flock), kept forever (they are tiny)
  .lock                   taken exclusively while evicting

ID is a hash of the entry's kind and key (the URL, or "reference|platform").

Concurrency, between threads and between processes: a build reading an entry holds its lock
shared; one writing, refreshing or evicting it holds it exclusively. So an entry is never read
while written or removed, and a second build that needs a source another build is
downloading waits for it and then finds it in the cache.

Trust: whoever can write the cache folder can write anything in it, so nothing in it names a
path or vouches for content. Every path is derived from the key; metadata must describe the
entry it sits beside (its ID, kind, key and source), else the entry is dropped (only ignored
when looking). Nothing is followed: metadata, content and lock files must be regular files (a
symlink, folder or FIFO is refused), read with bounded sizes. Content must have one link and
be owned and writable only by this user; it is opened once, checked on that descriptor and
handed out as that descriptor (``/proc/self/fd/N``), so renaming names afterwards changes
nothing. The xxh3 digest catches damage, not tampering (whoever writes the metadata can
recompute it): a config checksum is verified on the bytes as they are copied, never taken from
the metadata, and a cached copy that fails it is dropped (``discard``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO

import xxhash

from image_creator.cache.entry import Entry, EntryKind
from image_creator.cache.eviction import Eviction, Incoming, plan_evictions
from image_creator.cache.policy import Policy, ResolvedRule
from image_creator.config.units import CHUNK
from image_creator.errors import ConfigError, os_reason

logger = logging.getLogger(__name__)

# Metadata is a few hundred bytes; anything much larger is not ours.
META_LIMIT = 64 * 1024
Clock = Callable[[], datetime]

_IDENT = re.compile(r"[0-9a-f]{32}")
_PROC_FDS = Path("/proc/self/fd")


def utc_now() -> datetime:
    return datetime.now(UTC)


def entry_id(kind: EntryKind, key: str) -> str:
    return hashlib.sha256(f"{kind.value}\0{key}".encode()).hexdigest()[:32]


def _xxh3(file: IO[bytes]) -> str:
    digest = xxhash.xxh3_128()
    while chunk := file.read(CHUNK):
        digest.update(chunk)
    return str(digest.hexdigest())


class UnusableFileError(Exception):
    """A name in the cache folder holds something the cache did not put there."""


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

    entry: Entry | None = None
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
        self.entries_dir = root / "entries"
        self.tmp_dir = root / "tmp"
        self.locks_dir = root / "locks"
        self._warned: set[str] = set()
        for folder in (self.entries_dir, self.tmp_dir, self.locks_dir):
            if not read_only:
                with contextlib.suppress(FileExistsError):
                    folder.mkdir(parents=True)
            _require_folder(folder)

    def _warn(self, message: str) -> None:
        """Each problem once per run, however often the cache is looked at."""
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    def _where(self, ident: str) -> str:
        return str(self.entries_dir / ident)

    # reading ------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every complete entry. Entries whose metadata does not fit are left out (told when
        looking only; a build drops them when it evicts)."""
        valid, rejected = self._scan()
        if self.read_only:
            for ident, reason in rejected:
                self._warn(f"cache: {self._where(ident)}: {reason}: ignored")
        return valid

    def _scan(self) -> tuple[list[Entry], list[tuple[str, str]]]:
        """Valid entries, and the IDs of rejected ones with the reason."""
        try:
            names = sorted(path.name for path in self.entries_dir.iterdir())
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            self._warn(f"cache: {self.entries_dir}: {os_reason(exc)}: no entry used")
            return [], []
        valid: list[Entry] = []
        rejected: list[tuple[str, str]] = []
        for name in names:
            ident = name.removesuffix(".json")
            if not _IDENT.fullmatch(ident):
                self._warn(f"cache: {self.entries_dir / name}: not a cache entry: ignored")
                continue
            if ident == name:
                continue  # content: looked at through its metadata
            try:
                entry = self._load(ident)
            except FileNotFoundError:
                continue
            except UnusableFileError as exc:
                rejected.append((ident, str(exc)))
                continue
            except OSError as exc:
                self._warn(f"cache: {self._where(ident)}: {os_reason(exc)}: ignored")
                continue
            valid.append(entry)
        return valid, rejected

    def _load(self, ident: str) -> Entry:
        """The metadata stored as ``ident``, checked against its location.

        Raises FileNotFoundError when there is no complete entry, UnusableFileError (the
        reason) when the names hold something else than an entry of the cache's making.
        """
        handle = _open_regular(self.entries_dir / f"{ident}.json", os.O_RDONLY, "metadata")
        with os.fdopen(handle, "rb") as file:
            data = file.read(META_LIMIT + 1)
        if len(data) > META_LIMIT:
            raise UnusableFileError(f"metadata larger than {META_LIMIT} bytes")
        try:
            entry = Entry.from_json(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise UnusableFileError(f"unreadable metadata ({_short(str(exc))})") from exc
        if entry.ident != ident or entry_id(entry.kind, entry.key) != ident:
            raise UnusableFileError(
                f"metadata of another entry (ident {_short(entry.ident)!r}, "
                f"{entry.kind.value} {_short(entry.key)!r})"
            )
        if not _source_fits_key(entry):
            raise UnusableFileError(
                f"metadata's source {_short(entry.source)!r} is not its key's {_short(entry.key)!r}"
            )
        info = os.lstat(self.entries_dir / ident)  # no content: no entry (FileNotFoundError)
        if not stat.S_ISREG(info.st_mode):
            raise UnusableFileError(f"content is {_file_type(info.st_mode)}")
        return entry

    def lookup(self, kind: EntryKind, key: str, source: str | None = None) -> Entry | None:
        """The entry for ``key`` if its metadata fits; content not verified, nothing locked."""
        ident = entry_id(kind, key)
        try:
            entry = self._load(ident)
            _require_same(entry, kind, key, source)
        except FileNotFoundError:
            return None
        except (UnusableFileError, OSError) as exc:
            if self.read_only:  # a build drops it, and says so, when it uses or evicts it
                self._warn(
                    f"cache: {source or key} ({self._where(ident)}): {_reason(exc)}: ignored"
                )
            return None
        return entry

    def peek(self, kind: EntryKind, source: str, key: str, *, version: str) -> Path | None:
        """The content of a current entry, for a quick look at its head (no lock, no
        verification: only sizes are computed from it, the build verifies what it uses)."""
        entry = self.lookup(kind, key, source)
        if entry is None or not self.is_current(entry, self.rule_for(kind, source), version):
            return None
        return self.entries_dir / entry_id(kind, key)

    def is_current(self, entry: Entry, rule: ResolvedRule, version: str) -> bool:
        """Usable without downloading: within check_after, or the remote has not changed."""
        within = rule.check_after is not None and self.clock() - entry.checked < rule.check_after
        return within or not version or version == entry.version

    def rule_for(self, kind: EntryKind, source: str) -> ResolvedRule:
        return self.policy.rule_for(kind, source)

    # locking ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str, mode: int) -> Iterator[int]:
        """Raises UnusableFileError when the lock file is something else (a folder)."""
        handle = _open_lock(self.locks_dir / f"{name}.lock")
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
        An entry that is not of the cache's making is dropped, with a warning naming it.
        """
        rule = self.rule_for(kind, source)
        too_big = size is not None and rule.max_size is not None and size > rule.max_size
        if not rule.cacheable or too_big:
            yield Slot(version=version)
            return
        ident = entry_id(kind, key)
        try:
            handle = _open_lock(self.locks_dir / f"{ident}.lock")
        except (UnusableFileError, OSError) as exc:
            where = self.locks_dir / f"{ident}.lock"
            self._warn(f"cache: {source}: {where}: {_reason(exc)}: not cached")
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
                    path = self.entries_dir / ident
                yield Slot(entry=entry, path=path, file=file, version=version, lock=handle)
        finally:
            os.close(handle)

    def discard(self, slot: Slot, reason: str) -> None:
        """Drop the entry ``slot`` handed out: its content failed the caller's own check (a
        config checksum). The slot's shared lock becomes exclusive for that."""
        assert slot.entry is not None and slot.lock is not None
        fcntl.flock(slot.lock, fcntl.LOCK_EX)
        ident = entry_id(slot.entry.kind, slot.entry.key)
        self._drop(ident, f"{slot.entry.source} ({self._where(ident)}): {reason}")

    def _usable(
        self,
        kind: EntryKind,
        source: str,
        key: str,
        rule: ResolvedRule,
        version: str,
        *,
        exclusive: bool,
    ) -> tuple[Entry, BinaryIO] | None:
        """The entry and its open, verified content if it is intact and not outdated. With
        the lock held ``exclusive``, a bad or outdated entry is removed."""
        ident = entry_id(kind, key)
        try:
            entry = self._load(ident)
            _require_same(entry, kind, key, source)
            if not self.is_current(entry, rule, version):
                if exclusive:
                    logger.info("cache: %s changed at its source: evicted", source)
                    self._discard_names(ident)
                return None
            return entry, self._open_content(ident, entry)
        except FileNotFoundError:
            return None
        except (UnusableFileError, OSError) as exc:
            if exclusive:
                self._drop(ident, f"{source} ({self._where(ident)}): {_reason(exc)}")
            return None

    def _open_content(self, ident: str, entry: Entry) -> BinaryIO:
        """The content, opened without following anything, checked on the open file: one
        link, owned and writable only by this user (so its bytes cannot change while it is
        used), the size and xxh3 its metadata gives."""
        handle = _open_regular(self.entries_dir / ident, os.O_RDONLY, "content")
        file = os.fdopen(handle, "rb")
        try:
            info = os.fstat(handle)
            if info.st_nlink != 1:
                raise UnusableFileError(f"content has {info.st_nlink} links")
            if info.st_uid != os.geteuid() or info.st_mode & 0o022:
                raise UnusableFileError(
                    f"content is owned by uid {info.st_uid} with mode "
                    f"{stat.S_IMODE(info.st_mode):o} (others could change it)"
                )
            if info.st_size != entry.size:
                raise UnusableFileError(
                    f"content is {info.st_size} bytes, its metadata says {entry.size}"
                )
            if _xxh3(file) != entry.xxh3:
                raise UnusableFileError("content does not match its xxh3 digest (damaged)")
            file.seek(0)
        except BaseException:
            file.close()
            raise
        return file

    def _touch(self, entry: Entry, version: str) -> Entry:
        """Count a use. Readers share the entry's lock, so the metadata's read-modify-write
        takes a lock of its own: concurrent builds must not lose each other's counts."""
        ident = entry_id(entry.kind, entry.key)
        try:
            with self._locked(f"{ident}.meta", fcntl.LOCK_EX):
                current = self.lookup(entry.kind, entry.key, entry.source) or entry
                now = self.clock()
                updated = current.used(now)
                if version and version == current.version:
                    updated = replace(updated, checked=now)
                self._write_meta(updated)
        except (UnusableFileError, OSError) as exc:
            self._warn(f"cache: {entry.source}: use not recorded ({_reason(exc)})")
            return entry
        return updated

    @contextlib.contextmanager
    def _writing(self, kind: EntryKind, source: str, key: str, version: str) -> Iterator[Slot]:
        ident = entry_id(kind, key)
        temporary = self.tmp_dir / f"{ident}.{uuid.uuid4().hex[:8]}"
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
            content = self.entries_dir / ident
            try:
                temporary.replace(content)
                try:
                    self._write_meta(entry)
                except OSError:
                    content.unlink(missing_ok=True)  # content alone is no entry; tidy anyway
                    raise
            except OSError as exc:
                self._warn(f"cache: {source}: not kept ({self._where(ident)}: {os_reason(exc)})")
                return
            logger.debug("cache: added %s (%d bytes)", source, entry.size)
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)

    def _write_meta(self, entry: Entry) -> None:
        ident = entry_id(entry.kind, entry.key)
        temporary = self.tmp_dir / f"{ident}.json.{uuid.uuid4().hex[:8]}"
        try:
            with temporary.open("x", encoding="utf-8") as file:
                os.fchmod(file.fileno(), 0o644)
                file.write(entry.to_json())
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(self.entries_dir / f"{ident}.json")
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)

    def _discard_names(self, ident: str) -> list[str]:
        """Remove an entry's names (never what they point to); returns those left (folders)."""
        left = []
        # metadata first: without it the content is no entry, even if removal stops halfway
        for path in (self.entries_dir / f"{ident}.json", self.entries_dir / ident):
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    left.append(path.name)
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError:
                left.append(path.name)
        return left

    def _drop(self, ident: str, what: str) -> None:
        left = self._discard_names(ident)
        if left:
            logger.warning("cache: %s: dropped, but %s left in place", what, ", ".join(left))
        else:
            logger.warning("cache: %s: dropped", what)

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
            global_lock = _open_lock(self.root / ".lock")
        except (UnusableFileError, OSError) as exc:
            self._warn(f"cache: {self.root / '.lock'}: {_reason(exc)}: nothing evicted")
            return done
        try:
            fcntl.flock(global_lock, fcntl.LOCK_EX)
            self._drop_rejected()
            for eviction in self.plan(incoming=incoming, protected=protected):
                entry = eviction.entry
                ident = entry_id(entry.kind, entry.key)
                try:
                    with self._locked(ident, fcntl.LOCK_EX | fcntl.LOCK_NB):
                        current = self.lookup(entry.kind, entry.key, entry.source)
                        if current is None or current.added != entry.added:
                            continue  # replaced or removed meanwhile
                        self._discard_names(ident)
                        done.append(eviction)
                except BlockingIOError:
                    logger.debug("cache: %s in use, not evicted now", entry.source)
                except (UnusableFileError, OSError) as exc:
                    self._warn(f"cache: {entry.source}: not evicted ({_reason(exc)})")
        finally:
            os.close(global_lock)
        self._sweep_temporary()
        return done

    def _drop_rejected(self) -> None:
        for ident, _ in self._scan()[1]:
            try:
                with self._locked(ident, fcntl.LOCK_EX | fcntl.LOCK_NB):
                    try:
                        self._load(ident)
                        continue  # rewritten meanwhile
                    except FileNotFoundError:
                        continue
                    except (UnusableFileError, OSError) as exc:
                        self._drop(ident, f"{self._where(ident)}: {_reason(exc)}")
            except (BlockingIOError, UnusableFileError, OSError):
                continue

    def _sweep_temporary(self) -> None:
        """Drop temporary files left by builds that died (their entry lock is free)."""
        try:
            names = [path.name for path in self.tmp_dir.iterdir()]
        except OSError:
            return
        for name in names:
            temporary = self.tmp_dir / name
            ident = name.split(".", 1)[0]
            try:
                is_folder = stat.S_ISDIR(os.lstat(temporary).st_mode)
            except FileNotFoundError:
                continue
            if is_folder or not _IDENT.fullmatch(ident):
                self._warn(f"cache: {temporary}: not a cache temporary file: ignored")
                continue
            try:
                with self._locked(ident, fcntl.LOCK_EX | fcntl.LOCK_NB):
                    temporary.unlink(missing_ok=True)
            except (BlockingIOError, UnusableFileError, OSError):
                continue


def _require_folder(folder: Path) -> None:
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return  # looking only: an empty cache
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            [f"--cache-dir: {folder} is {_file_type(info.st_mode)}, not a folder of the cache"]
        )


def _require_same(entry: Entry, kind: EntryKind, key: str, source: str | None) -> None:
    if (
        entry.kind is not kind
        or entry.key != key
        or (source is not None and entry.source != source)
    ):
        raise UnusableFileError(f"metadata of another source ({_short(entry.source)!r})")


def _source_fits_key(entry: Entry) -> bool:
    """A file's key is its URL; an image's is "reference|platform"."""
    if entry.kind is EntryKind.FILES:
        return entry.source == entry.key
    return entry.key.startswith(f"{entry.source}|")


def _open_regular(path: Path, flags: int, what: str) -> int:
    """Open a regular file at ``path``: never through a symlink, never blocking on a FIFO,
    never opening a device. Raises FileNotFoundError, or UnusableFileError naming ``what``."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise UnusableFileError(f"{what} is {_file_type(info.st_mode)}")
    try:
        handle = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):
            raise UnusableFileError(f"{what} is not a regular file") from exc
        raise
    if not stat.S_ISREG(os.fstat(handle).st_mode):  # swapped since lstat
        os.close(handle)
        raise UnusableFileError(f"{what} is not a regular file")
    return handle


def _open_lock(path: Path) -> int:
    """Open (creating) a lock file. A symlink or FIFO in its place is removed (the name is the
    cache's own); a folder raises UnusableFileError."""
    reason = ""
    for _ in range(2):
        try:
            handle = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise UnusableFileError("a folder, not a lock file") from exc
            if exc.errno != errno.ELOOP:
                raise
            reason = "a symbolic link, not a lock file"
        else:
            mode = os.fstat(handle).st_mode
            if stat.S_ISREG(mode):
                return handle
            os.close(handle)
            reason = f"{_file_type(mode)}, not a lock file"
        path.unlink(missing_ok=True)
    raise UnusableFileError(reason)


def _file_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a device"


def _short(text: str, limit: int = 120) -> str:
    """Text from the cache folder, cut short for a one-line message."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def _reason(exc: Exception) -> str:
    return os_reason(exc) if isinstance(exc, OSError) else str(exc)

"""The cache folder's layout and its trust rules: every name derived from an entry's ID, nothing
in the folder followed or believed.

Layout of CACHE_DIR:
  policy.yaml             the policy (written with the defaults when absent)
  entries/ID              an entry's content, exactly as downloaded
  entries/ID.json         its metadata (an entry exists once this file does)
  tmp/                    content being written; never read as an entry
  locks/ID.lock           one lock file per entry (flock), kept forever (they are tiny)
  .lock                   taken exclusively while evicting

ID is a hash of the entry's kind and key (the URL, or "reference|platform"): ``id_for``.

Whoever can write the cache folder can write anything in it, so nothing in it names a path or
vouches for content. Metadata must describe the entry it sits beside (its ID, kind, key and
source), else the entry is refused. Metadata, content and lock files must be regular files (a
symlink, folder or FIFO is refused), read with bounded sizes. Content must have one link and
be owned and writable only by this user; it is opened once and checked on that descriptor.
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
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

import xxhash

from image_creator.cache.entry import CacheEntry, EntryKind
from image_creator.errors import ConfigError, os_reason
from image_creator.localfile import describe_mode, write_atomically
from image_creator.units import CHUNK

logger = logging.getLogger(__name__)

# Metadata is a few hundred bytes; anything much larger is not ours.
META_LIMIT = 64 * 1024

_ENTRY_ID = re.compile(r"[0-9a-f]{32}")


def id_for(kind: EntryKind, key: str) -> str:
    return hashlib.sha256(f"{kind.value}\0{key}".encode()).hexdigest()[:32]


def xxh3_of(file: IO[bytes]) -> str:
    digest = xxhash.xxh3_128()
    while chunk := file.read(CHUNK):
        digest.update(chunk)
    return str(digest.hexdigest())


class UnusableFileError(Exception):
    """A name in the cache folder holds something the cache did not put there."""


class CacheFolder:
    """The names of one cache folder, opened and written safely."""

    def __init__(self, root: Path, *, read_only: bool) -> None:
        """``read_only``: creates nothing. Raises ConfigError when one of the cache's own
        folders is something else (a symlink, a file): the cache would write outside itself."""
        self.root = root
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

    def warn(self, message: str) -> None:
        """Each problem once per run, however often the cache is looked at."""
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    def where(self, entry_id: str) -> str:
        return str(self.entries_dir / entry_id)

    # reading ------------------------------------------------------------------------------

    def scan(self) -> tuple[list[CacheEntry], list[tuple[str, str]]]:
        """Valid entries, and the IDs of rejected ones with the reason."""
        try:
            names = sorted(path.name for path in self.entries_dir.iterdir())
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            self.warn(f"cache: {self.entries_dir}: {os_reason(exc)}: no entry used")
            return [], []
        valid: list[CacheEntry] = []
        rejected: list[tuple[str, str]] = []
        for name in names:
            entry_id = name.removesuffix(".json")
            if not _ENTRY_ID.fullmatch(entry_id):
                self.warn(f"cache: {self.entries_dir / name}: not a cache entry: ignored")
                continue
            if entry_id == name:
                continue  # content: looked at through its metadata
            try:
                entry = self.load(entry_id)
            except FileNotFoundError:
                continue
            except UnusableFileError as exc:
                rejected.append((entry_id, str(exc)))
                continue
            except OSError as exc:
                self.warn(f"cache: {self.where(entry_id)}: {os_reason(exc)}: ignored")
                continue
            valid.append(entry)
        return valid, rejected

    def load(self, entry_id: str) -> CacheEntry:
        """The metadata stored as ``entry_id``, checked against its location.

        Raises FileNotFoundError when there is no complete entry, UnusableFileError (the
        reason) when the names hold something else than an entry of the cache's making.
        """
        handle = _open_regular(self.entries_dir / f"{entry_id}.json", os.O_RDONLY, "metadata")
        with os.fdopen(handle, "rb") as file:
            data = file.read(META_LIMIT + 1)
        if len(data) > META_LIMIT:
            raise UnusableFileError(f"metadata larger than {META_LIMIT} bytes")
        try:
            entry = CacheEntry.from_json(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise UnusableFileError(f"unreadable metadata ({short(str(exc))})") from exc
        if entry.entry_id != entry_id or id_for(entry.kind, entry.key) != entry_id:
            raise UnusableFileError(
                f"metadata of another entry (ident {short(entry.entry_id)!r}, "
                f"{entry.kind.value} {short(entry.key)!r})"
            )
        if not _source_fits_key(entry):
            raise UnusableFileError(
                f"metadata's source {short(entry.source)!r} is not its key's {short(entry.key)!r}"
            )
        info = os.lstat(self.entries_dir / entry_id)  # no content: no entry (FileNotFoundError)
        if not stat.S_ISREG(info.st_mode):
            raise UnusableFileError(f"content is {describe_mode(info.st_mode)}")
        return entry

    def open_content(self, entry: CacheEntry) -> BinaryIO:
        """The content, opened without following anything, checked on the open file: one
        link, owned and writable only by this user (so its bytes cannot change while it is
        used), the size and xxh3 its metadata gives."""
        handle = _open_regular(self.entries_dir / entry.entry_id, os.O_RDONLY, "content")
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
            if xxh3_of(file) != entry.xxh3:
                raise UnusableFileError("content does not match its xxh3 digest (damaged)")
            file.seek(0)
        except BaseException:
            file.close()
            raise
        return file

    # locking ------------------------------------------------------------------------------

    def open_lock(self, name: str) -> int:
        """The lock file ``name`` (an entry ID, or "ID.meta"), open. A symlink or FIFO in its
        place is removed (the name is the cache's own); a folder raises UnusableFileError."""
        return _open_lock(self.locks_dir / f"{name}.lock")

    def open_global_lock(self) -> int:
        return _open_lock(self.root / ".lock")

    @contextlib.contextmanager
    def locked(self, name: str, mode: int) -> Iterator[int]:
        """Raises UnusableFileError when the lock file is something else (a folder)."""
        handle = self.open_lock(name)
        try:
            fcntl.flock(handle, mode)
            yield handle
        finally:
            os.close(handle)  # closing releases the lock

    # writing ------------------------------------------------------------------------------

    def new_temporary(self, entry_id: str) -> Path:
        """A fresh name in tmp/ for ``entry_id``'s content."""
        return self.tmp_dir / f"{entry_id}.{uuid.uuid4().hex[:8]}"

    def write_meta(self, entry: CacheEntry) -> None:
        path = self.entries_dir / f"{entry.entry_id}.json"
        write_atomically(path, entry.to_json().encode(), staging=self.tmp_dir)

    def commit(self, temporary: Path, entry: CacheEntry) -> None:
        """``temporary`` (complete, synced) becomes ``entry``'s content, then its metadata is
        written: only then is it an entry. Raises OSError, having tidied up."""
        content = self.entries_dir / entry.entry_id
        temporary.replace(content)
        try:
            self.write_meta(entry)
        except OSError:
            content.unlink(missing_ok=True)  # content alone is no entry; tidy anyway
            raise

    # removing -----------------------------------------------------------------------------

    def discard_names(self, entry_id: str) -> list[str]:
        """Remove an entry's names (never what they point to); returns those left (folders)."""
        left = []
        # metadata first: without it the content is no entry, even if removal stops halfway
        for path in (self.entries_dir / f"{entry_id}.json", self.entries_dir / entry_id):
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

    def drop(self, entry_id: str, what: str) -> None:
        left = self.discard_names(entry_id)
        if left:
            logger.warning("cache: %s: dropped, but %s left in place", what, ", ".join(left))
        else:
            logger.warning("cache: %s: dropped", what)

    def drop_rejected(self) -> None:
        """Drop every entry that is not of the cache's making (unless in use)."""
        for entry_id, _ in self.scan()[1]:
            try:
                with self.locked(entry_id, fcntl.LOCK_EX | fcntl.LOCK_NB):
                    try:
                        self.load(entry_id)
                        continue  # rewritten meanwhile
                    except FileNotFoundError:
                        continue
                    except (UnusableFileError, OSError) as exc:
                        self.drop(entry_id, f"{self.where(entry_id)}: {reason(exc)}")
            except (BlockingIOError, UnusableFileError, OSError):
                continue

    def sweep_temporary(self) -> None:
        """Drop temporary files left by builds that died (their entry lock is free)."""
        try:
            names = [path.name for path in self.tmp_dir.iterdir()]
        except OSError:
            return
        for name in names:
            temporary = self.tmp_dir / name
            entry_id = name.split(".", 1)[0]
            try:
                is_folder = stat.S_ISDIR(os.lstat(temporary).st_mode)
            except FileNotFoundError:
                continue
            if is_folder or not _ENTRY_ID.fullmatch(entry_id):
                self.warn(f"cache: {temporary}: not a cache temporary file: ignored")
                continue
            try:
                with self.locked(entry_id, fcntl.LOCK_EX | fcntl.LOCK_NB):
                    temporary.unlink(missing_ok=True)
            except (BlockingIOError, UnusableFileError, OSError):
                continue


def short(text: str, limit: int = 120) -> str:
    """Text from the cache folder, cut short for a one-line message."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def reason(exc: Exception) -> str:
    return os_reason(exc) if isinstance(exc, OSError) else str(exc)


def _require_folder(folder: Path) -> None:
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return  # looking only: an empty cache
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            [f"--cache-dir: {folder} is {describe_mode(info.st_mode)}, not a folder of the cache"]
        )


def _source_fits_key(entry: CacheEntry) -> bool:
    """A file's key is its URL; an image's is "reference|platform"."""
    if entry.kind is EntryKind.FILES:
        return entry.source == entry.key
    return entry.key.startswith(f"{entry.source}|")


def _open_regular(path: Path, flags: int, what: str) -> int:
    """Open a regular file at ``path``: never through a symlink, never blocking on a FIFO,
    never opening a device. Raises FileNotFoundError, or UnusableFileError naming ``what``."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise UnusableFileError(f"{what} is {describe_mode(info.st_mode)}")
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
    problem = ""
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
            problem = "a symbolic link, not a lock file"
        else:
            mode = os.fstat(handle).st_mode
            if stat.S_ISREG(mode):
                return handle
            os.close(handle)
            problem = f"{describe_mode(mode)}, not a lock file"
        path.unlink(missing_ok=True)
    raise UnusableFileError(problem)

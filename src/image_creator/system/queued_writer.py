"""One writer thread for an :class:`OfflineFilesystem` (libext2fs takes one caller at a
time), fed by a bounded queue, so downloads, hashing and extraction run in other threads and
each gets the errors of its own operations raised back."""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TypeVar

from image_creator.errors import BuildError
from image_creator.system.offline_fs import (
    DEFAULT_SHOWN_AS,
    FILE_MODE,
    KEEP,
    Attributes,
    EntryStat,
    FreeSpace,
    OfflineFilesystem,
    PathLike,
    PendingFile,
)
from image_creator.system.partitions import Partition
from image_creator.system.signals import releasing

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
# A chunk handed to the writer thread is cut to this size: the queue's depth times this
# bounds the memory held between producers and the writer.
MAX_CHUNK = 4 * 2**20
DEFAULT_QUEUE_DEPTH = 16

# one writer thread ------------------------------------------------------------------------


@dataclass
class _Stream:
    """The writes of one file: after the first failure the rest are skipped."""

    error: BaseException | None = None


@dataclass
class _Job:
    operation: Callable[[OfflineFilesystem], object]
    future: Future[object] | None = None
    stream: _Stream | None = None

    def run(self, fs: OfflineFilesystem) -> None:
        if self.stream is not None and self.stream.error is not None:
            return
        try:
            result = self.operation(fs)
        except BaseException as exc:
            if self.stream is not None:
                self.stream.error = exc
            if self.future is not None:
                self.future.set_exception(exc)
            else:
                logger.debug("writer: %s", exc)
        else:
            if self.future is not None:
                self.future.set_result(result)


@dataclass(frozen=True)
class _Stop:
    clean: bool


@dataclass
class _Outcome:
    open_error: BaseException | None = None
    close_error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)


class QueuedWriter:
    """An :class:`OfflineFilesystem` owned by one thread, fed through a bounded queue.

    Any thread may call the methods; each blocks until its operation is done and raises its
    error. :meth:`write_file` streams: the caller's thread reads its chunks (a download, a
    decompressor) and queues them, the writer thread writes them, so producing and writing
    overlap, and several files may be streamed at once (their blocks interleave in runs of a
    chunk). The queue holds at most ``depth`` chunks of at most ``MAX_CHUNK`` bytes.
    """

    def __init__(
        self,
        image: Path,
        partition: Partition,
        *,
        depth: int = DEFAULT_QUEUE_DEPTH,
        shown_as: PurePosixPath = DEFAULT_SHOWN_AS,
    ) -> None:
        self._filesystem = OfflineFilesystem(image, partition, shown_as=shown_as)
        self._queue: queue.Queue[_Job | _Stop] = queue.Queue(maxsize=depth)
        self._outcome = _Outcome()
        self._thread = threading.Thread(target=self._serve, name="ext2fs-writer", daemon=True)

    def __enter__(self) -> QueuedWriter:
        self._thread.start()
        self._outcome.ready.wait()
        if self._outcome.open_error is not None:
            self._thread.join()
            raise self._outcome.open_error
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        # what was queued is written and the filesystem closed before the caller goes on
        # to release the image: a second signal must not cut this short
        with releasing():
            if self._thread.is_alive():
                self._queue.put(_Stop(clean=kind is None))
                self._thread.join()
        if kind is None and self._outcome.close_error is not None:
            raise self._outcome.close_error

    def _serve(self) -> None:
        fs = self._filesystem
        try:
            fs.__enter__()
        except BaseException as exc:
            self._outcome.open_error = exc
            self._outcome.ready.set()
            return
        self._outcome.ready.set()
        clean = False
        try:
            while True:
                job = self._queue.get()
                if isinstance(job, _Stop):
                    clean = job.clean
                    break
                job.run(fs)
        finally:
            try:
                if clean:
                    fs.__exit__(None, None, None)
                else:
                    fs.__exit__(BuildError, None, None)
            except BaseException as exc:
                self._outcome.close_error = exc

    def _put(self, job: _Job) -> None:
        while True:
            try:
                self._queue.put(job, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise BuildError("the filesystem writer has stopped") from None

    def call(self, operation: Callable[[OfflineFilesystem], _T]) -> _T:
        """Run ``operation`` in the writer thread; return its result or raise its error."""
        future: Future[object] = Future()
        self._put(_Job(operation, future))
        return future.result()  # type: ignore[return-value]

    def write_file(
        self,
        path: PathLike,
        chunks: Iterable[bytes | bytearray | memoryview],
        attributes: Attributes = KEEP,
    ) -> int:
        """As :meth:`OfflineFilesystem.write_file`, with ``chunks`` read in this thread."""
        mode = FILE_MODE if attributes.mode is None else attributes.mode
        pending = self.call(lambda fs: fs.begin_file(path, mode=mode))
        stream = _Stream()
        try:
            for chunk in chunks:
                for piece in _pieces(chunk):
                    if stream.error is not None:
                        break
                    self._put(_Job(functools.partial(_write, pending, piece), stream=stream))
                if stream.error is not None:
                    break
        except BaseException:
            self.call(lambda fs: fs.discard_file(pending))
            raise
        return self.call(lambda fs: _commit(fs, pending, stream, attributes))

    def open_file(self, path: PathLike, *, mode: int = FILE_MODE) -> QueuedFile:
        """A file at ``path`` under a temporary name, written to from this thread (see
        :class:`QueuedFile`); it takes its name on ``commit``."""
        pending = self.call(lambda fs: fs.begin_file(path, mode=mode))
        return QueuedFile(self, pending)

    def make_folders(self, path: PathLike, attributes: Attributes = KEEP) -> None:
        self.call(lambda fs: fs.make_folders(path, attributes))

    def symlink(self, path: PathLike, target: str, attributes: Attributes = KEEP) -> None:
        self.call(lambda fs: fs.symlink(path, target, attributes))

    def hard_link(self, existing: PathLike, path: PathLike) -> None:
        self.call(lambda fs: fs.hard_link(existing, path))

    def rename(self, source: PathLike, target: PathLike) -> None:
        self.call(lambda fs: fs.rename(source, target))

    def remove(self, path: PathLike) -> None:
        self.call(lambda fs: fs.remove(path))

    def set_attributes(self, path: PathLike, attributes: Attributes) -> None:
        self.call(lambda fs: fs.set_attributes(path, attributes))

    def stat(self, path: PathLike) -> EntryStat | None:
        return self.call(lambda fs: fs.stat(path))

    def free_space(self) -> FreeSpace:
        return self.call(lambda fs: fs.free_space())

    def list_folder(self, path: PathLike | None = None) -> list[str]:
        return self.call(lambda fs: fs.list_folder(path))

    def remove_folder(self, path: PathLike) -> None:
        self.call(lambda fs: fs.remove_folder(path))

    def rename_folder(self, path: PathLike, name: str) -> None:
        self.call(lambda fs: fs.rename_folder(path, name))

    def read_link(self, path: PathLike) -> str:
        return self.call(lambda fs: fs.read_link(path))


class QueuedFile:
    """A file being written through a :class:`QueuedWriter`: writes are queued (the caller
    goes on producing while the writer thread writes); the first failed write is raised by
    a later write or by :meth:`commit`, which moves the file onto its name. :meth:`abort`
    (or leaving a ``with`` block on an error) drops it."""

    def __init__(self, writer: QueuedWriter, pending: PendingFile) -> None:
        self._writer = writer
        self._pending = pending
        self._stream = _Stream()
        self._done = False

    def __enter__(self) -> QueuedFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        for piece in _pieces(data):
            self._queue(functools.partial(_write, self._pending, piece))

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        for piece in _pieces(data):
            self._queue(functools.partial(_write_at, self._pending, offset, piece))
            offset += len(piece)

    def _queue(self, operation: Callable[[OfflineFilesystem], object]) -> None:
        if self._stream.error is not None:
            raise self._stream.error
        self._writer._put(_Job(operation, stream=self._stream))

    def commit(self, attributes: Attributes = KEEP) -> int:
        """Wait for the queued writes, then give the file its name; the bytes written."""
        self._done = True
        pending, stream = self._pending, self._stream
        return self._writer.call(lambda fs: _commit(fs, pending, stream, attributes))

    def abort(self) -> None:
        self._done = True
        pending = self._pending
        self._writer.call(lambda fs: fs.discard_file(pending))


def _write(pending: PendingFile, piece: bytes, _fs: OfflineFilesystem) -> None:
    pending.write(piece)


def _write_at(pending: PendingFile, offset: int, piece: bytes, _fs: OfflineFilesystem) -> None:
    pending.write_at(offset, piece)


def _commit(
    fs: OfflineFilesystem, pending: PendingFile, stream: _Stream, attributes: Attributes
) -> int:
    if stream.error is not None:
        fs.discard_file(pending)
        raise stream.error
    return fs.commit_file(pending, attributes)


def _pieces(chunk: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """``chunk`` as is when it is small bytes, else copies of at most MAX_CHUNK bytes (a
    copy: the producer may reuse its buffer once it is queued)."""
    if isinstance(chunk, bytes) and len(chunk) <= MAX_CHUNK:
        yield chunk
        return
    view = memoryview(chunk).cast("B")
    for start in range(0, len(view), MAX_CHUNK):
        yield view[start : start + MAX_CHUNK].tobytes()

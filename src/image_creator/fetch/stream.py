"""The resumable download stream: a source read once, in order, whatever the network does.

Downloads are streamed as the server sends them (``Accept-Encoding: identity`` and no
content decoding), so a digest computed on the delivered bytes is the digest of the file as
published. A dropped connection or a retryable status is tried again as the run's retry
policy says (fetch/retry.py); once bytes were delivered, a retry resumes at that offset with
``Range`` and the validators (ETag or Last-Modified) of the first response, and fails with a
clear SourceError when the server cannot send the rest of the *same* version: delivered
bytes cannot be taken back.

What arrives is held to what was announced: a download is compared with the check's probe
(its length, and its ETag or Last-Modified when it comes from the same URL) and with the
config's size, is never read past that length, and fails with both numbers when it is shorter
or longer. The transfer is watched (fetch/watch.py): a cancelled run cuts it at once, a
transfer below MIN_RATE for STALL_WINDOW is cut and resumed (STALL_RETRIES times at most).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import requests
import urllib3.exceptions

from image_creator.errors import Interrupted, SourceError
from image_creator.fetch import watch as watching
from image_creator.fetch.announced import (
    check_first_answer,
    resume_mismatch,
    same_version_known,
)
from image_creator.fetch.responses import (
    NETWORK_ERRORS,
    PERMANENT_ERRORS,
    RETRYABLE_STATUSES,
    RemoteInfo,
    content_length,
    content_range,
    cut_error,
    describe,
    give_back,
    http_error,
    parse_date,
    raise_if_cut,
    skip,
    status_text,
)
from image_creator.fetch.source import RemoteStream
from image_creator.fetch.watch import Cut, Watch
from image_creator.progress import ProgressCallback
from image_creator.units import CHUNK

if TYPE_CHECKING:
    from image_creator.fetch.client import HttpClient

logger = logging.getLogger(__name__)

# Stalls (see fetch/watch.py) a download survives, each resumed after a backoff; they are
# forgiven once a connection delivers STALL_FORGIVEN bytes (a server that sends a burst and
# stalls again every time is not making its way through a large file).
STALL_RETRIES = 2
STALL_FORGIVEN = 64 * 1024 * 1024


class HttpStream(RemoteStream):
    """An HTTP(S) source read through the run's client (see ``HttpClient.open_stream``).

    The first request is made here, so a missing source fails at once (SourceError
    ``"URL: HTTP 404 Not Found"``). Reading resumes transparently after dropped connections,
    stalls and retryable statuses (the policy's ``retries`` failures in a row, STALL_RETRIES
    stalls). ``on_progress`` gets the number of bytes received, as received.

    ``expected``: what the check's probe found; a download that announces another size, or
    (from the same URL) another ETag or Last-Modified, fails. ``expected_size``: the config's
    size of the file, likewise. The stream never reads past the first size known of these,
    and fails when the server sends fewer or more bytes. ``cancelled``: set, the transfer
    is cut within WATCH_INTERVAL and reading raises Interrupted.
    """

    def __init__(
        self,
        client: HttpClient,
        url: str,
        *,
        on_progress: ProgressCallback,
        cancelled: threading.Event | None,
        expected: RemoteInfo | None,
        expected_size: int | None,
    ) -> None:
        super().__init__(url, on_progress)
        self._client = client
        self._expected = expected
        self._expected_size = expected_size
        self._failures = 0
        self._stalls = 0
        self._last_modified_header: str | None = None
        self._response: requests.Response | None = None
        self._at_end = False
        # bytes the source has in all (announced, else known from the check or the config)
        self._limit: int | None = None
        self._response_has_length = False  # the current answer says where its body ends
        self._connection_bytes = 0  # received on the current connection
        # held while reading: a close from another thread waits for the read it woke
        self._reading = threading.Lock()
        self._watch = Watch(cancelled=cancelled)
        self._exits = contextlib.ExitStack()
        try:
            self._exits.enter_context(self._watch)
            self._connect()
        except BaseException:
            self.close()
            raise

    # connection

    def _failed(self, reason: str, response: requests.Response | None = None) -> None:
        """Count a failure: wait before the next attempt, or give up. A cut connection
        fails for the reason of its cut: cancelled, or stalled (counted apart)."""
        self._drop_response()
        cut = self._watch.reason
        if cut is not None and cut is not Cut.STALLED:
            raise cut_error(self.url, self._watch, cut)
        at = f" at byte {self.position}" if self.position else ""
        if self._watch.take_stall():
            reason = watching.stall_text()
            self._stalls += 1
            failures, allowed = self._stalls, STALL_RETRIES
            if self._stalls > STALL_RETRIES:
                raise SourceError(
                    f"{self.url}: {reason}{at} (gave up after {self._stalls} stalls)",
                    hint="the server or the network is too slow; try again later",
                )
        else:
            self._failures += 1
            failures, allowed = self._failures, self._client.policy.retries
            if self._failures > allowed:
                raise SourceError(
                    f"{self.url}: {reason}{at} (gave up after {self._failures} attempts)",
                    hint="the server or the network keeps failing; try again later",
                )
        delay = self._client.policy.delay(failures, response)
        logger.warning(
            "%s: %s at byte %d; retrying in %.1fs (%d/%d)",
            self.url,
            reason,
            self.position,
            delay,
            failures,
            allowed,
        )
        self._client.pause(delay, self._watch)

    def _drop_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _request_headers(self) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if self.position:
            headers["Range"] = f"bytes={self.position}-"
            strong = _strong_etag(self.etag)
            if strong:
                headers["If-Match"] = strong
                headers["If-Range"] = strong
            elif self._last_modified_header:
                headers["If-Range"] = self._last_modified_header
        return headers

    def _connect(self) -> None:
        """Open a response that continues at ``position``, retrying as allowed."""
        while self._response is None:
            raise_if_cut(self.url, self._watch)
            # resume where the bytes came from: another mirror would have other validators
            target = self.final_url if self.position else self.url
            try:
                # one attempt: resuming decides what the next one asks for
                response = self._client.send(
                    "GET", target, watch=self._watch, retries=0, headers=self._request_headers()
                )
            except PERMANENT_ERRORS as exc:
                if self._watch.reason is not None:  # a TLS handshake cut by the watch
                    self._failed(describe(exc))
                    continue
                raise SourceError(f"{self.url}: {describe(exc)}") from exc
            except NETWORK_ERRORS as exc:
                self._failed(describe(exc))
                continue
            status = response.status_code
            if status in (200, 206):
                try:
                    self._use(response)
                except NETWORK_ERRORS as exc:
                    response.close()
                    self._failed(describe(exc))
                except BaseException:
                    response.close()
                    raise
                continue
            response.close()
            if status == 412:
                raise self._changed("the server refused the resume request (HTTP 412)")
            if status == 416 and self._limit is not None and self.position >= self._limit:
                self._finish()
                return
            if status in RETRYABLE_STATUSES:
                self._failed(status_text(response), response)
                continue
            raise http_error(self.url, response)

    def _changed(self, detail: str) -> SourceError:
        return SourceError(
            f"{self.url}: cannot resume the download at byte {self.position}: {detail}",
            hint="the file probably changed on the server during the download; start again",
        )

    def _use(self, response: requests.Response) -> None:
        """Adopt a 200/206 response, checking that it continues the same content."""
        etag = response.headers.get("ETag")
        last_modified = response.headers.get("Last-Modified")
        first, total = content_range(response)
        size = total if response.status_code == 206 else content_length(response)
        self._response_has_length = content_length(response) is not None
        self._connection_bytes = 0
        if not self.position:
            if response.status_code == 206 and first not in (None, 0):
                raise SourceError(f"{self.url}: server sent a range from byte {first} unasked")
            check_first_answer(
                self.url, response, size, expected=self._expected, expected_size=self._expected_size
            )
            self.final_url = response.url
            self.etag = etag
            self._last_modified_header = last_modified
            self.last_modified = parse_date(last_modified)
            self._limit = _first_known(
                size,
                self._expected.size if self._expected is not None else None,
                self._expected_size,
            )
            self.size = self._limit
            self._response = response
            return

        detail = resume_mismatch(
            response, size, etag=self.etag, last_modified=self._last_modified_header, size=self.size
        )
        if detail is not None:
            raise self._changed(detail)
        if response.status_code == 206:
            if first != self.position:
                raise self._changed(f"the server answered with a range from byte {first}")
            if self.etag is None and self._last_modified_header is None:
                logger.warning(
                    "%s: resuming at byte %d without ETag or Last-Modified to check the version",
                    self.url,
                    self.position,
                )
        else:
            # ranges ignored: the whole content again; usable only if known to be the same
            if not same_version_known(response, self.etag, self._last_modified_header):
                raise self._changed(
                    "the server sent the whole file again and it cannot be identified "
                    "as the same version (no ETag or Last-Modified)"
                )
            logger.warning(
                "%s: server ignores ranges; reading %d bytes again to resume",
                self.url,
                self.position,
            )
            if skip(response, self.position, self._watch) < self.position:
                raise urllib3.exceptions.ProtocolError("connection closed while skipping")
        self._response = response
        self.resumes += 1
        logger.info("%s: resumed at byte %d", self.url, self.position)

    # reading

    def _next_chunk(self) -> bytes:
        with self._reading:
            if self._watch.was_cut is Cut.CLOSED:
                raise Interrupted("cancelled")
            return self._read_next()

    def _read_next(self) -> bytes:
        while not self._at_end:
            if self._response is None:
                self._connect()
                continue
            wanted = CHUNK
            if self._limit is not None:
                if self.position >= self._limit:
                    self._end_at_limit(self._response)
                    continue
                wanted = min(wanted, self._limit - self.position)
            try:
                # read1: what has arrived, up to a chunk: a slow link never blocks a read long
                chunk: bytes = self._response.raw.read1(wanted, decode_content=False)
            except NETWORK_ERRORS as exc:
                self._failed(f"connection lost ({describe(exc)})")
                continue
            if chunk:
                self._received(len(chunk))
                if self._response_has_length and self.position + len(chunk) == self._limit:
                    # the last byte: the connection goes back to the pool now, before
                    # another transfer takes it, and this watch may no longer cut it
                    give_back(self._response)
                    self._finish()
                return chunk
            if self._watch.was_cut is not None:  # the watch cut it: no end of the content
                self._failed("connection cut")
                continue
            if self._limit is not None and self.position < self._limit:
                self._failed(f"connection closed early ({self._limit} bytes expected)")
                continue
            self._finish()
        return b""

    def _received(self, count: int) -> None:
        self._failures = 0
        self._watch.received(count)
        self._connection_bytes += count
        if self._connection_bytes >= STALL_FORGIVEN:
            self._stalls = 0  # a healthy stretch: earlier stalls are forgiven

    def _end_at_limit(self, response: requests.Response) -> None:
        """All the announced bytes came. An answer without a length of its own ends where its
        server closes it: one more byte means it sends more than announced."""
        if not self._response_has_length:
            try:
                extra = response.raw.read1(1, decode_content=False)
            except NETWORK_ERRORS:
                extra = b""
            if extra and self._watch.was_cut is None:
                self._drop_response()
                raise SourceError(
                    f"{self.url}: the server sends more than the {self._limit} bytes announced",
                    hint="the file changed on the server since it was checked, or the server "
                    "is broken",
                )
        else:
            give_back(response)
        self._finish()

    def _finish(self) -> None:
        """The whole content came: the watch ends, so that it never cuts the connection,
        given back to the client's pool, while another transfer uses it."""
        self._at_end = True
        self._watch.stop()
        self._drop_response()

    def close(self) -> None:
        # from any thread: a read blocked in another one wakes up at once (a base image's
        # download is fed to xz from a thread of its own)
        if not self._at_end:
            self._watch.cut(Cut.CLOSED)
        # a reader in another thread wakes up now; one sleeping between attempts is not
        # waited for long
        reading = self._reading.acquire(timeout=2.0)
        try:
            self._drop_response()
        finally:
            if reading:
                self._reading.release()
        self._exits.close()
        super().close()


def _first_known(*values: int | None) -> int | None:
    return next((value for value in values if value is not None), None)


def _strong_etag(etag: str | None) -> str | None:
    return etag if etag and not etag.startswith("W/") else None

"""Small reads of an HTTP source: a whole short document, or a range of a large file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from image_creator.errors import SourceError
from image_creator.fetch import watch as watching
from image_creator.fetch.responses import (
    NETWORK_ERRORS,
    content_range,
    cut_error,
    describe,
    http_error,
    raise_if_cut,
    read_exactly,
    skip,
)
from image_creator.fetch.watch import Watch

if TYPE_CHECKING:
    from image_creator.fetch.client import HttpClient

_READ = 16 * 1024


def read_bytes(client: HttpClient, url: str, limit: int) -> bytes:
    """A small document's bytes; SourceError past ``limit`` bytes, or when it does not come
    in full within TEXT_DEADLINE seconds (retries included), however its server drips it."""
    with Watch(deadline=watching.TEXT_DEADLINE) as watch:
        response = client.get(url, watch=watch, headers={})
        with response:
            if response.status_code == 416:
                raise http_error(url, response)
            body = bytearray()
            try:
                # read1: what has arrived, so that the watch sees a slow server's progress
                while chunk := response.raw.read1(_READ, decode_content=True):
                    body += chunk
                    watch.received(len(chunk))
                    if len(body) > limit:
                        break
            except NETWORK_ERRORS as exc:
                raise_if_cut(url, watch)
                raise SourceError(f"{url}: {describe(exc)}") from exc
            # a cut connection without a length ends like a complete answer
            if watch.was_cut is not None:
                raise cut_error(url, watch, watch.was_cut)
    if len(body) > limit:
        raise SourceError(f"{url}: more than {limit} bytes; expected a short document")
    return bytes(body)


def read_range(client: HttpClient, url: str, start: int, length: int) -> bytes:
    """``length`` bytes of the source from offset ``start`` (fewer at its end, none past it).

    Uses a Range request; a server that ignores ranges is read from the start and the bytes
    before ``start`` are skipped.
    """
    if start < 0 or length < 0:
        raise ValueError("start and length must not be negative")
    if length == 0:
        return b""
    with Watch() as watch:
        response = client.get(
            url,
            watch=watch,
            headers={"Accept-Encoding": "identity", "Range": f"bytes={start}-{start + length - 1}"},
        )
        with response:
            if response.status_code == 416:
                return b""
            try:
                if response.status_code == 206:
                    first, _total = content_range(response)
                    if first != start:
                        raise SourceError(
                            f"{url}: asked for byte {start}, got a range from {first}"
                        )
                else:
                    skip(response, start, watch)
                data = read_exactly(response, length, watch)
            except NETWORK_ERRORS as exc:
                raise_if_cut(url, watch)
                raise SourceError(f"{url}: {describe(exc)}") from exc
            if watch.was_cut is not None:
                raise cut_error(url, watch, watch.was_cut)
            return data

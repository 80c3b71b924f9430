"""Probing an HTTP source: its size and validators, without downloading it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import requests

from image_creator.errors import SourceError
from image_creator.fetch import watch as watching
from image_creator.fetch.responses import (
    NETWORK_ERRORS,
    PERMANENT_ERRORS,
    RemoteInfo,
    accepts_ranges,
    content_length,
    content_range,
    describe,
    instance_digest,
    parse_date,
    raise_if_cut,
)
from image_creator.fetch.watch import Watch

if TYPE_CHECKING:
    from image_creator.fetch.client import HttpClient

logger = logging.getLogger(__name__)

_DRAINED = 64 * 1024


def probe(client: HttpClient, url: str) -> RemoteInfo:
    """Size and validators of an HTTP source, without downloading it.

    HEAD (following redirects) first; when HEAD is refused or gives no length, a GET for the
    first byte (``Range: bytes=0-0``), whose Content-Range tells the total size. Raises
    SourceError when the source is unreachable or missing, or does not answer within
    TEXT_DEADLINE.
    """
    with Watch(deadline=watching.TEXT_DEADLINE) as watch:
        info = _head(client, url, watch)
        if info is not None:
            return info
        response = client.get(
            url, watch=watch, headers={"Accept-Encoding": "identity", "Range": "bytes=0-0"}
        )
        with response:
            _first, total = content_range(response)
            if response.status_code in (206, 416):
                _drain(response)
            if response.status_code == 206:
                size, ranges = total, True
            elif response.status_code == 416:  # an empty file has no byte 0
                size, ranges = (0 if total is None else total), True
            else:
                size, ranges = content_length(response), accepts_ranges(response)
            return _info(response, size, ranges=ranges)


def _head(client: HttpClient, url: str, watch: Watch) -> RemoteInfo | None:
    """What a HEAD tells, None when it tells no length (or fails other than by having no
    connection at all: a GET is tried then)."""
    try:
        # connection failures are retried; a status is not: a GET is asked instead
        head = client.send(
            "HEAD",
            url,
            watch=watch,
            retries=client.policy.quick_retries,
            headers={"Accept-Encoding": "identity"},
            statuses=frozenset(),
        )
    except (*PERMANENT_ERRORS, requests.exceptions.ConnectionError) as exc:
        # no connection at all (or a bad URL): a GET would not do better
        raise_if_cut(url, watch)
        raise SourceError(f"{url}: {describe(exc)}") from exc
    except NETWORK_ERRORS as exc:
        raise_if_cut(url, watch)
        logger.debug("%s: HEAD failed (%s), trying GET", url, describe(exc))
        return None
    with head:
        _drain(head)
    size = content_length(head)
    if head.ok and size is not None:
        return _info(head, size, ranges=accepts_ranges(head))
    logger.debug("%s: HEAD answered %s without a length, trying GET", url, head.status_code)
    return None


def _info(response: requests.Response, size: int | None, *, ranges: bool) -> RemoteInfo:
    return RemoteInfo(
        url=response.url,
        size=size,
        etag=response.headers.get("ETag"),
        last_modified=parse_date(response.headers.get("Last-Modified")),
        accepts_ranges=ranges,
        digest=instance_digest(response),
    )


def _drain(response: requests.Response) -> None:
    """Read a short body to its end (a byte, an error text, nothing for a HEAD), so that the
    connection is kept for the next request; a longer one is dropped with its connection."""
    response.raw.read(_DRAINED, decode_content=False)

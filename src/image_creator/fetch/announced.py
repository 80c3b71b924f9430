"""Whether an answer brings the content announced: what the check saw, the size the config
gives, and (for a resumed download) the version its first answer was."""

from __future__ import annotations

import requests

from image_creator.errors import SourceError
from image_creator.fetch.responses import RemoteInfo, opaque_tag, parse_date

CHANGED_HINT = "the file changed on the server since it was checked; run the build again"


def check_first_answer(
    url: str,
    response: requests.Response,
    size: int | None,
    *,
    expected: RemoteInfo | None,
    expected_size: int | None,
) -> None:
    """The first answer of a download, announcing ``size``, must be the content the check
    saw (``expected``), of the size the config says (``expected_size``)."""
    if expected is not None:
        if expected.size is not None and size is not None and size != expected.size:
            raise SourceError(
                f"{url}: the download announces {size} bytes, the check found "
                f"{expected.size} bytes",
                hint=CHANGED_HINT,
            )
        # another mirror has other validators: only the same URL can be compared
        if response.url == expected.url:
            _check_validators(url, response, expected)
    if expected_size is not None and size is not None and size != expected_size:
        raise SourceError(
            f"{url}: the download announces {size} bytes, "
            f"the config's size is {expected_size} bytes"
        )


def _check_validators(url: str, response: requests.Response, expected: RemoteInfo) -> None:
    etag = response.headers.get("ETag")
    modified = parse_date(response.headers.get("Last-Modified"))
    if expected.etag and etag:
        if opaque_tag(etag) != opaque_tag(expected.etag):
            raise SourceError(
                f"{url}: its ETag is {etag} for the download, {expected.etag} when checked",
                hint=CHANGED_HINT,
            )
    elif expected.last_modified and modified and modified != expected.last_modified:
        raise SourceError(
            f"{url}: it was last modified {modified.isoformat()} for the "
            f"download, {expected.last_modified.isoformat()} when checked",
            hint=CHANGED_HINT,
        )


def resume_mismatch(
    response: requests.Response,
    announced: int | None,
    *,
    etag: str | None,
    last_modified: str | None,
    size: int | None,
) -> str | None:
    """Why an answer to a resume request is not the version the download started with (its
    ``etag``, ``last_modified`` header and ``size``), None when nothing says it is not."""
    new_etag = response.headers.get("ETag")
    new_modified = response.headers.get("Last-Modified")
    if etag is not None and new_etag is not None and new_etag != etag:
        return f"its ETag changed from {etag} to {new_etag}"
    if etag is None and last_modified and new_modified and new_modified != last_modified:
        return "its Last-Modified date changed"
    if size is not None and announced is not None and announced != size:
        return f"its size changed from {size} to {announced} bytes"
    return None


def same_version_known(
    response: requests.Response, etag: str | None, last_modified: str | None
) -> bool:
    """Whether a validator the download started with can be compared with this answer's."""
    return (etag is not None and response.headers.get("ETag") is not None) or (
        last_modified is not None and response.headers.get("Last-Modified") is not None
    )

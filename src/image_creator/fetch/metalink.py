"""Mirrors of a source: Metalink v4 documents (RFC 5854) and ``Link: rel=duplicate`` headers
(RFC 6249), as MirrorBrain (download.kiwix.org) serves them.

A metalink names the file's mirrors with a priority (1 is the best), its size, its digests and
often the digests of its pieces. The XML is parsed with expat and refused outright when it
declares a DTD or an entity (no entity expansion, nothing external fetched), and past
METALINK_LIMIT bytes. Hash names are the IANA ones, which are the config's own (``sha-256``).
"""

from __future__ import annotations

import logging
import re
import xml.parsers.expat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import Element, TreeBuilder

import requests

from image_creator.digests import ChecksumAlgo
from image_creator.errors import SourceError
from image_creator.fetch.mirrors import PieceHashes

logger = logging.getLogger(__name__)

NAMESPACE = "urn:ietf:params:xml:ns:metalink"
# a metalink lists piece hashes: 100 GB in 4 MiB pieces of sha-256 is about 2.5 MB
METALINK_LIMIT = 16 * 1024 * 1024
MEDIA_TYPE = "application/metalink4+xml"
# the hashes a metalink may give that we can check, weakest first
_STRENGTH = (
    ChecksumAlgo.MD5,
    ChecksumAlgo.SHA1,
    ChecksumAlgo.SHA224,
    ChecksumAlgo.SHA256,
    ChecksumAlgo.SHA384,
    ChecksumAlgo.SHA512,
)
_HEX = re.compile(r"[0-9a-f]+")
# <uri>; param=value; param="quoted value", ... (commas inside <> or quotes are no separator)
_LINK = re.compile(r'\s*<([^>]*)>((?:\s*;\s*[^;,=\s]+(?:\s*=\s*(?:"[^"]*"|[^;,\s]*))?)*)\s*(?:,|$)')
_PARAM = re.compile(r';\s*([^;,=\s]+)(?:\s*=\s*(?:"([^"]*)"|([^;,\s]*)))?')


@dataclass(frozen=True)
class Mirror:
    url: str
    priority: int = 999_999  # lower is better
    location: str | None = None  # an ISO 3166 country code


@dataclass(frozen=True)
class Metalink:
    """What a metalink says of one file."""

    name: str
    size: int | None
    hashes: dict[ChecksumAlgo, str]  # lowercase hex
    pieces: PieceHashes | None
    mirrors: tuple[Mirror, ...]  # best first

    def strongest_hash(self) -> tuple[ChecksumAlgo, str] | None:
        for algo in reversed(_STRENGTH):
            if algo in self.hashes:
                return algo, self.hashes[algo]
        return None


class MetalinkError(SourceError):
    """A document that is not a usable metalink."""


def _refuse(what: str) -> NoReturn:
    raise MetalinkError(f"refusing a metalink with {what}")


def _parse_xml(data: bytes) -> Element:
    """The document's root element; DTDs, entities and external references refused."""
    if len(data) > METALINK_LIMIT:
        raise MetalinkError(f"metalink larger than {METALINK_LIMIT} bytes")
    builder = TreeBuilder()
    parser = xml.parsers.expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def doctype(*_: object) -> None:
        _refuse("a document type declaration")

    def entity(*_: object) -> None:
        _refuse("an entity declaration")

    def external(*_: object) -> int:
        _refuse("an external entity")

    def start(tag: str, attributes: dict[str, str]) -> None:
        builder.start("{" + tag if "}" in tag else tag, attributes)

    def end(tag: str) -> None:
        builder.end("{" + tag if "}" in tag else tag)

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = external
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise MetalinkError(f"not a metalink: {exc}") from exc
    root = builder.close()
    if root.tag != f"{{{NAMESPACE}}}metalink":
        raise MetalinkError(f"not a metalink v4 document (root element {root.tag})")
    return root


def _tag(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _text(element: Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


def _algo(element: Element) -> ChecksumAlgo | None:
    """The algorithm an element's ``type`` names (IANA names: the config's), if checkable."""
    name = (element.get("type") or "").lower()
    return next((algo for algo in _STRENGTH if algo.value == name), None)


def _hex(value: str, algo: ChecksumAlgo) -> str | None:
    digest = value.strip().lower()
    return digest if _HEX.fullmatch(digest) and len(digest) == algo.hex_length else None


def parse_metalink(data: bytes, *, base_url: str, name: str | None = None) -> Metalink:
    """The entry for ``name`` (or the only file) of a Metalink v4 document fetched from
    ``base_url`` (relative URLs are resolved against it); only http(s) mirrors are kept.
    Raises MetalinkError."""
    root = _parse_xml(data)
    files = root.findall(_tag("file"))
    chosen = [f for f in files if name is None or f.get("name") == name] or (
        files if len(files) == 1 else []
    )
    if len(chosen) != 1:
        raise MetalinkError(f"the metalink lists {len(files)} files, none of them {name!r}")
    entry = chosen[0]
    size_text = _text(entry.find(_tag("size")))
    hashes: dict[ChecksumAlgo, str] = {}
    for element in entry.findall(_tag("hash")):
        algo = _algo(element)
        if algo is not None and (digest := _hex(_text(element), algo)) is not None:
            hashes[algo] = digest
    mirrors = []
    for order, element in enumerate(entry.findall(_tag("url"))):
        url = urljoin(base_url, _text(element))
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            continue
        priority = element.get("priority", "")
        mirrors.append(
            (
                int(priority) if priority.isdigit() else 999_999,
                order,
                Mirror(
                    url, int(priority) if priority.isdigit() else 999_999, element.get("location")
                ),
            )
        )
    return Metalink(
        name=entry.get("name") or "",
        size=int(size_text) if size_text.isdigit() else None,
        hashes=hashes,
        pieces=_pieces(entry),
        mirrors=tuple(mirror for _, _, mirror in sorted(mirrors, key=lambda m: m[:2])),
    )


def _pieces(entry: Element) -> PieceHashes | None:
    """The strongest usable set of piece hashes."""
    found = []
    for element in entry.findall(_tag("pieces")):
        algo = _algo(element)
        length = element.get("length", "")
        if algo is None or not length.isdigit() or int(length) <= 0:
            continue
        digests = [_hex(_text(h), algo) for h in element.findall(_tag("hash"))]
        if digests and all(digests):
            found.append(PieceHashes(algo, int(length), tuple(d for d in digests if d)))
    return max(found, key=lambda p: _STRENGTH.index(p.algo)) if found else None


def duplicates(link_headers: Iterable[str], *, base_url: str) -> list[Mirror]:
    """The mirrors named by ``Link: <...>; rel=duplicate`` headers (RFC 6249), best first."""
    found = []
    for order, (url, params) in enumerate(parse_links(link_headers)):
        if "duplicate" not in params.get("rel", "").lower().split():
            continue
        absolute = urljoin(base_url, url)
        if urlsplit(absolute).scheme.lower() not in ("http", "https"):
            continue
        pri = params.get("pri", "")
        priority = int(pri) if pri.isdigit() else 999_999
        found.append((priority, order, Mirror(absolute, priority, params.get("geo"))))
    return [mirror for _, _, mirror in sorted(found, key=lambda m: m[:2])]


def described_by(link_headers: Iterable[str], *, base_url: str) -> str | None:
    """The metalink a ``Link: <...>; rel=describedby; type=application/metalink4+xml``
    header points at."""
    for url, params in parse_links(link_headers):
        rels = params.get("rel", "").lower().split()
        if "describedby" in rels and params.get("type", "").lower() == MEDIA_TYPE:
            return urljoin(base_url, url)
    return None


def parse_links(headers: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """Every link of ``Link`` header values, with its parameters (names lowercased)."""
    links = []
    for header in headers:
        for match in _LINK.finditer(header):
            if not match.group(0).strip():
                continue
            params = {
                name.lower(): quoted or plain
                for name, quoted, plain in _PARAM.findall(match.group(2))
            }
            links.append((match.group(1).strip(), params))
    return links


# discovery ------------------------------------------------------------------------------

# discovery is a small extra: it may not hold a large download up
DISCOVERY_TIMEOUT: tuple[float, float] = (10.0, 20.0)


def find_mirrors(
    session: requests.Session, url: str, *, size: int, limit: int = 8
) -> tuple[list[Mirror], Metalink | None]:
    """The mirrors of ``url`` (best first, at most ``limit``) and its metalink, if any.

    Asks ``url`` (HEAD, redirects not followed: MirrorBrain puts its ``Link`` headers on the
    redirect) for RFC 6249 links, then fetches the metalink they point at, else
    ``<url>.meta4``. A metalink of another size is ignored. Never raises for a source that
    offers no mirrors: a failure here only means one URL.
    """
    headers: list[str] = []
    try:
        with session.head(url, allow_redirects=False, timeout=DISCOVERY_TIMEOUT) as answer:
            value = answer.headers.get("Link")
            if value:
                headers.append(value)
    except (requests.RequestException, OSError) as exc:
        logger.debug("%s: no mirror lookup (%s)", url, exc)
        return [], None
    mirrors = duplicates(headers, base_url=url)
    document = described_by(headers, base_url=url) or f"{url}.meta4"
    found = _read_metalink(session, document, name=urlsplit(url).path.rsplit("/", 1)[-1])
    if found is not None and found.size is not None and found.size != size:
        logger.warning(
            "%s: its metalink says %d bytes, the server %d: metalink ignored",
            url,
            found.size,
            size,
        )
        found = None
    if found is not None:
        mirrors = [*found.mirrors, *mirrors]
    unique: dict[str, Mirror] = {}
    for mirror in mirrors:
        unique.setdefault(mirror.url, mirror)
    return list(unique.values())[:limit], found


def _read_metalink(session: requests.Session, url: str, *, name: str) -> Metalink | None:
    try:
        with session.get(url, stream=True, timeout=DISCOVERY_TIMEOUT) as answer:
            if answer.status_code != 200:
                logger.debug("%s: HTTP %d: no metalink", url, answer.status_code)
                return None
            data = b"".join(_limited(answer.iter_content(64 * 1024), METALINK_LIMIT + 1))
            media_type = answer.headers.get("Content-Type", "").split(";")[0].strip().lower()
    except (requests.RequestException, OSError) as exc:
        logger.debug("%s: no metalink (%s)", url, exc)
        return None
    try:
        return parse_metalink(data, base_url=url, name=name)
    except MetalinkError as exc:
        # a server answering any path with a page is no news; a broken metalink is
        looks_like_one = media_type == MEDIA_TYPE or data.lstrip().startswith(b"<?xml")
        (logger.warning if looks_like_one else logger.debug)("%s: %s: ignored", url, exc)
        return None


def _limited(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        yield chunk
        if total >= limit:
            return

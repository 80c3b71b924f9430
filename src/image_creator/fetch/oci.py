"""OCI images: inspect in the registry (digest, sizes) and export for linux/arm64/v8.

A registry is not trusted: every document and blob it serves is checked against the digest
that names it before it is used, and every digest must be ``sha256:<64 hex digits>`` before
anything is named after it or any request is made with it. The platform manifest must hash
to the digest the index names, the image config to ``config.digest`` and each layer blob, as
downloaded, to its layer digest; documents of the wrong shape are refused, naming the image.

docker-export (which verifies nothing and names files after the manifest's digests) only
lays out the docker-load tar: the documents and blobs are fetched and verified here, and
the tar is verified once written (its config against ``config.digest``, its layers against
the config's diff_ids).

Every request is watched (fetch/watch.py): documents and the token get TEXT_DEADLINE in all,
a layer download is cut when it stalls or when the run is cancelled, and a layer never
inflates past what its gzip trailer says (plus LAYER_SLACK) into the build folder.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import re
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker_export
import requests
import urllib3.exceptions
from docker_export import Image, Platform

from image_creator.config.model import OCI_PLATFORM
from image_creator.config.units import CHUNK, round_up
from image_creator.errors import Interrupted, SourceError
from image_creator.fetch import watch as watching
from image_creator.fetch.http import make_session
from image_creator.fetch.watch import Cut, Watch
from image_creator.ui.base import ProgressCallback, no_progress

logger = logging.getLogger(__name__)

GZIP_MEDIA_SUFFIXES = ("gzip", "tar.gzip", "+gzip")
PLAIN_TAR_MEDIA_SUFFIXES = (".tar", "layer.v1.tar")
INDEX_MEDIA_TYPES = ", ".join((docker_export.CT_DOCKER_MANIFEST_LIST, docker_export.CT_OCI_INDEXES))
MANIFEST_MEDIA_TYPES = ", ".join((docker_export.CT_DOCKER_MANIFEST, docker_export.CT_OCI_MANIFEST))
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# The distribution spec lets registries refuse manifests over 4 MiB; configs are small too.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_TOKEN_BYTES = 64 * 1024
# What a layer may inflate to beyond the size its gzip trailer (ISIZE) gives: the size the
# check planned for. A trailer is exact for the single-member gzip streams registries serve.
LAYER_SLACK = 1024 * 1024
_SHOWN = 80  # characters of a registry's value quoted in an error
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
# what a broken or cut connection raises, from requests or from urllib3 directly
_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
# Upper bound for what docker-export adds around the layers: a tar header for each member,
# each layer's VERSION and json, manifest.json, repositories, and the end-of-archive blocks.
_EXPORT_OVERHEAD_PER_LAYER = 8 * 1024
_EXPORT_OVERHEAD_FIXED = 32 * 1024
_TAR_BLOCK = 512


@dataclass(frozen=True)
class RemoteImage:
    """An image as the registry describes it for our platform."""

    ident: str
    manifest_digest: str
    layers_uncompressed: tuple[int, ...]
    config_size: int

    @property
    def extracted_size(self) -> int:
        """Bytes of the layers once decompressed (what the image occupies once loaded)."""
        return sum(self.layers_uncompressed)

    @property
    def export_size(self) -> int:
        """Upper bound for the size of docker-export's tar of this image."""
        padded = sum(round_up(size, _TAR_BLOCK) + _TAR_BLOCK for size in self.layers_uncompressed)
        return (
            padded
            + round_up(self.config_size, _TAR_BLOCK)
            + _EXPORT_OVERHEAD_PER_LAYER * len(self.layers_uncompressed)
            + _EXPORT_OVERHEAD_FIXED
        )


@dataclass(frozen=True)
class Descriptor:
    """A blob as a manifest names it; ``digest`` is well-formed."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class PlatformManifest:
    """The linux/arm64/v8 manifest, verified against ``digest`` and read."""

    digest: str
    document: dict[str, Any]  # as served (docker-export copies it into the last layer's json)
    config: Descriptor
    layers: tuple[Descriptor, ...]


def platform() -> Platform:
    return Platform.parse(OCI_PLATFORM)


def parse_ident(ident: str) -> Image:
    return Image.parse(ident)


def export_filename(ident: str) -> str:
    """The tar's file name: docker-export's, so two versions of one image never collide."""
    return str(docker_export.get_export_filename(parse_ident(ident), platform()))


def _describe(exc: Exception) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text or type(exc).__name__


def _shown(value: object) -> str:
    """A registry's value in one line of ASCII (control characters escaped), shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 3]}..."


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class _Shape:
    """Reads one registry document, refusing any value of the wrong type with its path."""

    ident: str
    document: str  # "index", "linux/arm64/v8 manifest", "image config"

    def malformed(self, path: str, expected: str, value: object) -> SourceError:
        return SourceError(
            f"{self.ident}: the registry's {self.document} is malformed: {path}: "
            f"expected {expected}, got {_shown(value)}"
        )

    def parse(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise SourceError(
                f"{self.ident}: the registry's {self.document} is not JSON: {_describe(exc)}"
            ) from exc

    def mapping(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.malformed(path, "an object", value)
        return value

    def sequence(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.malformed(path, "a list", value)
        return value

    def text(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            raise self.malformed(path, "a string", value)
        return value

    def size(self, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.malformed(path, "a size in bytes", value)
        return value

    def digest(self, value: object, path: str) -> str:
        return checked_digest(
            self.text(value, path),
            label=f"{self.ident}: the registry's {self.document} gives {path}",
        )

    def descriptor(self, value: object, path: str) -> Descriptor:
        fields = self.mapping(value, path)
        return Descriptor(
            digest=self.digest(fields.get("digest"), f"{path}.digest"),
            size=self.size(fields.get("size"), f"{path}.size"),
            media_type=self.text(fields.get("mediaType", ""), f"{path}.mediaType"),
        )


def checked_digest(digest: str, *, label: str) -> str:
    """``digest`` if it is ``sha256:<64 hex digits>`` (what a file or URL may be named after)."""
    if not DIGEST.fullmatch(digest):
        raise SourceError(f"{label}: {_shown(digest)} is not sha256:<64 hex digits>")
    return digest


def _verify(data: bytes, digest: str, *, label: str) -> None:
    actual = _sha256(data)
    if actual != digest:
        raise SourceError(f"{label} does not match its digest {digest} (got {actual})")


class _Registry:
    """One image's registry for one run: the token, and GETs that check the status, each
    watched (cut when ``cancelled`` is set, when it stalls, or past its deadline)."""

    def __init__(
        self, ident: str, session: requests.Session, cancelled: threading.Event | None = None
    ) -> None:
        self.ident = ident
        self.image = parse_ident(ident)
        self.session = session
        self.cancelled = cancelled
        self.headers: dict[str, str] = {}
        token = self._token()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _token(self) -> str | None:
        """A pull token, as docker-export gets one: ``/v2/`` answers 401 naming the token
        realm and service (else ``/token`` of the registry is asked), the realm answers a
        JSON object with the token. Read here so that both requests are bounded."""
        registry = self.image.registry
        realm, service = f"https://{registry}/token", ""
        try:
            with self.watched(deadline=watching.TEXT_DEADLINE) as watch:
                url = f"https://{registry}/v2/"
                with self.reporting_cuts(watch, "the token", url):
                    response = self.session.get(url, timeout=docker_export.REQUEST_TIMEOUT)
                if response.status_code == requests.codes.unauthorized:
                    challenge = dict(
                        _CHALLENGE_PARAM.findall(response.headers.get("WWW-Authenticate", ""))
                    )
                    realm = challenge.get("realm", realm)
                    service = challenge.get("service", service)
                raw = self._read(
                    watch,
                    realm,
                    what="the token",
                    limit=MAX_TOKEN_BYTES,
                    params={"service": service, "scope": f"repository:{self.image.fullname}:pull"},
                    authorized=False,
                    check_status=False,
                )
            answer = json.loads(raw)
        except (requests.RequestException, ValueError) as exc:
            raise SourceError(
                f"{self.ident}: no token from the registry: {_describe(exc)}"
            ) from exc
        if not isinstance(answer, dict):
            raise SourceError(f"{self.ident}: no token from the registry: got {_shown(answer)}")
        token: object = answer.get("token") or answer.get("access_token")
        if token is not None and not isinstance(token, str):
            raise SourceError(f"{self.ident}: no token from the registry: got {_shown(token)}")
        return token or None

    def url(self, kind: str, reference: str) -> str:
        return f"https://{self.image.registry}/v2/{self.image.fullname}/{kind}/{reference}"

    @contextlib.contextmanager
    def watched(self, *, deadline: float | None = None) -> Iterator[Watch]:
        with (
            Watch(cancelled=self.cancelled, deadline=deadline) as watch,
            watch.attached(self.session),
        ):
            yield watch

    def cut_error(self, watch: Watch, what: str, url: str) -> Exception | None:
        """Why ``watch`` cut a request, as the error to raise; None if it did not."""
        reason = watch.reason if watch.was_cut is None else watch.was_cut
        if reason is None:
            return None
        if reason in (Cut.CANCELLED, Cut.CLOSED):
            return Interrupted("cancelled")
        if reason is Cut.TIMED_OUT:
            text = watching.deadline_text(watch.deadline or 0.0)
        else:
            text = watching.stall_text()
        return SourceError(f"{self.ident}: {what}: {text} ({url})")

    @contextlib.contextmanager
    def reporting_cuts(self, watch: Watch, what: str, url: str) -> Iterator[None]:
        """A network error on a request the watch cut is reported as the cut."""
        try:
            yield
        except _NETWORK_ERRORS as exc:
            error = self.cut_error(watch, what, url)
            if error is not None:
                raise error from exc
            raise

    def get(
        self, url: str, *, accept: str | None = None, what: str, watch: Watch
    ) -> requests.Response:
        headers = dict(self.headers)
        if accept is not None:
            headers["Accept"] = accept
        watch.arm()
        with self.reporting_cuts(watch, what, url):
            response = self.session.get(
                url, headers=headers, timeout=docker_export.REQUEST_TIMEOUT, stream=True
            )
        watch.register_response(response)
        if response.status_code != requests.codes.ok:
            response.close()
            raise SourceError(
                f"{self.ident}: HTTP {response.status_code} {response.reason} for {what} ({url})"
            )
        return response

    def read(self, url: str, *, accept: str | None = None, what: str, limit: int) -> bytes:
        """A whole document, refused past ``limit`` bytes or TEXT_DEADLINE seconds."""
        with self.watched(deadline=watching.TEXT_DEADLINE) as watch:
            return self._read(watch, url, accept=accept, what=what, limit=limit)

    def _read(
        self,
        watch: Watch,
        url: str,
        *,
        accept: str | None = None,
        what: str,
        limit: int,
        params: dict[str, str] | None = None,
        authorized: bool = True,
        check_status: bool = True,
    ) -> bytes:
        body = bytearray()
        headers = dict(self.headers) if authorized else {}
        if accept is not None:
            headers["Accept"] = accept
        watch.arm()
        with self.reporting_cuts(watch, what, url):
            response = self.session.get(
                url,
                headers=headers,
                params=params,
                timeout=docker_export.REQUEST_TIMEOUT,
                stream=True,
            )
            with response:
                watch.register_response(response)
                if check_status and response.status_code != requests.codes.ok:
                    raise SourceError(
                        f"{self.ident}: HTTP {response.status_code} {response.reason} "
                        f"for {what} ({url})"
                    )
                while chunk := response.raw.read1(CHUNK, decode_content=True):
                    watch.received(len(chunk))
                    body += chunk
                    if len(body) > limit:
                        raise SourceError(f"{self.ident}: {what} is larger than {limit} bytes")
        error = self.cut_error(watch, what, url) if watch.was_cut is not None else None
        if error is not None:  # cut: what came is not the whole document
            raise error
        return bytes(body)


def _platform_digest(registry: _Registry) -> str:
    """The digest the image's index names for linux/arm64/v8 (well-formed)."""
    image, ident = registry.image, registry.ident
    wanted = platform()
    reference = image.digest or image.tag
    if image.digest:
        checked_digest(image.digest, label=f"{ident}: the digest in the reference")
    raw = registry.read(
        registry.url("manifests", reference),
        accept=INDEX_MEDIA_TYPES,
        what="the index",
        limit=MAX_MANIFEST_BYTES,
    )
    if image.digest:
        _verify(raw, image.digest, label=f"{ident}: the index")
    shape = _Shape(ident, "index")
    index = shape.mapping(shape.parse(raw), "the document")
    if "manifests" not in index:
        # A single-platform image: docker-export takes those as linux/amd64.
        raise SourceError(
            f"{ident}: no {wanted} image in the registry (single-platform image, linux/amd64)"
        )
    available: list[str] = []
    for number, value in enumerate(shape.sequence(index["manifests"], "manifests")):
        entry = shape.mapping(value, f"manifests[{number}]")
        if not entry.get("platform"):
            continue
        payload = shape.mapping(entry["platform"], f"manifests[{number}].platform")
        for key in ("os", "architecture", "variant"):
            if key in payload:
                shape.text(payload[key], f"manifests[{number}].platform.{key}")
        candidate = Platform.from_payload(payload)
        if candidate == wanted:
            return shape.digest(entry.get("digest"), f"manifests[{number}].digest")
        available.append(str(candidate))
    raise SourceError(
        f"{ident}: no {wanted} image in the registry; "
        f"it has: {', '.join(available) or 'no platform at all'}"
    )


def _platform_manifest(registry: _Registry, digest: str | None) -> PlatformManifest:
    """The linux/arm64/v8 manifest: the one named ``digest``, else the one the index names."""
    ident = registry.ident
    if digest is None:
        digest = _platform_digest(registry)
    checked_digest(digest, label=f"{ident}: the {OCI_PLATFORM} manifest's digest")
    what = f"the {OCI_PLATFORM} manifest"
    raw = registry.read(
        registry.url("manifests", digest),
        accept=MANIFEST_MEDIA_TYPES,
        what=what,
        limit=MAX_MANIFEST_BYTES,
    )
    _verify(raw, digest, label=f"{ident}: {what}")
    shape = _Shape(ident, f"{OCI_PLATFORM} manifest")
    document = shape.mapping(shape.parse(raw), "the document")
    config = shape.descriptor(document.get("config"), "config")
    listed = shape.sequence(document.get("layers"), "layers")
    if not listed:
        raise SourceError(f"{ident}: the {OCI_PLATFORM} manifest has no layers")
    layers = tuple(shape.descriptor(layer, f"layers[{n}]") for n, layer in enumerate(listed))
    return PlatformManifest(digest=digest, document=document, config=config, layers=layers)


def _image_config(registry: _Registry, manifest: PlatformManifest) -> bytes:
    """The image config, verified against ``config.digest``, listing one diff_id a layer."""
    ident = registry.ident
    raw = registry.read(
        registry.url("blobs", manifest.config.digest),
        what="the image config",
        limit=MAX_CONFIG_BYTES,
    )
    _verify(raw, manifest.config.digest, label=f"{ident}: the image config")
    shape = _Shape(ident, "image config")
    config = shape.mapping(shape.parse(raw), "the document")
    rootfs = shape.mapping(config.get("rootfs"), "rootfs")
    diff_ids = shape.sequence(rootfs.get("diff_ids"), "rootfs.diff_ids")
    if len(diff_ids) != len(manifest.layers):
        raise SourceError(
            f"{ident}: the image config lists {len(diff_ids)} layers, "
            f"the manifest {len(manifest.layers)}"
        )
    return raw


def _uncompressed_layer_size(registry: _Registry, layer: Descriptor, number: int) -> int:
    """A layer's decompressed size without downloading it.

    A gzip member ends with ISIZE, its uncompressed length modulo 2^32, so a 4-byte ranged read
    of the blob gives it exactly (layers of 4 GiB and more are corrected by the compressed size).
    """
    ident, size = registry.ident, layer.size
    if layer.media_type.endswith(PLAIN_TAR_MEDIA_SUFFIXES):
        return size
    if not layer.media_type.endswith(GZIP_MEDIA_SUFFIXES):
        raise SourceError(
            f"{ident}: layer {layer.digest} is {_shown(layer.media_type)}; give filesize and "
            "fullsize for this image in the config (get-oci-sizes prints them)"
        )
    if size < 4:
        raise SourceError(f"{ident}: layers[{number}] is {size} bytes, too small for gzip")
    url = registry.url("blobs", layer.digest)
    what = f"the end of layers[{number}]"
    with registry.watched(deadline=watching.TEXT_DEADLINE) as watch:
        watch.arm()
        with registry.reporting_cuts(watch, what, url):
            response = registry.session.get(
                url,
                headers={**registry.headers, "Range": f"bytes={size - 4}-{size - 1}"},
                timeout=docker_export.REQUEST_TIMEOUT,
                stream=True,
            )
            with response:
                watch.register_response(response)
                if response.status_code != requests.codes.partial_content:
                    raise SourceError(
                        f"{ident}: the registry does not serve ranges "
                        f"(HTTP {response.status_code}); "
                        "give filesize and fullsize for this image in the config"
                    )
                tail = response.raw.read(4)
    if len(tail) != 4:
        raise SourceError(
            f"{ident}: the registry served {len(tail)} bytes for 4 of layers[{number}]"
        )
    return _inflated_size(int.from_bytes(tail, "little"), size)


def _inflated_size(isize: int, compressed: int) -> int:
    """A gzip stream's uncompressed size from its ISIZE (the size modulo 2^32)."""
    while isize < _least_inflated(compressed):  # wrapped around 2^32: 4 GiB or more
        isize += 1 << 32
    return isize


def _least_inflated(compressed: int) -> int:
    """The least a gzip stream of ``compressed`` bytes can decompress to. Incompressible data
    grows a little when gzipped (about 0.03% with zlib; 0.1% is allowed, plus the header and
    trailer), so a blob slightly larger than its ISIZE is no sign of a wrap."""
    return compressed - compressed // 1024 - 1024


def inspect_image(ident: str) -> RemoteImage:
    """The registry's description of ``ident`` for linux/arm64/v8 (no layer is downloaded):
    the manifest and the config are verified against their digests."""
    try:
        with make_session() as session:
            registry = _Registry(ident, session)
            manifest = _platform_manifest(registry, None)
            _image_config(registry, manifest)
            layers = tuple(
                _uncompressed_layer_size(registry, layer, number)
                for number, layer in enumerate(manifest.layers)
            )
    except (*_NETWORK_ERRORS, ValueError) as exc:
        raise SourceError(f"{ident}: {_describe(exc)}") from exc
    return RemoteImage(
        ident=ident,
        manifest_digest=manifest.digest,
        layers_uncompressed=layers,
        config_size=manifest.config.size,
    )


def export_image(
    ident: str,
    target: Path,
    *,
    build_dir: Path,
    manifest_digest: str | None = None,
    on_progress: ProgressCallback = no_progress,
    cancelled: threading.Event | None = None,
) -> ExportedImage:
    """Pull ``ident`` for linux/arm64/v8 into the docker-load tar ``target``, verified.

    With ``manifest_digest`` (the one a check verified), that manifest is pulled, whatever
    the tag names now; without it, the one the index names. When ``cancelled`` is set, the
    transfer under way is cut and Interrupted raised.
    """
    try:
        with make_session() as session:
            registry = _Registry(ident, session, cancelled)
            manifest = _platform_manifest(registry, manifest_digest)
            config = _image_config(registry, manifest)
            _write_export(
                registry, manifest, config, target, build_dir=build_dir, on_progress=on_progress
            )
    # EOFError, zlib.error: a layer that is not the gzip stream its media type says
    except (*_NETWORK_ERRORS, ValueError, EOFError, zlib.error) as exc:
        raise SourceError(f"{ident}: export failed: {_describe(exc)}") from exc
    return verify_export(target, label=ident, config_digest=manifest.config.digest)


def _write_export(
    registry: _Registry,
    manifest: PlatformManifest,
    config: bytes,
    target: Path,
    *,
    build_dir: Path,
    on_progress: ProgressCallback,
) -> None:
    """docker-export's tar layout, from blobs downloaded and verified here. Every name comes
    from a checked digest: layer folders are hashes of them, the config is ``<hex>.json``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(suffix=".tmp", prefix=target.stem, dir=build_dir) as work:
        image_dir = Path(work)
        parent_id = layer_id = ""
        members: list[str] = []
        for number, layer in enumerate(manifest.layers):
            layer_id = docker_export.make_layer_id(parent_id, {"digest": layer.digest})
            layer_dir = image_dir / layer_id
            layer_dir.mkdir()
            _download_layer(registry, layer, number, layer_dir, on_progress)
            members.append(f"{layer_id}/layer.tar")
            parent_id = docker_export.write_layer_metadata(
                layer_dir=layer_dir,
                layer_id=layer_id,
                parent_id=parent_id,
                layer={"digest": layer.digest},
                manifest=manifest.document,
            )
        image = registry.image
        docker_export.bundle_image(
            image=image,
            image_dir=image_dir,
            target=target,
            manifest=[
                {
                    "Config": f"{manifest.config.digest.removeprefix('sha256:')}.json",
                    "RepoTags": [f"{image.reg_fullname}:{image.tag}"],
                    "Layers": members,
                }
            ],
            config=config,
            latest_layer_id=layer_id,
        )


def _download_layer(
    registry: _Registry,
    layer: Descriptor,
    number: int,
    layer_dir: Path,
    on_progress: ProgressCallback,
) -> None:
    """``layer_dir/layer.tar``: the blob hashed as downloaded (never more than its size),
    checked against its digest, then decompressed."""
    ident, what = registry.ident, f"layers[{number}]"
    plain = layer.media_type.endswith(PLAIN_TAR_MEDIA_SUFFIXES)
    if not plain and not layer.media_type.endswith(GZIP_MEDIA_SUFFIXES):
        raise SourceError(f"{ident}: {what} is {_shown(layer.media_type)}, not a (gzip) tar")
    blob = layer_dir / ("layer.tar" if plain else "layer_gzip.tar")
    digest = hashlib.sha256()
    received = 0
    url = registry.url("blobs", layer.digest)
    with registry.watched() as watch:
        with (
            registry.get(url, what=what, watch=watch) as response,
            blob.open("wb") as file,
            registry.reporting_cuts(watch, what, url),
        ):
            # read1: what has arrived, so that the watch sees a slow link's progress; the
            # blob as served (its digest is over these bytes, whatever the encoding says)
            while chunk := response.raw.read1(CHUNK, decode_content=False):
                received += len(chunk)
                watch.received(len(chunk))
                if received > layer.size:
                    raise SourceError(
                        f"{ident}: {what} does not match its digest {layer.digest}: "
                        f"more than the {layer.size} bytes the manifest gives"
                    )
                digest.update(chunk)
                file.write(chunk)
                on_progress(len(chunk))
        error = registry.cut_error(watch, what, url) if watch.was_cut is not None else None
        if error is not None:
            raise error
    actual = f"sha256:{digest.hexdigest()}"
    if actual != layer.digest:
        raise SourceError(
            f"{ident}: {what} does not match its digest {layer.digest} (got {actual})"
        )
    if not plain:
        _inflate_layer(registry, layer, what, blob, layer_dir / "layer.tar")


def _inflate_layer(
    registry: _Registry, layer: Descriptor, what: str, blob: Path, target: Path
) -> None:
    """``target``: the verified gzip ``blob`` decompressed, never past the size its trailer
    gives (the size the check planned) plus LAYER_SLACK: a small blob may inflate to
    anything, and the build folder is on the host's disk."""
    with blob.open("rb") as file:
        file.seek(-4, 2)
        planned = _inflated_size(int.from_bytes(file.read(4), "little"), layer.size)
    limit = planned + LAYER_SLACK
    written = 0
    with gzip.open(blob, "rb") as source, target.open("wb") as sink:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise SourceError(
                    f"{registry.ident}: {what} ({layer.digest}) inflates past the {planned} "
                    f"bytes its gzip trailer gives (and {LAYER_SLACK} bytes of slack); refused"
                )
            sink.write(chunk)
            if registry.cancelled is not None and registry.cancelled.is_set():
                raise Interrupted("cancelled")
    blob.unlink()


@dataclass(frozen=True)
class ExportedImage:
    repo_tags: tuple[str, ...]
    architecture: str
    size: int
    extracted_size: int


def verify_export(tar_path: Path, *, label: str, config_digest: str | None = None) -> ExportedImage:
    """Check every layer of a docker-load tar against its config's diff_ids; describe the image.

    With ``config_digest``, the tar's config must be that blob, named after it.
    """
    try:
        with tarfile.open(tar_path) as tar:
            manifest = _read_json(tar, "manifest.json")[0]
            if config_digest is not None:
                _check_config_member(tar, manifest["Config"], config_digest, label=label)
            config = _read_json(tar, manifest["Config"])
            expected = list(config.get("rootfs", {}).get("diff_ids", []))
            actual = [_sha256_member(tar, name) for name in manifest["Layers"]]
            extracted = sum(member.size for member in tar.getmembers() if member.isfile())
    except (tarfile.TarError, OSError, KeyError, IndexError, ValueError) as exc:
        raise SourceError(f"{label}: not a readable image tar: {_describe(exc)}") from exc
    if expected != actual:
        raise SourceError(
            f"{label}: layers do not match the image config "
            f"(expected diff_ids {expected}, got {actual})"
        )
    return ExportedImage(
        repo_tags=tuple(manifest.get("RepoTags") or ()),
        architecture=str(config.get("architecture", "")),
        size=tar_path.stat().st_size,
        extracted_size=extracted,
    )


def _check_config_member(tar: tarfile.TarFile, name: str, digest: str, *, label: str) -> None:
    if name != f"{digest.removeprefix('sha256:')}.json":
        raise SourceError(f"{label}: the image tar's config is {_shown(name)}, not {digest}")
    actual = _sha256_member(tar, name)
    if actual != digest:
        raise SourceError(f"{label}: the image tar's config does not match its digest {digest}")


def same_reference(first: str, second: str) -> bool:
    """Whether two image references name the same image (``alpine:3`` is
    ``docker.io/library/alpine:3``), as docker compares them."""
    try:
        return str(parse_ident(first)) == str(parse_ident(second))
    except ValueError:
        return False


def check_tag(exported: ExportedImage, ident: str, *, label: str) -> None:
    """A downloaded tar must be tagged ``ident``: the device loads every tar in /data/images
    with ``docker load``, which names the image by its first RepoTag, and the compose file
    asks for ``ident``."""
    if not exported.repo_tags:
        raise SourceError(
            f"{label}: the image tar has no tag (manifest.json RepoTags is empty), so the "
            f"device cannot find it as {ident}",
            hint=f"export it by name: docker save {ident} (or skopeo copy to docker-archive:"
            f"FILE:{ident})",
        )
    tag = exported.repo_tags[0]
    if not same_reference(tag, ident):
        raise SourceError(
            f"{label}: the image tar is tagged {tag}, not {ident}: the device would load it "
            f"as {tag}",
            hint=f"set ident: {tag} in the config, or export the tar as {ident}",
        )


def _read_json(tar: tarfile.TarFile, name: str) -> Any:
    member = tar.extractfile(name.lstrip("/")) or tar.extractfile(name)
    if member is None:
        raise KeyError(name)
    return json.load(member)


def _sha256_member(tar: tarfile.TarFile, name: str) -> str:
    member = tar.extractfile(name)
    if member is None:
        raise KeyError(name)
    digest = hashlib.sha256()
    while chunk := member.read(CHUNK):
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"

"""A registry that lies, on loopback: it serves the OCI distribution API from documents a
test crafts, however wrong they are.

docker-export (and so image-creator) always speaks https and asks the registry's token realm
for a token, so this server speaks TLS with the test CA of tests/support/registry.py
(``make_certificates``; trusted through REQUESTS_CA_BUNDLE) and answers ``/v2/`` with a 401
whose realm is its own ``/token``.

    image = honest_image()                        # a clean arm64 + amd64 image, in memory
    served = image.documents()                    # what an honest registry serves
    served.manifests[image.arm64.digest] = ...    # ... then make it lie
    with running_hostile_registry(certs, served) as registry:
        registry.ref                              # "127.0.0.1:PORT/test/evil:1.0"
        registry.requests                         # every path asked, in order

A document may change after it has been served once (``Served.later``): what a check sees
and what a build pulls can differ, as with a registry that changes its answers on purpose.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.support.oci_layout import (
    AMD64,
    ARM64,
    EPOCH,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    OciPlatform,
    layer_tar,
)

NAME = "test/evil"
TAG = "1.0"


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Blob:
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)


@dataclass
class PlatformParts:
    """One platform's image, each part editable before it is served."""

    platform: OciPlatform
    layers: list[bytes]  # the uncompressed layer tars
    config: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def manifest_bytes(self) -> bytes:
        return canonical(self.manifest)

    @property
    def digest(self) -> str:
        return sha256(self.manifest_bytes)


def layer_blob(files: Mapping[str, bytes]) -> tuple[bytes, bytes]:
    """(uncompressed tar, gzip blob) of one layer."""
    raw = layer_tar(files)
    return raw, gzip.compress(raw, mtime=0)


def config_for(platform: OciPlatform, raw_layers: list[bytes]) -> dict[str, Any]:
    return {
        **platform.payload(),
        "created": EPOCH,
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(raw) for raw in raw_layers]},
    }


def manifest_for(config: bytes, blobs: list[bytes]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": sha256(blob), "size": len(blob)}
            for blob in blobs
        ],
    }


@dataclass
class Served:
    """Everything the registry answers. Keys are what follows ``/manifests/`` or ``/blobs/``
    in the request path (as sent, percent-decoded). A key of ``later`` replaces the same key
    once that document has been served once."""

    manifests: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    later: dict[str, bytes] = field(default_factory=dict)
    tails: dict[str, str] = field(default_factory=dict)  # path tail -> key in blobs
    token: bytes = b'{"token": "hostile"}'
    # blob key -> seconds a whole-blob GET stalls after its headers (ranged reads do not)
    stalls: dict[str, float] = field(default_factory=dict)

    def add_blob(self, data: bytes, key: str | None = None, *, tail: str | None = None) -> str:
        key = key or sha256(data)
        self.blobs[key] = data
        if tail is not None:
            self.tails[tail] = key
        return key


@dataclass
class HonestImage:
    """A clean image: every digest right. ``documents()`` renders what a registry serves."""

    arm64: PlatformParts
    amd64: PlatformParts
    layer_files: Mapping[str, bytes]

    def index(self, arm64_digest: str | None = None) -> dict[str, Any]:
        entries = []
        for parts, digest in ((self.amd64, None), (self.arm64, arm64_digest)):
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest or parts.digest,
                    "size": len(parts.manifest_bytes),
                    "platform": parts.platform.payload(),
                }
            )
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}

    def documents(self) -> Served:
        served = Served()
        served.manifests[TAG] = canonical(self.index())
        for parts in (self.arm64, self.amd64):
            served.manifests[parts.digest] = parts.manifest_bytes
            config = canonical(parts.config)
            served.add_blob(config)
            for raw in parts.layers:
                served.add_blob(gzip.compress(raw, mtime=0))
        return served


def platform_parts(platform: OciPlatform, files: Mapping[str, bytes]) -> PlatformParts:
    raw, blob = layer_blob(files)
    config = config_for(platform, [raw])
    return PlatformParts(
        platform=platform,
        layers=[raw],
        config=config,
        manifest=manifest_for(canonical(config), [blob]),
    )


def honest_image() -> HonestImage:
    files = {"hello.txt": b"hello from a registry that lies\n"}
    return HonestImage(
        arm64=platform_parts(ARM64, {**files, "etc/arch": b"arm64v8\n"}),
        amd64=platform_parts(AMD64, {**files, "etc/arch": b"amd64\n"}),
        layer_files=files,
    )


@dataclass
class HostileRegistry:
    host: str  # "127.0.0.1:PORT"
    served: Served
    requests: list[str] = field(default_factory=list)  # request paths, percent-decoded
    # (blob key, seconds the stall still had to run) for each client that hung up during one
    hangups: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.host}/{NAME}:{TAG}"


class _Handler(BaseHTTPRequestHandler):
    registry: HostileRegistry
    lock: threading.Lock
    times_served: dict[str, int]

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.lock:
            self.registry.requests.append(path)
        if path == "/v2/" or path == "/v2":
            realm = f"https://{self.registry.host}/token"
            self._answer(
                401,
                b"{}",
                headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"'},
            )
            return
        if path == "/token":
            self._answer(200, self.registry.served.token)
            return
        prefix = f"/v2/{NAME}/"
        if path.startswith(prefix + "manifests/"):
            key = path.removeprefix(prefix + "manifests/")
            body = self._document(self.registry.served.manifests, key)
            if body is None:
                self._answer(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
                return
            self._answer(200, body, content_type=_media_type(body))
            return
        body = self._blob(path)
        if body is None:
            self._answer(404, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}')
            return
        stall = self.registry.served.stalls.get(path.removeprefix(prefix + "blobs/"))
        if stall is not None and "Range" not in self.headers:
            self._stall(path.removeprefix(prefix + "blobs/"), body, stall)
            return
        self._ranged(body)

    def _stall(self, key: str, body: bytes, seconds: float) -> None:
        """Headers, then nothing for ``seconds`` (then the body), noting a client hang-up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        deadline = time.monotonic() + seconds
        self.connection.settimeout(0.05)
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.connection.recv(1):
                    continue
            except TimeoutError:
                continue
            except OSError:
                pass
            with self.lock:
                self.registry.hangups.append((key, left))
            self.close_connection = True
            return
        self.connection.settimeout(None)
        self.wfile.write(body)

    def _document(self, documents: Mapping[str, bytes], key: str) -> bytes | None:
        with self.lock:
            count = self.times_served.get(key, 0)
            self.times_served[key] = count + 1
        if count > 0 and key in self.registry.served.later:
            return self.registry.served.later[key]
        return documents.get(key)

    def _blob(self, path: str) -> bytes | None:
        """The blob asked for, by its exact digest, else by how the path ends (``tails``: a
        client may resolve the ``..`` of a digest that is a path before sending it)."""
        served = self.registry.served
        prefix = f"/v2/{NAME}/blobs/"
        key = path.removeprefix(prefix) if path.startswith(prefix) else None
        if key is not None and key in served.blobs:
            return self._document(served.blobs, key)
        for tail, blob_key in served.tails.items():
            if path.endswith(tail):
                return self._document(served.blobs, blob_key)
        return None

    def _ranged(self, body: bytes) -> None:
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes="):
            first_text, _, last_text = wanted.removeprefix("bytes=").partition("-")
            first = int(first_text)
            last = min(int(last_text), len(body) - 1) if last_text else len(body) - 1
            self._answer(
                206,
                body[first : last + 1],
                headers={"Content-Range": f"bytes {first}-{last}/{len(body)}"},
                content_type="application/octet-stream",
            )
            return
        self._answer(200, body, content_type="application/octet-stream")

    def _answer(
        self,
        status: int,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _media_type(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return "application/json"
    media_type = document.get("mediaType") if isinstance(document, dict) else None
    return media_type if isinstance(media_type, str) else "application/json"


@contextlib.contextmanager
def running_hostile_registry(certs: Path, served: Served) -> Iterator[HostileRegistry]:
    """Serve ``served`` over TLS with ``certs``/server.crt (see make_certificates)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    registry = HostileRegistry(host=f"127.0.0.1:{server.server_address[1]}", served=served)
    handler = type(
        "HostileHandler",
        (_Handler,),
        {"registry": registry, "lock": threading.Lock(), "times_served": {}},
    )
    server.RequestHandlerClass = handler
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield registry
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()

"""A real OCI registry on loopback (CNCF distribution, ``docker-registry serve``) for tests.

docker-export always speaks https and always asks the registry's token realm for a token, so
the registry runs with TLS (a throwaway CA, trusted through REQUESTS_CA_BUNDLE) and
``auth: silly``, whose realm is a tiny HTTP endpoint answering ``{"token": "anonymous"}``.
Images are written as OCI layouts (tests/support/oci_layout.py) and pushed as indexes with
``skopeo copy --all``; distribution 2.8 mangles single-manifest pushes for docker-export.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from image_creator.system.run import run, which
from tests.support.oci_layout import (
    AMD64,
    ARM64,
    LayersSpec,
    OciLayout,
    OciPlatform,
    PlatformImage,
    build_layout,
)

LOOPBACK_NO_PROXY = "127.0.0.1,localhost"
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class ImageSpec:
    """An image to push: ``name`` needs a namespace (``test/hello``, not ``hello``)."""

    name: str
    tag: str
    platforms: tuple[OciPlatform, ...] = (ARM64, AMD64)
    layers: LayersSpec | None = None

    @property
    def name_tag(self) -> str:
        return f"{self.name}:{self.tag}"


# what the session fixture pushes
DEFAULT_IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec("test/hello", "1.0"),
    ImageSpec("test/hello", "2.0"),
    ImageSpec("test/amd64only", "1.0", platforms=(AMD64,)),
)


@dataclass(frozen=True)
class PushedImage:
    """An image in the registry: its full reference and what it contains per platform."""

    ref: str  # "127.0.0.1:PORT/test/hello:1.0", what docker_export.Image.parse takes
    name: str
    tag: str
    layout: OciLayout

    @property
    def index_digest(self) -> str:
        return self.layout.index_digest

    @property
    def platforms(self) -> tuple[OciPlatform, ...]:
        return tuple(image.platform for image in self.layout.images)

    def image_for(self, platform: OciPlatform | str) -> PlatformImage:
        """Digests and files of one platform (``"linux/arm64/v8"`` or an OciPlatform)."""
        return self.layout.image_for(platform)


@dataclass(frozen=True)
class Registry:
    """A running registry. ``images`` maps ``"test/hello:1.0"`` to what was pushed."""

    host: str  # "127.0.0.1:PORT"
    ca: Path  # the test CA certificate (PEM)
    cert_dir: Path  # a folder holding only ca.crt, for skopeo's --*-cert-dir
    workdir: Path
    images: Mapping[str, PushedImage] = field(default_factory=dict)

    def ref(self, name_tag: str) -> str:
        """Full reference of ``"test/hello:1.0"``."""
        return f"{self.host}/{name_tag}"

    def __getitem__(self, name_tag: str) -> PushedImage:
        return self.images[name_tag]

    def access_log(self, path_part: str) -> list[tuple[str, str]]:
        """(request line, User-Agent) of each request so far whose path holds ``path_part``,
        from the registry's access log (combined format: the User-Agent is the last quoted
        field)."""
        entries = []
        for line in (self.workdir / "registry.log").read_text(errors="replace").splitlines():
            quoted = line.split('"')
            if len(quoted) >= 7 and path_part in quoted[1]:
                entries.append((quoted[1], quoted[-2]))
        return entries

    def push(self, spec: ImageSpec) -> PushedImage:
        """Build and push one more image (overwrites the tag if it exists).

        The registry is shared by the whole session: push under a name no other test uses.
        """
        layouts = self.workdir / "layouts"
        layouts.mkdir(exist_ok=True)
        layout_dir = layouts / f"{spec.name.replace('/', '_')}_{spec.tag}_{time.monotonic_ns()}"
        layout = build_layout(layout_dir, spec.tag, platforms=spec.platforms, layers=spec.layers)
        policy = self.workdir / "policy.json"
        run(
            [
                "skopeo",
                "--policy",
                policy,
                "copy",
                "--quiet",
                "--all",
                "--dest-cert-dir",
                self.cert_dir,
                "--dest-creds",
                "anon:anon",
                f"oci:{layout_dir}:{spec.tag}",
                f"docker://{self.ref(spec.name_tag)}",
            ],
            env=_no_proxy_env(),
        )
        return PushedImage(ref=self.ref(spec.name_tag), name=spec.name, tag=spec.tag, layout=layout)


def _no_proxy_env() -> dict[str, str]:
    existing = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    value = ",".join(part for part in (existing, LOOPBACK_NO_PROXY) if part)
    return {"NO_PROXY": value, "no_proxy": value}


def make_certificates(folder: Path) -> None:
    """A test CA (ca.crt) and a server certificate for 127.0.0.1 signed by it."""

    def openssl(*args: str | Path) -> None:
        run(["openssl", *args])

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-days", "30",
        "-keyout", folder / "ca.key", "-out", folder / "ca.crt",
        "-subj", "/CN=image-creator test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl(
        "req", *ec, "-keyout", folder / "server.key", "-out", folder / "server.csr",
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    openssl(
        "x509", "-req", "-in", folder / "server.csr",
        "-CA", folder / "ca.crt", "-CAkey", folder / "ca.key", "-CAcreateserial",
        "-days", "30", "-out", folder / "server.crt", "-extfile", folder / "server.ext",
    )  # fmt: skip


class _TokenHandler(BaseHTTPRequestHandler):
    """The token realm of ``auth: silly``: any token is accepted, so hand out a fixed one."""

    def do_GET(self) -> None:
        body = json.dumps({"token": "anonymous", "access_token": "anonymous"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _token_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int, context: ssl.SSLContext) -> bool:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=1)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status in (200, 401)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _config(folder: Path, port: int, token_port: int) -> Path:
    config = {
        "version": 0.1,
        # the access log (in registry.log) tells who asked what: see Registry.access_log
        "log": {"level": "error", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(folder / "data")},
            "delete": {"enabled": True},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "secret": "test-only",
            "tls": {
                "certificate": str(folder / "server.crt"),
                "key": str(folder / "server.key"),
            },
        },
        "auth": {
            "silly": {"realm": f"http://127.0.0.1:{token_port}/token", "service": "test-registry"}
        },
    }
    path = folder / f"config-{port}.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def _registry_process(folder: Path, token_port: int) -> Iterator[int]:
    """Start ``docker-registry serve`` on a free port; yield the port; always stop it."""
    binary = which("docker-registry") or "docker-registry"
    context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    log_path = folder / "registry.log"
    # a free port can be taken between probing and binding: try a few
    for _attempt in range(3):
        port = _free_port()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [binary, "serve", str(_config(folder, port, token_port))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                if _answers(port, context):
                    break
                time.sleep(0.02)
            else:
                continue  # exited (port taken?) or never answered: next attempt
            yield port
            return
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not start; its log ends with:\n{tail}")


@contextlib.contextmanager
def running_registry(
    workdir: Path, images: Sequence[ImageSpec] = DEFAULT_IMAGES
) -> Iterator[Registry]:
    """Start a registry in ``workdir``, push ``images``; stop everything on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    make_certificates(workdir)
    cert_dir = workdir / "certs.d"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes((workdir / "ca.crt").read_bytes())
    # our own policy: the host may have no /etc/containers/policy.json
    (workdir / "policy.json").write_text(
        json.dumps({"default": [{"type": "insecureAcceptAnything"}]})
    )
    with _token_server() as token_port, _registry_process(workdir, token_port) as port:
        registry = Registry(
            host=f"127.0.0.1:{port}", ca=workdir / "ca.crt", cert_dir=cert_dir, workdir=workdir
        )
        pushed = {spec.name_tag: registry.push(spec) for spec in images}
        yield Registry(
            host=registry.host,
            ca=registry.ca,
            cert_dir=registry.cert_dir,
            workdir=workdir,
            images=pushed,
        )

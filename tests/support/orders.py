"""Hotspot orders rendered by offspot-config's real ``ConfigBuilder``, served from loopback.

The Kiwix Hotspot ordering service (offspot/imager-service) turns an order into a config
with ``offspot_config.builder.ConfigBuilder`` and a worker builds it with image-creator. These
helpers render orders the same way, with every source moved to the test servers:

- every image the builder or the app catalog names (``ghcr.io/offspot/kiwix-serve:3.8.2_1``)
  is pushed to the test registry under the same path (``127.0.0.1:PORT/offspot/...``), with
  ``filesize``/``fullsize`` measured as get-oci-sizes measures them (:func:`push_order_images`);
- every URL the catalog carries (app and files archives, icons) and the ZIMs, readers, the
  edupi archive and the base image are served by the test HTTP server (:func:`serve_world`);
- the builder reads its images and catalog from module globals: :func:`install_world`
  replaces them through pytest's ``monkeypatch``, so nothing outlives the test.

Archives are compressible (HTML and text: expanded bytes exceed archive bytes, as with the
real ones) and some carry macOS junk (``__MACOSX/``, ``.DS_Store``) that must not reach the
image. Their declared sizes follow the catalog's convention: the archive's bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import offspot_config
import pytest
from docker_export import Image
from offspot_config import builder as offspot_builder
from offspot_config.catalog import AppCatalog
from offspot_config.inputs.checksum import Checksum
from offspot_config.packages import ZimPackage
from offspot_config.utils.dashboard import Link, Reader
from offspot_config.utils.download import get_online_rsc_size

from image_creator.fetch.client import HttpClient
from image_creator.oci_sizes import sizes_of_image
from tests.support.archives import zip_bytes
from tests.support.httpserver import HttpServer
from tests.support.oci_layout import ARM64
from tests.support.registry import ImageSpec, Registry

# Names a macOS archiver adds; the device never wants them.
MACOS_JUNK_PARTS = ("__MACOSX", ".DS_Store")
ADMIN_ENVIRON = {"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "admin-password"}
FILE_MANAGER = "file-manager.offspot.kiwix.org"
MAGOE = "magoe.offspot.kiwix.org"
CONTENT_FILTER = "contentfilter.offspot.kiwix.org"
FILES_PACKAGE = "com.kylecorry.trail_sense.offspot.kiwix.org"


@dataclass(frozen=True)
class OrderImage:
    """A real image ident and the test image standing in for it."""

    real: str  # ghcr.io/offspot/kiwix-serve:3.8.2_1
    ref: str  # 127.0.0.1:PORT/offspot/kiwix-serve:3.8.2_1
    filesize: int
    fullsize: int


def real_image_idents() -> list[str]:
    """Every image ident the builder (internal images) and the app catalog name."""
    idents = [str(entry["source"]) for entry in offspot_builder.INTERNAL_IMAGES.values()]
    idents += [entry["image"] for entry in _catalog_entries() if entry["kind"] == "app"]
    return sorted(set(idents))


def mirrored_ref(registry: Registry, real: str) -> str:
    """``ghcr.io/offspot/x:1`` -> ``127.0.0.1:PORT/offspot/x:1``."""
    image = Image.parse(real)
    return f"{registry.host}/{image.repository}/{image.name}:{image.tag}"


def _image_layers(real: str) -> list[dict[str, bytes]]:
    # distinct content per image, so every image has its own digests
    return [
        {
            "etc/offspot-image": f"{real}\n".encode(),
            "srv/index.html": f"<h1>{real}</h1>\n".encode() * 64,
        }
    ]


def push_order_images(registry: Registry, workdir: Path) -> dict[str, OrderImage]:
    """Push an arm64 stand-in of every real image and measure it; keyed by the real ident.

    Needs REQUESTS_CA_BUNDLE trusting the registry (measuring exports the image).
    """
    images: dict[str, OrderImage] = {}
    for real in real_image_idents():
        ref = mirrored_ref(registry, real)
        parsed = Image.parse(ref)
        registry.push(
            ImageSpec(
                f"{parsed.repository}/{parsed.name}",
                parsed.tag,
                platforms=(ARM64,),
                layers=_image_layers(real),
            )
        )
        with HttpClient() as client:
            sizes = sizes_of_image(ref, workdir=workdir, client=client)
        images[real] = OrderImage(
            real=real, ref=ref, filesize=sizes.filesize, fullsize=sizes.fullsize
        )
    return images


def _catalog_entries() -> list[dict[str, Any]]:
    entries = json.loads((resources.files(offspot_config) / "catalog.json").read_bytes())
    assert isinstance(entries, list)
    return entries


def html_tree(title: str, *, junk: bool) -> dict[str, bytes]:
    """A small web app or files bundle: text, so that it compresses well."""
    paragraph = f"<p>{title}: offline content for everyone.</p>\n".encode()
    tree = {
        "index.html": b"<!doctype html><title>" + title.encode() + b"</title>\n" + paragraph * 400,
        "assets/app.js": b"console.log('offline');\n" * 800,
        "assets/style.css": b"body { margin: 0; padding: 0; }\n" * 500,
        "docs/readme.txt": f"{title}\n".encode() * 300,
    }
    if junk:
        tree.update(
            {
                "__MACOSX/._index.html": b"\x00\x05\x16\x07" + b"\x00" * 60,
                "__MACOSX/assets/._app.js": b"\x00\x05\x16\x07" + b"\x00" * 60,
                ".DS_Store": b"\x00\x00\x00\x01Bud1" + b"\x00" * 100,
                "assets/.DS_Store": b"\x00\x00\x00\x01Bud1" + b"\x00" * 100,
            }
        )
    return tree


def is_macos_junk(name: str) -> bool:
    return any(part in MACOS_JUNK_PARTS for part in PurePosixPath(name).parts)


def fake_zim(name: str, size: int) -> bytes:
    """Bytes standing in for a ZIM file (its magic number, then filler)."""
    seed = hashlib.sha256(name.encode()).digest()
    body = (seed * (size // len(seed) + 1))[: size - 4]
    return b"ZIM\x04" + body


def fake_png(label: str) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + hashlib.sha256(label.encode()).digest()


@dataclass
class OrderWorld:
    """Everything an order can reference, served on loopback, and what each URL holds."""

    server: HttpServer
    images: Mapping[str, OrderImage]  # by real ident
    base_url: str
    rootfs_size: int
    catalog_entries: list[dict[str, Any]]  # catalog.json with local URLs, images and sizes
    blobs: dict[str, bytes] = field(default_factory=dict)  # URL -> bytes served
    trees: dict[str, dict[str, bytes]] = field(default_factory=dict)  # archive URL -> members

    def serve(self, path: str, content: bytes) -> str:
        url = self.server.add(path, content)
        self.blobs[url] = content
        return url

    def serve_zip(self, path: str, tree: dict[str, bytes]) -> str:
        url = self.serve(path, zip_bytes(tree))
        self.trees[url] = tree
        return url

    def serve_md5(self, url: str) -> str:
        """Serve ``URL.md5`` as md5sum prints it; return that URL."""
        digest = hashlib.md5(self.blobs[url]).hexdigest()
        name = PurePosixPath(urlsplit(url).path).name
        return self.serve(urlsplit(url).path + ".md5", f"{digest}  {name}\n".encode())

    @property
    def zim_mirror(self) -> str:
        """What the service passes as ``kiwix_zim_mirror`` (ZIM URLs are rewritten to it)."""
        return self.server.url("/mirror/zim/")


def serve_world(
    server: HttpServer,
    images: Mapping[str, OrderImage],
    *,
    base_xz: bytes,
    rootfs_size: int,
) -> OrderWorld:
    """Serve the base image and every catalog download and icon; a catalog pointing at them."""
    base_url = server.add("/base/offspot-base-arm64-test.img.xz", base_xz)
    world = OrderWorld(
        server=server,
        images=images,
        base_url=base_url,
        rootfs_size=rootfs_size,
        catalog_entries=[],
    )
    world.blobs[base_url] = base_xz
    for number, original in enumerate(_catalog_entries()):
        entry = dict(original)
        if entry.get("icon_url"):
            entry["icon_url"] = world.serve(
                "/drive" + urlsplit(entry["icon_url"]).path, fake_png(entry["ident"])
            )
        if entry.get("download_url"):
            via = entry.get("via") or entry.get("download_via")
            assert via == "zip", f"catalog entry {entry['ident']}: via {via!r} not served"
            # every other archive carries macOS junk
            tree = html_tree(entry["title"], junk=number % 2 == 0)
            url = world.serve_zip("/drive" + urlsplit(entry["download_url"]).path, tree)
            entry["download_url"] = url
            entry["download_size"] = len(world.blobs[url])  # archive bytes, as the catalog
            entry["download_checksum"] = {
                "algo": "md5",
                "value": hashlib.md5(world.blobs[url]).hexdigest(),
            }
        if entry["kind"] == "app":
            image = images[entry["image"]]
            entry.update(
                image=image.ref, image_filesize=image.filesize, image_fullsize=image.fullsize
            )
        world.catalog_entries.append(entry)
    return world


def install_world(monkeypatch: pytest.MonkeyPatch, world: OrderWorld) -> Any:
    """Point the builder's internal images and app catalog at the world; return the catalog.

    ``ConfigBuilder`` reads both from ``offspot_config.builder``'s globals: they are replaced
    (not mutated) for the duration of the test.
    """
    internal = {
        key: {
            "source": world.images[entry["source"]].ref,
            "filesize": world.images[entry["source"]].filesize,
            "fullsize": world.images[entry["source"]].fullsize,
        }
        for key, entry in offspot_builder.INTERNAL_IMAGES.items()
    }
    catalog = AppCatalog(world.catalog_entries)
    monkeypatch.setattr(offspot_builder, "INTERNAL_IMAGES", internal)
    monkeypatch.setattr(offspot_builder, "app_catalog", catalog)
    return catalog


# ---------------------------------------------------------------------------------------------
# orders


def _zim(
    world: OrderWorld,
    *,
    name: str,
    flavour: str,
    size: int,
    period: str = "2024-01",
    checked: bool = True,
) -> Any:
    """A ZimPackage as the service builds it from the Kiwix catalog, served on the mirror.

    Its download URL is the load balancer's (download.kiwix.org): the builder rewrites it to
    ``kiwix_zim_mirror``. ``checked`` adds an md5 checksum read from ``URL.md5``.
    """
    filename = f"{name}_{flavour}_{period}.zim" if flavour else f"{name}_{period}.zim"
    relative = f"{name.split('_', 1)[0]}/{filename}"
    mirror_url = world.serve(f"/mirror/zim/{relative}", fake_zim(filename, size))
    checksum = None
    if checked:
        checksum = Checksum(algo="md5", value=world.serve_md5(mirror_url), kind="url")
    return ZimPackage(
        ident=f"openZIM:{name}:{flavour}",
        name=name,
        title=name.replace("_", " ").title(),
        description=f"{name} for tests",
        languages=["eng"],
        tags=["_category:wikipedia", "_pictures:no"],
        flavour=flavour,
        version=period,
        download_url=f"https://download.kiwix.org/zim/{relative}",
        download_size=size,
        download_checksum=checksum,
        icon_url=world.serve(f"/catalog/icons/{name}.png", fake_png(name)),
    )


def _builder(world: OrderWorld, *, name: str, passphrase: str | None = None) -> Any:
    return offspot_builder.ConfigBuilder(
        base=offspot_builder.BaseConfig(source=world.base_url, rootfs_size=world.rootfs_size),
        name=name,
        domain=name.lower(),
        welcome_domain="goto.kiwix",
        tld="offspot",
        ssid=name,
        passphrase=passphrase,
        timezone="Africa/Bamako",
        environ=dict(ADMIN_ENVIRON),
        write_config=True,
        kiwix_zim_mirror=world.zim_mirror,
    )


def render_zim_only(world: OrderWorld) -> str:
    """The smallest real order: a dashboard and two ZIMs (one with an md5 URL checksum)."""
    builder = _builder(world, name="zimonly")
    builder.add_dashboard(allow_zim_downloads=True, readers=None, links=[])
    builder.add_captive_portal()
    builder.add_reverseproxy()
    builder.add_zim(_zim(world, name="wikipedia_en_test", flavour="maxi", size=300_000))
    builder.add_zim(_zim(world, name="wiktionary_fr_test", flavour="", size=120_000, checked=False))
    builder.add_hwclock()
    return str(builder.render())


def render_full(world: OrderWorld) -> str:
    """An order with everything the service offers: apps with downloads and volumes, a files
    package, edupi resources into the file manager's folder, readers, links, metrics, the
    captive portal, the admin UI and (always) the branding files.
    """
    builder = _builder(world, name="fullorder", passphrase="secret-passphrase")
    readers = [
        Reader.using(
            platform="windows",
            download_url=world.serve(
                "/release/kiwix-desktop/kiwix-desktop_windows_x64_2.3.1.zip",
                b"MZ" + fake_zim("reader-windows", 40_000),
            ),
        ),
        Reader.using(
            platform="android",
            download_url=world.serve(
                "/release/kiwix-android/kiwix-3.10.0.apk", b"PK" + fake_zim("apk", 30_000)
            ),
        ),
    ]
    builder.add_dashboard(
        allow_zim_downloads=True,
        readers=readers,
        links=[Link("Metrics", "//metrics.${FQDN}")],
    )
    builder.add_captive_portal()
    builder.add_reverseproxy()
    builder.add_zim(_zim(world, name="wikipedia_en_test", flavour="maxi", size=200_000))
    builder.add_zim(_zim(world, name="wikibooks_en_test", flavour="nopic", size=80_000))
    for ident in (FILE_MANAGER, MAGOE, CONTENT_FILTER):
        builder.add_app(offspot_builder.app_catalog[ident])
    builder.add_files_package(offspot_builder.app_catalog[FILES_PACKAGE])
    edupi_url = world.serve_zip(
        "/drive/edupi/resources.zip", html_tree("EduPi resources", junk=True)
    )
    builder.add_file(
        url_or_content=edupi_url,
        to="${APP_DIR:" + FILE_MANAGER + "}",
        size=get_online_rsc_size(edupi_url),
        via="zip",
    )
    builder.add_hwclock()
    builder.add_metrics()
    builder.add_adminui()
    return str(builder.render())


# A whole number of sectors, in decimal bytes as SD cards are sold.
EXPLICIT_OUTPUT_SIZE = 400_000_000


def render_sized(world: OrderWorld) -> str:
    """A small order with an explicit output size (set_output_size), and a reader whose size
    the service could not learn: ``Reader.using`` writes ``size: -1`` when the server sends
    no Content-Length."""
    url = world.serve(
        "/release/kiwix-desktop/kiwix-desktop_x86_64_2.3.1.appimage",
        b"\x7fELF" + fake_zim("reader-linux", 20_000),
    )
    unknown_size = Reader(
        platform="linux", download_url=url, filename=Reader.filename_from_url(url), size=-1
    )
    builder = _builder(world, name="sized")
    builder.add_dashboard(allow_zim_downloads=False, readers=[unknown_size])
    builder.add_reverseproxy()
    builder.add_zim(_zim(world, name="wikipedia_fr_test", flavour="mini", size=150_000))
    builder.add_app(offspot_builder.app_catalog[MAGOE])
    builder.set_output_size(EXPLICIT_OUTPUT_SIZE)
    return str(builder.render())


ORDERS = {"zim_only": render_zim_only, "full": render_full, "sized": render_sized}

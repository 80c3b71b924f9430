"""What a hotspot does with a built image on first boot, re-implemented to check the image.

Each ``check_*`` returns a list of problems (empty when the image is right) so that a test can
report every one of them at once. They read a data partition dumped with debugfs and the boot
partition's ``offspot.yaml`` read with mtools: nothing is mounted.

- offspot.yaml is read with offspot-config's own YAML loader and checked with
  offspot_runtime's checks, as offspot-runtime-config does at boot;
- the image loader loads every tar of /data/images (``docker load``) and the compose file
  names images with ``pull_policy: never``: each tar's ``manifest.json[0].RepoTags[0]`` must be
  a compose service's ``image:``, every such image must have its tar, and every layer must
  match its config's ``diff_ids``;
- the ordering service's worker relies on ``/data/image.yaml`` (offspot-config's own
  ``write_config`` destination) and image-creator documents ``/data/conf/image.yaml``: both
  hold the config's bytes as given.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from offspot_config.utils.yaml import yaml_load
from offspot_runtime import checks

from tests.support.orders import OrderWorld, is_macos_junk

DATA = PurePosixPath("/data")
ARCHIVE_VIAS = ("tar", "gztar", "bztar", "xztar", "zip")


def load_offspot_yaml(text: str) -> Any:
    """YAML as the device reads it (offspot_config.utils.yaml.yaml_load)."""
    return yaml_load(text)


def check_offspot_yaml(raw: bytes, rendered: Mapping[str, Any]) -> list[str]:
    """offspot.yaml on the boot partition: the rendered ``offspot`` section, valid for the
    runtime (compose with port 80 published, hostname, timezone, SSID, passphrase)."""
    problems: list[str] = []
    try:
        offspot = load_offspot_yaml(raw.decode("utf-8"))
    except Exception as exc:  # the device would refuse it: report, do not crash the test
        return [f"offspot.yaml: unreadable by offspot-config: {exc}"]
    if offspot != rendered["offspot"]:
        problems.append("offspot.yaml: differs from the config's offspot section")
    if not isinstance(offspot, dict):
        return [*problems, f"offspot.yaml: not a mapping: {type(offspot).__name__}"]
    results = {
        "containers": checks.is_valid_compose(offspot.get("containers"), required_ports=[80]),
        "hostname": checks.is_valid_hostname(offspot.get("hostname")),
        "timezone": checks.is_valid_timezone(offspot.get("timezone")),
        "ap.ssid": checks.is_valid_ssid((offspot.get("ap") or {}).get("ssid")),
    }
    passphrase = (offspot.get("ap") or {}).get("passphrase")
    if passphrase is not None:
        results["ap.passphrase"] = checks.is_valid_wpa2_passphrase(passphrase)
    ethernet = offspot.get("ethernet") or {}
    results["ethernet"] = checks.is_valid_ethernet_config(
        ethernet.get("type"), ethernet.get("address"), ethernet.get("routers"), ethernet.get("dns")
    )
    for key, result in results.items():
        if not result.passed:
            problems.append(f"offspot.yaml: {key}: {result.help_text}")
    return problems


def compose_images(document: Mapping[str, Any]) -> set[str]:
    services = document["offspot"]["containers"]["services"]
    return {str(service["image"]) for service in services.values()}


def _layer_digests_ok(tar: tarfile.TarFile, manifest: Mapping[str, Any]) -> list[str]:
    config_member = tar.extractfile(str(manifest["Config"]))
    if config_member is None:
        return [f"config {manifest['Config']} missing"]
    diff_ids = json.loads(config_member.read())["rootfs"]["diff_ids"]
    layers = list(manifest["Layers"])
    if len(layers) != len(diff_ids):
        return [f"{len(layers)} layers for {len(diff_ids)} diff_ids"]
    problems = []
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        member = tar.extractfile(str(layer))
        if member is None:
            problems.append(f"layer {layer} missing")
            continue
        digest = hashlib.sha256()
        while chunk := member.read(1 << 20):
            digest.update(chunk)
        if f"sha256:{digest.hexdigest()}" != diff_id:
            problems.append(f"layer {layer} does not match {diff_id}")
    return problems


def check_image_loader(dump: Path, document: Mapping[str, Any]) -> list[str]:
    """/data/images as the device's loader sees it, against the compose services."""
    problems: list[str] = []
    wanted = compose_images(document)
    configured = {str(image["ident"]) for image in document["oci_images"]}
    if configured != wanted:
        problems.append(f"oci_images {sorted(configured)} != compose images {sorted(wanted)}")
    loaded: dict[str, str] = {}
    folder = dump / "images"
    tars = sorted(folder.glob("*.tar")) if folder.is_dir() else []
    for path in tars:
        try:
            with tarfile.open(path) as tar:
                member = tar.extractfile("manifest.json")
                assert member is not None
                manifest = json.loads(member.read())
                tag = str(manifest[0]["RepoTags"][0])
                problems += [
                    f"images/{path.name}: {p}" for p in _layer_digests_ok(tar, manifest[0])
                ]
        except (tarfile.TarError, KeyError, IndexError, AssertionError, ValueError) as exc:
            problems.append(f"images/{path.name}: not a docker-load tar: {exc!r}")
            continue
        if tag not in wanted:
            problems.append(f"images/{path.name}: RepoTags[0] {tag!r} is no compose image")
        loaded[tag] = path.name
    for image in sorted(wanted - set(loaded)):
        problems.append(f"compose image {image!r} has no tar in /data/images")
    return problems


def check_image_config(dump: Path, config_bytes: bytes) -> list[str]:
    """write_config: the config's bytes as given, at /data/image.yaml and /data/conf/image.yaml."""
    problems = []
    for relative in ("image.yaml", "conf/image.yaml"):
        path = dump / relative
        if not path.is_file():
            problems.append(f"/data/{relative}: missing")
        elif path.read_bytes() != config_bytes:
            problems.append(
                f"/data/{relative}: not the config's bytes "
                f"({path.stat().st_size} bytes, the config has {len(config_bytes)})"
            )
    return problems


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_content(entry: Mapping[str, Any], world: OrderWorld) -> bytes | dict[str, bytes]:
    """What a file entry must produce: bytes, or for an archive its members (junk dropped)."""
    via = entry.get("via") or "direct"
    content = entry.get("content")
    if content is not None:
        return base64.b64decode(content) if via == "base64" else str(content).encode("utf-8")
    url = str(entry["url"])
    if via in ARCHIVE_VIAS:
        return {name: data for name, data in world.trees[url].items() if not is_macos_junk(name)}
    return world.blobs[url]


def check_files(dump: Path, document: Mapping[str, Any], world: OrderWorld) -> list[str]:
    """Every file entry at its place with the right digest; archives fully extracted."""
    problems: list[str] = []
    destinations = {PurePosixPath(str(entry["to"])) for entry in document["files"]}
    for index, entry in enumerate(document["files"]):
        to = PurePosixPath(str(entry["to"]))
        where = f"files[{index}] {to}"
        target = dump / to.relative_to(DATA)
        expected = expected_content(entry, world)
        if isinstance(expected, bytes):
            if not target.is_file():
                problems.append(f"{where}: missing")
            elif _sha(target.read_bytes()) != _sha(expected):
                problems.append(
                    f"{where}: wrong content ({target.stat().st_size} bytes, "
                    f"expected {len(expected)})"
                )
            continue
        if not target.is_dir():
            problems.append(f"{where}: archive not extracted (no folder)")
            continue
        # other entries placed inside this folder (a .touch, say) are not the archive's
        others = {
            other.relative_to(to).as_posix()
            for other in destinations
            if other != to and other.is_relative_to(to)
        }
        # macOS junk is reported once, by check_no_macos_junk
        found = {
            path.relative_to(target).as_posix(): path
            for path in target.rglob("*")
            if path.is_file()
            and path.relative_to(target).as_posix() not in others
            and not is_macos_junk(path.relative_to(target).as_posix())
        }
        for name in sorted(set(expected) - set(found)):
            problems.append(f"{where}: archive member {name} missing")
        for name in sorted(set(found) - set(expected)):
            problems.append(f"{where}: unexpected file {name}")
        for name in sorted(set(expected) & set(found)):
            if _sha(found[name].read_bytes()) != _sha(expected[name]):
                problems.append(f"{where}: archive member {name}: wrong content")
        expanded = sum(len(data) for data in expected.values())
        written = sum(path.stat().st_size for path in found.values())
        if written != expanded:
            problems.append(
                f"{where}: {written} bytes extracted, the archive expands to {expanded}"
            )
    return problems


def check_no_macos_junk(dump: Path) -> list[str]:
    return [
        f"/data/{path.relative_to(dump).as_posix()}: macOS junk in the image"
        for path in sorted(dump.rglob("*"))
        if path.name in ("__MACOSX", ".DS_Store")
    ]


def entries_inside_archives(document: Mapping[str, Any]) -> list[str]:
    """Entries placed inside an archive's destination (the ``.touch`` a volume asks for)."""
    archives = [
        PurePosixPath(str(entry["to"]))
        for entry in document["files"]
        if (entry.get("via") or "direct") in ARCHIVE_VIAS
    ]
    return [
        str(entry["to"])
        for entry in document["files"]
        if any(
            PurePosixPath(str(entry["to"])).is_relative_to(folder)
            and PurePosixPath(str(entry["to"])) != folder
            for folder in archives
        )
    ]

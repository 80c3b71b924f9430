"""Entries inside an archive's destination, as the ordering service writes them: an app's zip
extracts into its folder, and a ``.touch`` (or any inline file) sits in that same folder.

The order is fixed: inline content and plain files first, then archives merged into their
folders (an archive inside another archive's folder after that one). An archive member that
replaces a file of the config wins, with a warning.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import make_base_image
from image_creator.ui.base import NullReporter
from tests.support.archives import tar_bytes, zip_bytes
from tests.support.httpserver import HttpServer
from tests.support.image_files import BuiltImage, tree_digests
from tests.support.leaks import assert_no_leaks
from tests.support.requirements import require_root, require_tools

pytestmark = pytest.mark.root

APP = {
    "index.html": b"<h1>the app</h1>\n" * 200,
    "assets/app.js": b"console.log('app');\n" * 300,
    "settings.json": b'{"from": "the archive"}\n',
}
MEDIA = {"video.txt": b"a video, as text\n" * 100, "assets/logo.svg": b"<svg/>\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_files_inside_archive_folders_are_merged_in_order(
    tmp_path: Path, http_server: HttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    require_root()
    require_tools("losetup", "mount", "e2fsck", "resize2fs", "sfdisk", "mke2fs", "debugfs")
    layout = make_base_image(tmp_path / "base" / "base.img")
    app_zip = zip_bytes(APP)
    media_tar = tar_bytes(MEDIA, "gz")
    config = {
        "base": str(layout.path),
        "files": [
            # the archive is listed first, its inline neighbours after: the order of writing
            # does not follow the list
            {
                "url": http_server.add("/app.zip", app_zip),
                "to": "/data/contents/app",
                "via": "zip",
                "size": len(app_zip),  # the archive's bytes, as ConfigBuilder writes it
            },
            {"to": "/data/contents/app/.touch", "content": "-"},
            {"to": "/data/contents/app/settings.json", "content": '{"from": "the config"}\n'},
            {
                "url": http_server.add("/media.tar.gz", media_tar),
                "to": "/data/contents/app/media",
                "via": "gztar",
            },
            {"to": "/data/contents/app/media/.touch", "content": "-"},
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    output = tmp_path / "out" / "hotspot.img"
    output.parent.mkdir()
    reporter = NullReporter()
    assert main([str(path), str(output)], reporter=reporter) == 0, capsys.readouterr().err

    built = BuiltImage.open(output)
    built.fsck_data()
    found = tree_digests(built.dump_data(tmp_path / "dump"))
    app = {f"contents/app/{name}": sha(data) for name, data in APP.items()}
    media = {f"contents/app/media/{name}": sha(data) for name, data in MEDIA.items()}
    touches = {name: sha(b"-") for name in ("contents/app/.touch", "contents/app/media/.touch")}
    assert {name: found.get(name) for name in [*app, *media, *touches]} == {
        **app,
        **media,
        **touches,
    }
    # the archive's settings.json replaced the config's, and said so
    replaced = [message for message in reporter.messages if "replaces" in message]
    assert replaced == [
        f"warning: /data/contents/app: a member of {http_server.url('/app.zip')} "
        "replaces /data/contents/app/settings.json"
    ]
    output.unlink()  # the image itself; nothing else may remain
    assert_no_leaks(output)

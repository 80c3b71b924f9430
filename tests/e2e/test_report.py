"""--report: a JSON record of a check or a build, valid against the shipped schema, written
whatever the outcome."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from image_creator.cli import main
from image_creator.demo import make_base_image
from image_creator.report import SCHEMA_PATH
from image_creator.ui.base import NullReporter
from tests.support.httpserver import HttpServer
from tests.support.requirements import require_root, require_tools

CONTENT = b"some content\n" * 100


def load_report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    return report


@pytest.fixture
def config(http_server: HttpServer, tmp_path: Path) -> dict[str, Any]:
    require_tools("sfdisk", "mkfs.vfat", "mke2fs", "mcopy")
    base = tmp_path / "base.img"
    make_base_image(base)
    http_server.add("/base.img", base.read_bytes())
    http_server.add("/file.txt", CONTENT)
    return {
        "base": http_server.url("/base.img"),
        "files": [
            {
                "url": http_server.url("/file.txt"),
                "to": "/data/file.txt",
                "checksum": {"algo": "sha-256", "value": hashlib.sha256(CONTENT).hexdigest()},
            },
            {"to": "/data/note.txt", "content": "note"},
        ],
    }


def test_check_report(config: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    report_path = tmp_path / "report.json"
    assert main(["--check", "--report", str(report_path), str(path)], reporter=NullReporter()) == 0
    report = load_report(report_path)
    assert (report["mode"], report["result"], report["output"]) == ("check", "success", None)
    assert report["config"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["files"][0]["download_size"] == len(CONTENT)
    assert report["files"][0]["bytes_written"] is None
    assert report["files"][0]["checksum"] == "pending"
    assert report["files"][1]["checksum"] == "none"
    assert report["files"][1]["planned_size"] == 4
    assert report["sizes"]["output"] >= report["sizes"]["minimum"]


def test_invalid_config_report(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("files: []\n")
    report_path = tmp_path / "report.json"
    assert main(["--check", "--report", str(report_path), str(path)], reporter=NullReporter()) == 3
    report = load_report(report_path)
    assert report["result"] == "failure"
    assert report["error"]["step"] == "Reading config"
    assert report["error"]["exit_code"] == 3
    assert "base: required" in report["error"]["message"]
    assert report["base"] is None


def test_failed_build_report_names_the_step(
    config: dict[str, Any], http_server: HttpServer, tmp_path: Path
) -> None:
    require_root()
    config["files"][0]["checksum"]["value"] = "0" * 64
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    report_path = tmp_path / "report.json"
    output = tmp_path / "out.img"
    argv = ["--report", str(report_path), str(path), str(output)]
    assert main(argv, reporter=NullReporter()) == 4
    assert not output.exists()
    report = load_report(report_path)
    assert report["result"] == "failure"
    assert report["error"]["step"] == "Writing files"
    assert report["error"]["exit_code"] == 4
    assert http_server.url("/file.txt") in report["error"]["message"]
    assert "checksum mismatch" in report["error"]["message"]
    assert report["output"] is None
    assert report["base"]["image_size"] is not None
    names = [step["name"] for step in report["steps"]]
    assert "Resizing data filesystem" in names
    assert "Writing files" not in names  # it did not finish

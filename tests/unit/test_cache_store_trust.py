"""The store's distrust of its own folder, without root: strict metadata, no FIFO read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from image_creator.cache.entry import CacheEntry, EntryKind
from image_creator.cache.folder import id_for
from image_creator.cache.policy import default_policy, load_policy
from image_creator.cache.store import CacheStore
from image_creator.errors import ConfigError

URL = "http://example.org/file.bin"


def fill(store: CacheStore, content: bytes) -> None:
    with store.slot(EntryKind.FILES, URL, URL, version="v1") as slot:
        assert slot.writer is not None
        slot.writer.write(content)
        slot.writer.complete = True


@pytest.mark.parametrize(
    "change",
    [{"size": True}, {"size": "12"}, {"kind": "other"}, {"digests": ["x"]}, {"added": 3}],
)
def test_metadata_types_are_exact(tmp_path: Path, change: dict[str, object]) -> None:
    store = CacheStore(tmp_path, default_policy())
    fill(store, b"content")
    meta = tmp_path / "entries" / f"{id_for(EntryKind.FILES, URL)}.json"
    document = {**json.loads(meta.read_text()), **change}
    with pytest.raises(ValueError):
        CacheEntry.from_json(json.dumps(document))


def test_lookup_refuses_metadata_naming_another_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fill(CacheStore(tmp_path, default_policy()), b"content")
    meta = tmp_path / "entries" / f"{id_for(EntryKind.FILES, URL)}.json"
    document = json.loads(meta.read_text())
    meta.write_text(json.dumps({**document, "ident": "/etc/passwd"}))
    looking = CacheStore(tmp_path, default_policy(), read_only=True)
    assert looking.lookup(EntryKind.FILES, URL) is None
    assert looking.entries() == []
    assert any("/etc/passwd" in message and "ignored" in message for message in caplog.messages)
    assert meta.exists()  # looking changes nothing


def test_a_policy_fifo_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "policy.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_policy(tmp_path, write_default=False)


def test_a_cache_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "entries").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="symbolic link"):
        CacheStore(tmp_path / "cache", default_policy())

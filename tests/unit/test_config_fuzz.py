"""The config loader never fails with anything but a ConfigError, whatever it is given.

Hypothesis builds documents from the config's own keys and from values known to break
parsers (huge and negative numbers, NUL bytes, lone surrogates, brackets in URLs, deep
nesting, YAML tags), as Python objects and as YAML text. The seed is fixed, so a run is
repeatable; FUZZ_EXAMPLES=N runs more examples than the default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_creator.config.loader import load_config, parse_config
from image_creator.config.model import Inline
from image_creator.errors import ConfigError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # a fixed seed: the same examples on every run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KEYS = [
    "base", "output", "size", "oci_images", "files", "write_config", "offspot", "source",
    "root_size", "rootfs_size", "checksum", "algo", "value", "kind", "ident", "id", "url",
    "filesize", "fullsize", "to", "content", "via",
]  # fmt: skip
NASTY_TEXT = [
    "", " ", "auto", "1.2.1", "1.2", "8G", "8GiB", "-1", "1e400", "10" * 30, "nan",
    "http://[", "http://[::1", "https://", "file:///dev/zero", "file://host/x", "ftp://x/y",
    "/data/x", "/data/../etc", "/data/a\x00b", "/data/" + "a" * 300, "/data/images",
    "/data/conf", "\ud800", "a\x00", "zip", "tar", "base64", "md5", "sha-256", "url",
    "{version}", "{0}", "{", "}", "%s", "~", "../x", "C:\\x", "\x85", "\u2028",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**50), max_value=10**50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_TEXT),
    st.text(max_size=12),
    st.sampled_from(KEYS),
)


def _mapping(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[Any, Any]]:
    return st.dictionaries(
        st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(-3, 3)),
        children,
        max_size=5,
    )


values = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=4), _mapping(children))
)
documents = st.one_of(
    values,
    st.fixed_dictionaries({}, optional=dict.fromkeys(KEYS[:7], values)),
    st.fixed_dictionaries(
        {"base": st.one_of(st.sampled_from(NASTY_TEXT), values)},
        optional={
            "files": st.lists(
                st.fixed_dictionaries(
                    {"to": st.one_of(st.sampled_from(NASTY_TEXT), values)},
                    optional=dict.fromkeys(("url", "content", "via", "size", "checksum"), values),
                ),
                max_size=4,
            ),
            "oci_images": st.lists(values, max_size=3),
            "output": st.fixed_dictionaries({"size": values}),
            "write_config": values,
        },
    ),
)


def _parse(document: Any) -> None:
    try:
        parse_config(document, label="fuzz.yaml", base_dir=Path("/nonexistent"))
    except ConfigError as exc:
        assert exc.lines() and all(line.startswith("fuzz.yaml") for line in exc.lines())
        assert all("\n" not in line for line in exc.lines())


@FUZZ
@given(documents)
def test_any_document_is_loaded_or_refused_with_key_paths(document: Any) -> None:
    _parse(document)


YAML_SNIPPETS = [
    "base: 1.2.1\n", "? [a, b]\n: 1\n", "? {a: 1}\n: 2\n", "x: !!timestamp 2024-13-45\n",
    "x: !!int 0x\n", "x: !!float nope\n", "x: !!binary '*'\n", "x: !!python/object:os.system\n",
    "a: &a [*a]\n", "<<: {base: 1.2.1}\n", "base: &b 1.2.1\nother: *b\n", "x: " + "9" * 5000 + "\n",
    "x: " + "[" * 2000 + "]" * 2000 + "\n", "x: " + "{a: " * 500 + "1" + "}" * 500 + "\n",
    "\t- a\n", "base: '\\x00'\n", 'base: "\\ud800"\n', "%YAML 9.9\n---\nbase: 1\n",
    "--- a\n--- b\n", "files: [{to: /data/x, content: \"\\ud800\"}]\n", "base: [\n",
]  # fmt: skip


@FUZZ
@given(
    st.lists(
        st.one_of(st.sampled_from(YAML_SNIPPETS), st.text(max_size=30)), min_size=1, max_size=4
    )
)
def test_any_text_is_loaded_or_refused_in_one_line(tmp_path_factory: Any, parts: list[str]) -> None:
    text = "".join(parts)
    try:
        load_config("fuzz.yaml", read_url=lambda url: text.encode("utf-8", "surrogatepass"))
    except ConfigError as exc:
        assert exc.lines() and all("\n" not in line for line in exc.lines())


@pytest.mark.parametrize("snippet", YAML_SNIPPETS)
def test_each_nasty_snippet_is_a_config_error_or_a_config(snippet: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(snippet.encode("utf-8", "surrogatepass"))
    try:
        load_config(str(path), read_url=lambda url: b"")
    except ConfigError as exc:
        assert exc.lines() and all("\n" not in line for line in exc.lines())


def test_yaml_dumped_documents_load_the_same(tmp_path: Path) -> None:
    document = {"base": "1.2.1", "files": [{"to": "/data/a", "content": "x"}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    assert load_config(str(path), read_url=lambda url: b"").config.files[0].origin == Inline(b"x")

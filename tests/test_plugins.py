"""Reader plugins through entry points, and meta-tests that every built-in reader is tested.

The plugin package (tests/plugin_pkg) is pip-installed into the running environment for the
module and uninstalled afterwards, so the test exercises exactly what a user does: install a
package that declares a ``chunkmill.readers`` entry point, then ingest.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import pipeline
import readers
from readers import BUILTIN, registry

TESTS = Path(__file__).parent
PLUGIN_DIST = "chunkmill-kv-plugin"
#: Readers whose tests live in the shared text-format modules rather than test_reader_<name>.py.
TEXT_READERS = ("csv", "tsv", "jsonl")
#: Readers tested together in one module (name -> module) rather than test_reader_<name>.py.
SHARED_TEST_MODULES = dict.fromkeys(("parquet", "arrow", "orc"), "test_reader_columnar.py")


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _can_build_offline() -> bool:
    """``--no-build-isolation`` needs a setuptools that builds wheels by itself (>= 70.1)
    or the ``wheel`` package next to it."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    version = importlib.metadata.version("setuptools").split(".")
    return tuple(int(v) for v in version[:2] if v.isdigit()) >= (70, 1)


@pytest.fixture(scope="module")
def kv_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    pkg = tmp_path_factory.mktemp("plugin") / "plugin_pkg"
    shutil.copytree(TESTS / "plugin_pkg", pkg)
    isolation = ["--no-build-isolation"] if _can_build_offline() else []
    done = _pip("install", "--no-deps", *isolation, str(pkg))
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        importlib.invalidate_caches()
        readers.clear_cache()
        yield
    finally:
        undone = _pip("uninstall", "-y", PLUGIN_DIST)
        importlib.invalidate_caches()
        readers.clear_cache()
        assert undone.returncode == 0, undone.stdout + undone.stderr


def test_plugin_reader_ingests(kv_plugin: None, tmp_path: Path) -> None:
    lines = [f"key{i}=value {i}" for i in range(40)]
    lines[7] = "this line has no equals sign"
    body = ("\n".join(lines) + "\n").encode()
    (tmp_path / "settings.kv").write_bytes(b"KV1\n" + body)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # kv_broken, tested below
        assert readers.get_reader("kv").name == "kv"
        # chunk_size 64: many ranges, lines cross range ends. A fresh cluster, so the worker
        # processes start after the plugin was installed.
        pipeline.ingest(
            [str(tmp_path / "settings.kv")], out=str(out), chunk_size=64, workers=1, progress=False
        )
    got = duckdb.sql(f"select key, value, _file_id from '{out}/settings/**/*.parquet'").fetchall()
    assert sorted((k, v) for k, v, _ in got) == sorted(
        (f"key{i}", f"value {i}") for i in range(40) if i != 7
    )
    (cat,) = duckdb.sql(
        f"select format, status, rows, error_count, metadata from '{out}/_catalog/*.parquet'"
    ).fetchall()
    assert cat[:4] == ("kv", "partial", 39, 1) and json.loads(cat[4]) == {"version": 1}
    (err,) = duckdb.sql(
        f"select byte_offset, error_type, raw from '{out}/_errors/*.parquet'"
    ).fetchall()
    assert err[0] == 4 + body.index(b"this line") and err[1] == "KVSyntax"
    assert err[2] == b"this line has no equals sign\n"


def test_broken_plugin_is_skipped_with_a_warning(kv_plugin: None) -> None:
    readers.clear_cache()
    with pytest.warns(RuntimeWarning, match="kv_broken.*could not be loaded"):
        table = registry()
    assert "kv_broken" not in table
    assert {"kv", "csv", "binary", "image"} <= set(table)
    assert readers.detect(b"KV1\nx=1\n", "a.kv").name == "kv"
    assert readers.detect(b"id,name\n1,a\n", "a.csv").name == "csv"


def test_plugin_that_is_not_a_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = [importlib.metadata.EntryPoint("notareader", "json:loads", readers.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: fake)
    readers.clear_cache()
    try:
        with pytest.warns(RuntimeWarning, match="notareader.*is not a readers.base.Reader"):
            table = registry()
        assert "notareader" not in table and "csv" in table
    finally:
        monkeypatch.undo()
        readers.clear_cache()


# --- meta-tests ---------------------------------------------------------------------------------
def _loaded_readers() -> tuple[dict[str, type], list[str]]:
    readers.clear_cache()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        table = registry()
    return table, [str(w.message) for w in caught]


def test_every_builtin_reader_loads() -> None:
    table, problems = _loaded_readers()
    missing = sorted(set(BUILTIN) - set(table))
    assert not missing, f"built-in readers that do not load: {missing}; {problems}"


def test_every_reader_has_tests() -> None:
    """Built-in readers (and any reader shipped in the ``readers`` package) have a test module.

    Readers installed by third-party plugins are their package's business, not this repo's.
    """
    table, _ = _loaded_readers()
    names = set(BUILTIN) | {n for n, cls in table.items() if cls.__module__.startswith("readers.")}
    text_tests = [p.read_text() for p in TESTS.glob("test_text_*.py")]
    untested = []
    for name in sorted(names):
        if name in TEXT_READERS:
            if not any(name in text for text in text_tests):
                untested.append(f"{name} (no tests/test_text_*.py mentions it)")
        elif name in SHARED_TEST_MODULES:
            if name not in (TESTS / SHARED_TEST_MODULES[name]).read_text():
                untested.append(f"{name} (not mentioned in {SHARED_TEST_MODULES[name]})")
        elif not (TESTS / f"test_reader_{name}.py").is_file():
            untested.append(f"{name} (no tests/test_reader_{name}.py)")
    assert not untested, f"readers without tests: {untested}"

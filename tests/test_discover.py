"""Discovery: unreadable directories, symbolic links, literal paths with glob characters,
names that are not UTF-8 and table names from any source."""

from __future__ import annotations

import errno
import os

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline
from pipeline.planning.discover import discover
from tests.conftest import read_catalog


def _errors(out) -> list[tuple]:
    return duckdb.sql(f"select path, kind, message from read_parquet('{out}/_errors/*.parquet')"
                      ).fetchall()


def _unlistable(monkeypatch, *paths: str) -> None:
    """``os.scandir`` fails with EACCES on ``paths`` (tests run as root, where chmod 000
    does not stop a listing); `os.walk` then takes its ``onerror`` route as for real."""
    real = os.scandir
    blocked = {os.path.abspath(p) for p in paths}

    def scandir(path=".") -> object:
        if not isinstance(path, int) and os.path.abspath(os.fsdecode(path)) in blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_subdirectory_is_a_failed_input(tmp_path, monkeypatch) -> None:
    (tmp_path / "in" / "locked").mkdir(parents=True)
    (tmp_path / "in" / "a.csv").write_text("a,b\n1,2\n")
    (tmp_path / "in" / "locked" / "b.csv").write_text("a,b\n3,4\n")
    _unlistable(monkeypatch, tmp_path / "in" / "locked")
    report = pipeline.ingest([str(tmp_path / "in")], out=str(tmp_path / "o"), progress=False)
    assert report.exit_code == 1 and report.rows == 1
    assert "cannot list this directory" in report.failures[0]
    ((path, kind, message),) = _errors(tmp_path / "o")
    assert path == str(tmp_path / "in" / "locked") and kind == "file"
    assert read_catalog(tmp_path / "o")["locked"]["status"] == "failed"


def test_an_unreadable_input_directory_fails_the_run(tmp_path, monkeypatch) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("a,b\n1,2\n")
    _unlistable(monkeypatch, tmp_path / "in")
    report = pipeline.ingest([str(tmp_path / "in")], out=str(tmp_path / "o"), progress=False)
    assert report.exit_code == 1 and report.files == {"failed": 1}
    assert "cannot list this directory" in report.failures[0]


def test_links_out_of_the_input_roots_are_refused(tmp_path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.csv").write_text("user,pw\nroot,x\n")
    (inside / "data.csv").write_text("user,pw\nann,y\n")
    (inside / "sub").mkdir()
    (inside / "sub" / "alias.csv").symlink_to(inside / "data.csv")  # inside: read
    (inside / "passwd.csv").symlink_to(outside / "secret.csv")  # outside: refused
    out = tmp_path / "o"
    report = pipeline.ingest([str(inside)], out=str(out), progress=False)
    assert report.exit_code == 1 and report.rows == 2  # data.csv and its alias
    assert "outside the input directories" in report.failures[0]
    ((path, kind, message),) = _errors(out)
    assert path == str(inside / "passwd.csv") and kind == "file"
    assert "--follow-symlinks" in message and str(outside / "secret.csv") in message
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/in/*.parquet') "
                      "where user = 'root'").fetchall() == [(0,)]
    # Allowed on request; and a link into another input argument is inside the roots.
    report = pipeline.ingest([str(inside)], out=str(tmp_path / "o2"), progress=False,
                             follow_symlinks=True)
    assert report.exit_code == 0 and report.rows == 3
    found = discover([str(inside), str(outside)])
    assert not [f.error for f in found if f.error]
    # Globs follow the same rule; an input argument that is itself a link is taken as given.
    found = discover([str(inside / "*.csv")])
    assert [os.path.basename(f.source.path) for f in found if f.error] == ["passwd.csv"]
    (found,) = discover([str(inside / "passwd.csv")])
    assert found.error is None and found.reader == "csv"


def test_an_existing_path_with_glob_characters_is_taken_literally(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "[avalon]_daily.csv").write_text("a\n1\n")
    (tmp_path / "data" / "a_daily.csv").write_text("a\n2\n")  # the pattern would match this
    (found,) = discover([str(tmp_path / "data" / "[avalon]_daily.csv")])
    assert found.error is None and found.source.path.endswith("[avalon]_daily.csv")
    # A real pattern still is one.
    found = discover([str(tmp_path / "data" / "*_daily.csv")])
    assert len(found) == 2


@pytest.mark.parametrize("table", ["../../escaped", "ABSOLUTE", "_errors", "_catalog",
                                   "_chunkmill", ".hidden", "a/b", ""])
def test_table_flag_that_is_not_a_safe_name_is_a_usage_error(tmp_path, table) -> None:
    from pipeline.cli import run

    (tmp_path / "a.csv").write_text("a\n1\n")
    if table == "ABSOLUTE":
        table = str(tmp_path / "abs" / "x")
    out = tmp_path / "a" / "b" / "o"
    code = run(["ingest", str(tmp_path / "a.csv"), "--out", str(out), "--table", table,
                "--no-progress"])
    assert code == 2
    assert not (tmp_path / "a" / "escaped").exists() and not (out / "_errors").exists()
    assert not (tmp_path / "abs").exists()


def test_reader_table_names_are_sanitised(tmp_path, monkeypatch) -> None:
    """A reader (a plugin, say) that names its tables after hostile text cannot write outside
    OUT or into its reserved directories."""
    from readers.csv import CSVReader

    real = CSVReader.describe

    def describe(self, source, options):  # noqa: ANN001, ANN202
        description = real(self, source, options)
        (schema,) = description.tables.values()
        description.tables = {"../../" + source.table: schema}
        return description

    real_read = CSVReader.read

    def read(self, source, chunk, description, options, ctx):  # noqa: ANN001, ANN202
        for _table, rows in real_read(self, source, chunk, description, options, ctx):
            yield "../../" + source.table, rows

    monkeypatch.setattr(CSVReader, "describe", describe)
    monkeypatch.setattr(CSVReader, "read", read)
    monkeypatch.setattr(CSVReader, "describe_many", lambda self, sources, options: [
        describe(self, s, options) for s in sources])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "_errors.csv").write_text("a\n1\n")  # hidden: skipped in walks
    (tmp_path / "in" / "x.csv").write_text("a\n1\n")
    out = tmp_path / "deep" / "o"
    report = pipeline.ingest([str(tmp_path / "in" / "x.csv")], out=str(out), progress=False,
                             table="errors")
    assert report.exit_code == 0 and report.rows == 1
    assert sorted(os.listdir(out)) == ["_catalog", "_chunkmill", "errors"]
    assert not (tmp_path / "errors").exists() and not (tmp_path / "deep" / "errors").exists()
    assert read_catalog(out)["x.csv"]["tables"] == ["errors"]


def test_local_stat_fingerprints_as_fsspec_info_does(tmp_path) -> None:
    """Fingerprints are stored: the one-stat local path must give fsspec's, for a file, a link
    to it and a directory, or every file of an existing OUT would look changed."""
    import fsspec

    from pipeline.planning.discover import file_info, fingerprint

    (tmp_path / "a.csv").write_bytes(b"a,b\n1,2\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "a.csv")
    (tmp_path / "d").mkdir()
    fs = fsspec.filesystem("file")
    for name in ("a.csv", "link.csv", "d"):
        path = str(tmp_path / name)
        ours, theirs = file_info(fs, path), fs.info(path)
        assert fingerprint(ours) == fingerprint(theirs), name
        assert (ours["type"], ours["size"]) == (theirs["type"], theirs["size"]), name
    with pytest.raises(FileNotFoundError):
        file_info(fs, str(tmp_path / "missing.csv"))


@given(st.lists(st.one_of(st.text(), st.integers(), st.none()), max_size=4))
def test_stable_id_is_the_hash_of_json_dumps(parts) -> None:
    """File ids name fragments and journal entries: the fast encoding must be json.dumps'."""
    import hashlib
    import json

    from readers.base import stable_id

    blob = json.dumps([str(p) for p in parts]).encode()
    assert stable_id(*parts) == hashlib.blake2b(blob, digest_size=8).hexdigest()


@given(st.binary(max_size=3000), st.integers(0, 3500), st.integers(0, 3500))
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_local_read_range_reads_what_a_seek_and_read_does(tmp_path, data, start, length) -> None:
    from readers.base import Source

    path = tmp_path / "f.bin"
    path.write_bytes(data)
    source = Source(f"file://{path}", len(data), None, "id", "fp", "t")
    with open(path, "rb") as f:
        f.seek(start)
        expected = f.read(max(0, min(start + length, len(data)) - start))
    assert source.read_range(start, start + length) == expected


def test_local_read_range_goes_on_after_a_short_read(tmp_path, monkeypatch) -> None:
    """A read may return fewer bytes than asked (Linux caps one read near 2 GiB)."""
    import readers.base
    from readers.base import Source

    data = bytes(range(256)) * 4
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    real = os.pread
    monkeypatch.setattr(readers.base.os, "pread", lambda fd, n, at: real(fd, min(n, 7), at))
    source = Source(f"file://{path}", len(data), None, "id", "fp", "t")
    assert source.read_range(3, 900) == data[3:900]
    assert source.read_range(1000, 2000) == data[1000:]

"""The catalog across runs: names that are not UTF-8, and what a skipped file keeps."""

from __future__ import annotations

import os

import duckdb

import pipeline
from pipeline.output.journal import Journal
from pipeline.output.store import open_store


def test_a_file_name_that_is_not_utf8_is_stored_losslessly(tmp_path) -> None:
    src = os.fsencode(tmp_path / "in")
    os.mkdir(src)
    with open(src + b"/bad\xff.csv", "wb") as f:
        f.write(b"a,b\n1,2\n3,4\n")
    with open(src + b"/broken\xfe.csv.gz", "wb") as f:
        f.write(b"\x1f\x8b\x08\x00broken")  # fails: its path goes to _errors
    (tmp_path / "in" / "ok.csv").write_text("a,b\n5,6\n")
    out = str(tmp_path / "o")
    report = pipeline.ingest([str(tmp_path / "in")], out=out, progress=False)
    assert report.exit_code == 1 and report.rows == 3 and report.files == {"ok": 2, "failed": 1}
    # Every later run works too (it used to fail on the catalog until --prune).
    again = pipeline.ingest([str(tmp_path / "in")], out=out, progress=False)
    assert again.files == {"unchanged": 2, "failed": 1}
    rows = duckdb.sql(f"select path, path_bytes, status, rows from read_parquet("
                      f"'{out}/_catalog/*.parquet') order by path").fetchall()
    base = str(tmp_path / "in")
    assert rows == [(base + "/bad\\xff.csv", src + b"/bad\xff.csv", "unchanged", 2),
                    (base + "/broken\\xfe.csv.gz", src + b"/broken\xfe.csv.gz", "failed", 0),
                    (base + "/ok.csv", src + b"/ok.csv", "unchanged", 1)]
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/in/*.parquet')"
                      ).fetchall() == [(3,)]
    ((path, message),) = duckdb.sql(f"select path, message from read_parquet("
                                    f"'{out}/_errors/*.parquet')").fetchall()
    assert path == base + "/broken\\xfe.csv.gz" and "broken\\xfe" in message
    # The journal keeps the exact name (it is what the next run matches files by).
    paths = {r.catalog["path"] for r in Journal(open_store(out)).load().done.values()}
    assert os.fsdecode(src + b"/bad\xff.csv") in paths
    from pipeline.report.status import status

    files = status(out)["files"]
    assert sorted(files) == [r[0] for r in rows]
    # The command line prints such a name as its bytes (as ls does), whatever the locale;
    # status shows the catalog's text form.
    import subprocess
    import sys

    for command, shown in ((["plan", str(tmp_path / "in")], b"bad\xff.csv"),
                           (["status", out], b"bad\\xff.csv")):
        res = subprocess.run([sys.executable, "-m", "pipeline.cli", *command],
                             capture_output=True, timeout=120,
                             env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        assert shown in res.stdout and b"internal error" not in res.stderr, res.stderr


def test_a_skipped_partial_file_keeps_its_outcome(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("n,m\n1,1\n2,2\n3,3,3\n")
    (tmp_path / "in" / "b.csv").write_text("n\n1\n")
    out = str(tmp_path / "o")
    pipeline.ingest([str(tmp_path / "in")], out=out, progress=False)
    pipeline.ingest([str(tmp_path / "in")], out=out, progress=False)
    rows = duckdb.sql(f"select parse_filename(path), status, last_status, rows, error_count "
                      f"from read_parquet('{out}/_catalog/*.parquet') order by 1").fetchall()
    assert rows == [("a.csv", "unchanged", "partial", 2, 1), ("b.csv", "unchanged", "ok", 1, 0)]

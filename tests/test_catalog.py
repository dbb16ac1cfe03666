"""The catalog across runs: names that are not UTF-8, and what a skipped file keeps."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pytest

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
    assert path == base + "/broken\\xfe.csv.gz" and base not in message  # path: its column
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


def _bad_inputs(root) -> dict[str, str]:
    """One damaged file per reader family, and the kind of ``_errors`` row it gives."""
    import gzip
    import struct

    import h5py
    import numpy as np

    root.mkdir()
    (root / "fields.csv").write_text("a,b\n1,2\n3\n4,5\n")
    (root / "fields.tsv").write_text("a\tb\n1\t2\n3\n")
    (root / "bad.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    # one damaged record in a thousand lines: a bad record, not another encoding
    (root / "utf8.csv").write_bytes(b"a,b\n" + b"1,x\n" * 1000 + b"2,\xff\xfe\n")
    data = gzip.compress(b"a,b\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(20000)))
    (root / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with h5py.File(root / "cut.h5", "w") as f:
        f.create_dataset("x", data=np.arange(100000))
    (root / "cut.h5").write_bytes((root / "cut.h5").read_bytes()[:400_000])

    def cards(*lines: str) -> bytes:
        return b"".join(c.ljust(80).encode() for c in (*lines, "END")).ljust(2880, b" ")

    (root / "cut.fits").write_bytes(
        cards("SIMPLE  =                    T", "BITPIX  =                    8",
              "NAXIS   =                    0", "EXTEND  =                    T")
        + cards("XTENSION= 'BINTABLE'", "BITPIX  =                    8",
                "NAXIS   =                    2", "NAXIS1  =                    8",
                "NAXIS2  =                 1000", "PCOUNT  =                    0",
                "GCOUNT  =                    1", "TFIELDS =                    1",
                "TTYPE1  = 'V'", "TFORM1  = 'K'")
        + b"\0" * 4000)
    (root / "nomoov.mp4").write_bytes(struct.pack(">I", 24) + b"ftypisom" + b"\0" * 12
                                      + struct.pack(">I", 16) + b"mdat" + b"\0" * 8)
    (root / "bad.parquet").write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    return {"fields.csv": "record", "fields.tsv": "record", "bad.jsonl": "record",
            "utf8.csv": "record", "cut.csv.gz": "chunk", "cut.h5": "file",
            "cut.fits": "chunk", "nomoov.mp4": "file", "bad.parquet": "file",
            "bad.png": "file"}


def test_error_messages_do_not_repeat_the_path(tmp_path, shared_scheduler) -> None:
    """``_errors.path`` names the file; its ``message`` says what went wrong and where
    (offsets, chunks, HDUs), every reader alike."""
    kinds = _bad_inputs(tmp_path / "in")
    out = str(tmp_path / "o")
    pipeline.ingest([str(tmp_path / "in")], out=out, scheduler=shared_scheduler)
    rows = duckdb.sql(f"select path, kind, byte_offset, message from '{out}/_errors/*.parquet'"
                      ).fetchall()
    assert {os.path.basename(p) for p, *_ in rows} == set(kinds)
    for path, kind, offset, message in rows:
        assert kind == kinds[os.path.basename(path)], (path, kind, message)
        assert message and str(tmp_path) not in message, message
        assert kind != "record" or offset is not None


def test_without_path_keeps_the_offset() -> None:
    from pipeline.output.rejects import without_path

    path = "/data/in/x.csv"
    assert (without_path(f"{path}: chunk 3 at offset 96: BadFile: {path}: cut short", path)
            == "chunk 3 at offset 96: BadFile: cut short")
    assert without_path(f"[Errno 13] Permission denied: '{path}'", path) == (
        "[Errno 13] Permission denied: 'x.csv'")


def test_a_fixed_file_loses_its_error_row_and_clean_commits_delete_nothing(tmp_path,
                                                                         monkeypatch) -> None:
    """A file that failed has a file-level ``_errors`` row until it reads; the commits of
    files that never failed do not try to delete one each (a request apiece on S3)."""
    from pipeline.output.store import LocalStore

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}.csv").write_text(f"a,b\n{i},x\n")
    (src / "bad.csv").write_bytes(b"a,b\n\xff\xfe,1\n")  # not UTF-8: fails, with a file row
    removed: list[str] = []
    real = LocalStore.remove
    monkeypatch.setattr(LocalStore, "remove",
                        lambda self, path: (removed.append(path), real(self, path))[1])

    def error_paths() -> list[str]:
        return duckdb.sql(f"select path from read_parquet('{out}/_errors/*.parquet')"
                          ).fetchall()

    assert pipeline.ingest(str(src), out=str(out)).files.get("failed") == 1
    assert error_paths() == [(str(src / "bad.csv"),)]
    assert not [p for p in removed if p.endswith("-file.parquet")]
    (src / "bad.csv").write_text("a,b\n99,y\n")  # fixed
    (src / "f00.csv").write_text("a,b\n100,z\n")  # changed, never failed
    removed.clear()
    assert pipeline.ingest(str(src), out=str(out)).ok
    assert not list((out / "_errors").glob("*-file.parquet"))
    (bad_id,), = duckdb.sql(f"select file_id from read_parquet('{out}/_catalog/*.parquet') "
                            f"where path = '{src / 'bad.csv'}'").fetchall()
    assert [os.path.basename(p) for p in removed if p.endswith("-file.parquet")] == [
        f"{bad_id}-file.parquet"]


def test_an_out_named_like_a_pattern_still_loses_a_fixed_files_error_row(tmp_path) -> None:
    """OUT's own path is listed literally: ``out[1]`` is a name, not a character class."""
    src, out = tmp_path / "in", tmp_path / "out[1]"
    src.mkdir()
    (src / "a.csv").write_text("a,b\n1,x\n")
    (src / "bad.csv").write_bytes(b"a,b\n\xff,1\n")
    assert pipeline.ingest(str(src), out=str(out)).files.get("failed") == 1
    assert len([n for n in os.listdir(out / "_errors") if n.endswith("-file.parquet")]) == 1
    (src / "bad.csv").write_text("a,b\n2,y\n")
    assert pipeline.ingest(str(src), out=str(out)).ok
    assert [n for n in os.listdir(out / "_errors") if n.endswith("-file.parquet")] == []


def test_runs_of_an_out_named_like_a_pattern_are_its_own(tmp_path) -> None:
    """``report``/``list_runs`` of ``out[1]`` list its runs, not those of ``out1`` beside it."""
    from pipeline.report.plots import list_runs

    (tmp_path / "a.csv").write_text("a,b\n1,x\n")
    first = pipeline.ingest(str(tmp_path / "a.csv"), out=str(tmp_path / "out1"))
    second = pipeline.ingest(str(tmp_path / "a.csv"), out=str(tmp_path / "out[1]"))
    assert [r["run_id"] for r in list_runs(tmp_path / "out[1]")] == [second.run_id]
    assert [r["run_id"] for r in list_runs(tmp_path / "out1")] == [first.run_id]


def test_an_object_store_out_named_like_a_pattern_is_refused_up_front(tmp_path) -> None:
    """fsspec reads * ? [ in a path as a pattern (its mv and rm too): ``out[1]`` would reach
    into ``out1``. The run stops before writing anything, naming the output."""
    import uuid

    import fsspec

    (tmp_path / "a.csv").write_text("a,b\n1,x\n")
    base = f"memory://pattern-{uuid.uuid4().hex}"
    assert pipeline.ingest(str(tmp_path / "a.csv"), out=f"{base}/out1").ok
    before = fsspec.filesystem("memory").find(base)
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest",
                          str(tmp_path / "a.csv"), "--out", f"{base}/out[1]"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "out[1]: an output on an object store cannot" in res.stderr
    assert "Traceback" not in res.stderr
    with pytest.raises(pipeline.UsageError, match="cannot have"):
        pipeline.ingest(str(tmp_path / "a.csv"), out=f"{base}/out[1]")
    assert fsspec.filesystem("memory").find(base) == before

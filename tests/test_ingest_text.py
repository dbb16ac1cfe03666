"""End to end: text files -> OUT through `pipeline.ingest`, checked against DuckDB's own read."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random

import duckdb
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pytest
import zstandard

import pipeline

EVENTS = ["click", "view", "buy", "a/b=c", "..", None]


def make_csv(path, rows: int, seed: int = 1, crlf: bool = False, bom: bool = False) -> None:
    rnd = random.Random(seed)
    nl = "\r\n" if crlf else "\n"
    lines = ["id,user,event,value,note"]
    for i in range(rows):
        event = rnd.choice(EVENTS)
        note = rnd.choice(["plain", 'has "quotes"', "multi\nline, text", "", "x" * 30])
        quoted = '"' + note.replace('"', '""') + '"'
        lines.append(f"{i},user{rnd.randint(0, 50)},{'' if event is None else event},"
                     f"{rnd.random() * 100:.3f},{quoted}")
    data = nl.join(lines) + nl
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode())


def out_rows(out, table: str, query: str = "select *") -> list[tuple]:
    return duckdb.sql(f"{query} from read_parquet('{out}/{table}/**/*.parquet', "
                      "hive_partitioning=true)").fetchall()


def aggregates(rel_sql: str) -> tuple:
    return duckdb.sql(f"select count(*), sum(id), round(sum(value), 3), count(distinct user), "
                      f"sum(length(note)), count(event) from ({rel_sql})").fetchall()[0]


def catalog(out) -> list[dict]:
    return duckdb.sql(f"select * from '{out}/_catalog/*.parquet' order by path").df().to_dict(
        "records")


def errors(out) -> list[dict]:
    if not os.path.isdir(f"{out}/_errors"):
        return []
    return duckdb.sql(f"select * from '{out}/_errors/*.parquet' order by path, byte_offset"
                      ).df().to_dict("records")


def test_csv_matches_duckdb_partitioned(tmp_path, shared_scheduler) -> None:
    src = tmp_path / "logs"
    src.mkdir()
    make_csv(src / "a.csv", 3000, seed=1, crlf=True, bom=True)
    make_csv(src / "b.csv", 2000, seed=2)
    out = tmp_path / "lake"
    report = pipeline.ingest([str(src)], out=str(out), partition_by=["event"],
                             chunk_size="16KB", scheduler=shared_scheduler)
    assert report.ok and report.files == {"ok": 2}
    assert report.chunks >= 10  # really chunked: 16 KB ranges of ~150 KB files
    ours = aggregates(f"select * from read_parquet('{out}/logs/**/*.parquet', "
                      "hive_partitioning=true)")
    theirs = aggregates(f"select * from read_csv('{src}/*.csv', quote='\"', escape='\"', "
                        "header=true, null_padding=false, strict_mode=true, "
                        "types={'event': 'VARCHAR', 'note': 'VARCHAR'})")
    assert ours == theirs
    # partition values with "/" and ".." stay inside OUT and read back unchanged
    events = {r[0] for r in duckdb.sql(
        f"select distinct event from read_parquet('{out}/logs/**/*.parquet', "
        "hive_partitioning=true)").fetchall()}
    assert events == set(EVENTS)
    for root, _, _files in os.walk(out):
        assert os.path.realpath(root).startswith(os.path.realpath(out))
    # every fragment is named by (file, chunk) and every row traces back to its file
    cat = catalog(out)
    assert {c["path"] for c in cat} == {str(src / "a.csv"), str(src / "b.csv")}
    ids = {r[0] for r in out_rows(out, "logs", "select distinct _file_id")}
    assert ids == {c["file_id"] for c in cat}
    assert all(c["status"] == "ok" and c["chunks"] >= 5 for c in cat)
    assert sum(c["rows"] for c in cat) == 5000
    # also readable by pyarrow.dataset and dask
    assert pads.dataset(out / "logs", partitioning="hive").count_rows() == 5000


def test_jsonl_and_tsv_and_schema_union(tmp_path, shared_scheduler) -> None:
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(
        {"id": i, "kind": "k" + str(i % 3), "nested": {"x": i}}) for i in range(500)) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(
        {"id": i + 0.5, "extra": True}) for i in range(100)))
    (tmp_path / "c.tsv").write_text("id\tname\n1\talpha\n2\t\"quoted\ttab\"\n")
    out = tmp_path / "out"
    report = pipeline.ingest([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
                             out=str(out), table="events", chunk_size="2KB",
                             scheduler=shared_scheduler)
    assert report.ok and report.rows == 600
    t = pads.dataset(out / "events").to_table()
    # int64 + float64 widen to float64; columns missing in a file are null
    assert str(t.schema.field("id").type) == "double"
    assert t.filter(t["extra"].is_valid()).num_rows == 100
    assert t.filter(t["kind"].is_valid()).num_rows == 500
    report = pipeline.ingest([str(tmp_path / "c.tsv")], out=str(out),
                             scheduler=shared_scheduler)
    assert report.rows == 2
    assert sorted(out_rows(out, "c"))[1][1] == "quoted\ttab"


def test_bad_records_go_to_errors_with_offsets(tmp_path, shared_scheduler) -> None:
    good = "".join(f"{i},{i * 2}\n" for i in range(120000))  # > 1 MiB: types from the head
    data = "a,b\n" + good + "3.5,7\n" + "1,2,3\n" + "4,5\n"
    path = tmp_path / "nums.csv"
    path.write_text(data)
    (tmp_path / "bad.jsonl").write_text('{"a": 1, "b": 2}\nnot json\n{"a": 3, "b": 4}\n')
    out = tmp_path / "out"
    report = pipeline.ingest([str(path)], out=str(out), chunk_size="256KB",
                             scheduler=shared_scheduler)
    assert report.rows == 120001 and report.errors == 2
    errs = errors(out)
    by_type = {e["error_type"]: e for e in errs}
    bad_value_at = data.index("3.5,7")
    assert by_type["TypeMismatch"]["byte_offset"] == bad_value_at
    assert by_type["TypeMismatch"]["raw"] == b"3.5,7\n"
    assert "3.5" in by_type["TypeMismatch"]["message"]
    assert by_type["FieldCountMismatch"]["byte_offset"] == data.index("1,2,3\n")
    assert by_type["FieldCountMismatch"]["raw"] == b"1,2,3"
    assert catalog(out)[0]["status"] == "partial"
    # A bad value after the first 4 MiB parse block of a chunk: the streamed rows already
    # written are thrown away and the chunk is read again as a whole (RestartChunk).
    big = "a,b\n" + "".join(f"{i},{i}\n" for i in range(700_000)) + "x,1\n" + "5,5\n"
    (tmp_path / "big.csv").write_text(big)
    report = pipeline.ingest([str(tmp_path / "big.csv")], out=str(out / "big"),
                             scheduler=shared_scheduler)
    assert report.rows == 700_001 and report.errors == 1
    (err,) = errors(out / "big")
    assert err["byte_offset"] == big.index("x,1") and err["raw"] == b"x,1\n"
    pipeline.ingest([str(tmp_path / "bad.jsonl")], out=str(out / "j"),
                    scheduler=shared_scheduler)
    (err,) = errors(out / "j")
    assert err["byte_offset"] == 17 and err["raw"] == b"not json\n"


@pytest.mark.parametrize("suffix,opener", [
    (".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open),
    (".zst", lambda p, m: zstandard.open(p, m)),
])
def test_compressed_inputs_stream(tmp_path, shared_scheduler, suffix, opener) -> None:
    plain = tmp_path / "p.csv"
    make_csv(plain, 1500, seed=3)
    comp = tmp_path / f"events.csv{suffix}"
    with opener(comp, "wb") as f:
        f.write(plain.read_bytes())
    out = tmp_path / "out"
    report = pipeline.ingest([str(comp)], out=str(out), scheduler=shared_scheduler)
    assert report.ok and report.rows == 1500
    (row,) = catalog(out)
    assert row["format"] == "csv" and json.loads(row["metadata"])["compression"]
    assert aggregates(f"select * from read_parquet('{out}/events/**/*.parquet')") == \
        aggregates(f"select * from read_csv('{plain}', types={{'event': 'VARCHAR'}})")


def test_truncated_gzip_keeps_rows_and_reports(tmp_path, shared_scheduler) -> None:
    plain = tmp_path / "p.csv"
    make_csv(plain, 20000, seed=4)
    blob = gzip.compress(plain.read_bytes())
    (tmp_path / "cut.csv.gz").write_bytes(blob[: len(blob) // 2])
    out = tmp_path / "out"
    report = pipeline.ingest([str(tmp_path / "cut.csv.gz")], out=str(out),
                             scheduler=shared_scheduler)
    (row,) = catalog(out)
    assert row["status"] == "partial" and 0 < row["rows"] < 20000
    (err,) = errors(out)
    assert err["kind"] == "chunk" and err["path"].endswith("cut.csv.gz")
    assert "cut.csv.gz" not in err["message"] and "offset" in err["message"]
    assert report.exit_code == 0


def test_memory_filesystem_inputs(tmp_path) -> None:
    """A non-local fsspec filesystem, through a threads-only cluster that shares the process."""
    import fsspec
    from distributed import LocalCluster

    fs = fsspec.filesystem("memory")
    plain = tmp_path / "p.csv"
    make_csv(plain, 800, seed=5)
    fs.pipe("/mem/in/data.csv", plain.read_bytes())
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:
        report = pipeline.ingest(["memory://mem/in/"], out=str(tmp_path / "out"),
                                 chunk_size="8KB", scheduler=cluster.scheduler_address)
    assert report.ok and report.rows == 800
    path = catalog(tmp_path / "out")[0]["path"]
    assert path.startswith("memory://") and path.endswith("/mem/in/data.csv")


def test_rerun_skips_unchanged_and_replaces_changed(tmp_path, shared_scheduler) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_csv(src / "a.csv", 500, seed=6)
    make_csv(src / "b.csv", 500, seed=7)
    out = tmp_path / "out"
    first = pipeline.ingest([str(src)], out=str(out), chunk_size="4KB",
                            scheduler=shared_scheduler)
    assert first.files == {"ok": 2}
    second = pipeline.ingest([str(src)], out=str(out), chunk_size="4KB",
                             scheduler=shared_scheduler)
    assert second.files == {"unchanged": 2} and second.rows == 0
    make_csv(src / "b.csv", 120, seed=8)  # rewritten, shorter: fewer chunks than before
    third = pipeline.ingest([str(src)], out=str(out), chunk_size="4KB",
                            scheduler=shared_scheduler)
    assert third.files == {"ok": 1, "unchanged": 1}
    assert out_rows(out, "src", "select count(*)")[0][0] == 620
    assert {c["status"] for c in catalog(out)} == {"ok", "unchanged"}


def test_unreadable_and_empty_files(tmp_path, shared_scheduler) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "header_only.csv").write_text("a,b\n")
    (tmp_path / "good.csv").write_text("a,b\n1,2\n")
    locked = tmp_path / "locked.csv"
    locked.write_text("a,b\n3,4\n")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: use a directory-shaped "file" instead
        locked.chmod(0o644)
        locked.unlink()
        os.symlink(tmp_path / "missing-target.csv", tmp_path / "dangling.csv")
        (tmp_path / "broken.csv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    out = tmp_path / "out"
    report = pipeline.ingest([str(tmp_path)], out=str(out), table="t",
                             scheduler=shared_scheduler)
    cat = {os.path.basename(c["path"]): c for c in catalog(out)}
    assert cat["good.csv"]["status"] == "ok" and cat["good.csv"]["rows"] == 1
    assert cat["empty.csv"]["rows"] == 0 and cat["header_only.csv"]["rows"] == 0
    failed = [c for c in cat.values() if c["status"] == "failed"]
    assert failed and report.exit_code == 1
    assert all(e["path"] for e in errors(out))


def test_later_runs_keep_the_tables_types(tmp_path, shared_scheduler) -> None:
    (tmp_path / "a.csv").write_text("id,v\n1,1.5\n")
    out = str(tmp_path / "o")
    pipeline.ingest([str(tmp_path / "a.csv")], out=out, table="t", scheduler=shared_scheduler)
    (tmp_path / "b.csv").write_text("id,v\n2,3\n")  # alone, v would be int64
    report = pipeline.ingest([str(tmp_path / "b.csv")], out=out, table="t",
                             scheduler=shared_scheduler)
    assert not report.notes  # ints fit the table's double column: nothing changed
    types = {str(pads.dataset(f).schema.field("v").type)
             for f in (tmp_path / "o" / "t").glob("*.parquet")}
    assert types == {"double"}
    (tmp_path / "c.csv").write_text("id,v,extra\n3,x,y\n")
    report = pipeline.ingest([str(tmp_path / "c.csv")], out=out, table="t",
                             scheduler=shared_scheduler)
    assert report.notes and "new columns extra" in report.notes[0] and "v double->string" in \
        report.notes[0]


def test_a_record_too_long_keeps_every_other_row(tmp_path, shared_scheduler) -> None:
    """Issue 20 item 9: the rows before (and after) a record over --max-record-bytes are
    kept; the long record alone is an _errors row with its offset."""
    rows = [f'{i},"note {i}\nwith a second line, and ""quotes"""' for i in range(3000)]
    rows[1500] = '1500,"' + "long\n" * 60_000 + '"'  # 300 KB: over --max-record-bytes
    path = tmp_path / "q.csv"
    path.write_text("id,text\n" + "\n".join(rows) + "\n")
    out = tmp_path / "o"
    report = pipeline.ingest([str(path)], out=str(out), chunk_size="32KB",
                             max_record_bytes="64KB", scheduler=shared_scheduler)
    whole = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    real = set(zip(whole["id"].to_pylist(), whole["text"].to_pylist(), strict=True))
    got = out_rows(out, "q", "select id, text")
    assert set(got) == {row for row in real if row[0] != 1500}
    assert len(got) == 2999
    (error,) = errors(out)
    assert (error["kind"], error["error_type"]) == ("record", "RecordTooLong")
    assert error["byte_offset"] == len("id,text\n" + "\n".join(rows[:1500]) + "\n")
    assert error["raw"].startswith(b'1500,"long') and report.files == {"partial": 1}


def test_dictionary_encoding_only_where_values_repeat(tmp_path, shared_scheduler) -> None:
    """Text and repetitive numbers are dictionary-encoded; unique ids and measurements are not
    (a dictionary page the writer would build only to throw away)."""
    rnd = random.Random(3)
    lines = ["id,code,value,ts,word"]
    for i in range(20_000):
        lines.append(f"{i},{rnd.choice([200, 301, 404, 500])},{rnd.random():.6f},"
                     f"2024-01-01 00:{i // 60 % 60:02d}:{i % 60:02d},{rnd.choice('abc')}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "lake"
    report = pipeline.ingest([str(tmp_path / "t.csv")], out=str(out), scheduler=shared_scheduler)
    assert report.ok
    import pyarrow.parquet as pq

    [fragment] = (out / "t").glob("*.parquet")
    meta = pq.ParquetFile(fragment).metadata
    dictionary = {meta.schema.column(i).name: meta.row_group(0).column(i).has_dictionary_page
                  for i in range(meta.num_columns)}
    assert dictionary == {"id": False, "code": True, "value": False, "ts": False, "word": True,
                          "_file_id": True}
    assert out_rows(out, "t", "select count(*), sum(code), count(distinct ts)") == \
        [(20_000, sum(int(line.split(",")[1]) for line in lines[1:]), 3600)]


def test_catalog_rows_of_any_size_and_type() -> None:
    """The catalog goes through pyarrow's JSON reader (no pandas import): a record longer
    than its default 1 MiB parse block, non-ASCII text, missing values and numpy scalars."""
    import numpy as np

    from pipeline.output.catalog import CATALOG_SCHEMA, catalog_table

    row = {"file_id": "a", "path": "/data/é.csv", "format": "csv", "size_bytes": np.int64(5),
           "mtime": 1_700_000_000.25, "fingerprint": "f", "status": "ok", "tables": ["t", "u"],
           "rows": 3, "chunks": 1, "error_count": 0, "duration_s": 2,
           "metadata": {"note": "ü" * 500_000}, "run_id": "r", "ingested_at": 1_700_000_001.5}
    other = {"file_id": "b", "path": "/data/b.csv", "status": "failed", "tables": []}
    table = catalog_table([row, other])
    assert table.schema == CATALOG_SCHEMA
    got = table.to_pylist()
    assert json.loads(got[0]["metadata"]) == {"note": "ü" * 500_000}
    assert got[0]["path"] == "/data/é.csv" and got[0]["size_bytes"] == 5
    assert got[0]["mtime"].timestamp() == 1_700_000_000.25 and got[0]["duration_s"] == 2.0
    assert got[1]["metadata"] == "{}" and got[1]["rows"] is None and got[1]["tables"] == []
    assert catalog_table([]).num_rows == 0

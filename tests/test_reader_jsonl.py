"""JSON lines: hostile records end as `_errors` rows, never as a crash, a lost row or bad Parquet.

Issue 20 items 7, 16-19, 28 (JSON half) and issue 16's JSON timestamps.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import read_catalog, run_reader

import pipeline
from readers._jsonlines import MAX_DEPTH, nesting_depth, object_lines, screen
from readers.errors import ErrorCode
from readers.widening import no_nulls

UTC = dt.UTC


def nested_list(depth: int) -> str:
    """A record nesting ``depth`` levels deep, its own object included."""
    return '{"a":' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"


def write(tmp_path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def table_rows(out, table: str) -> list[tuple]:
    return duckdb.sql(f"select * exclude (_file_id) from read_parquet('{out}/{table}/**/*.parquet',"
                      " union_by_name=true)").fetchall()


def error_rows(out) -> list[dict]:
    if not os.path.isdir(f"{out}/_errors"):
        return []
    rel = duckdb.sql(f"select error_type, byte_offset, raw, message from '{out}/_errors/*.parquet'"
                     " order by byte_offset")
    return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


# --- item 16: top-level values that are not objects -----------------------------------------

NON_OBJECTS = ["null", "1", '"x"', "[1, 2]", "true", "  null  ", "-0.5", "[]"]


@pytest.mark.parametrize("first", [True, False])
def test_non_object_lines_are_record_errors(tmp_path, first) -> None:
    """``null`` first in a block crashed the process (SIGSEGV in pyarrow); later it became a
    row of NULLs. Every non-object line is a JSONRecordError row at its own offset."""
    good = ['{"a": 1}', '{"a": 2}']
    lines = NON_OBJECTS + good if first else good[:1] + NON_OBJECTS + good[1:]
    text = "\n".join(lines) + "\n"
    path = write(tmp_path, "f.jsonl", text)
    for chunk in (1 << 20, 9):
        rows, rejected, _ = run_reader(path, "jsonl", chunk_size=chunk)
        assert rows.column("a").to_pylist() == [1, 2]
        assert [r.error_type for r in rejected] == [ErrorCode.JSON_RECORD_ERROR] * len(NON_OBJECTS)
        offsets = [text.index(line + "\n") for line in NON_OBJECTS]
        assert sorted(r.byte_offset for r in rejected) == offsets
        assert all("must hold an object" in r.message for r in rejected)


def test_a_file_of_nulls_survives_describe(tmp_path) -> None:
    path = write(tmp_path, "f.jsonl", "null\nnull\n1\n")
    rows, rejected, _ = run_reader(path, "jsonl")
    assert rows is None and len(rejected) == 3


def test_the_cli_survives_null_and_deep_records(tmp_path) -> None:
    """In the threads layout a segfault killed the whole CLI; a 200-deep record made every run
    exit 70 (its type could not be pickled to the workers); planning a 10,000-deep record
    segfaulted."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "nulls.jsonl").write_text('null\n{"a": 1}\nnull\n{"a": 2}\n')
    deep = '{"a":' + '{"a":' * 200 + "1" + "}" * 200 + "}"
    (inp / "deep.jsonl").write_text('{"x": 1}\n' + deep + '\n{"x": 2}\n')
    (inp / "plan.jsonl").write_text('{"x": 1}\n' + nested_list(10_000) + "\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    plan = subprocess.run([sys.executable, "-m", "pipeline.cli", "plan", str(inp / "plan.jsonl")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert plan.returncode == 0, plan.stderr[-2000:]
    out = tmp_path / "out"
    ingest = [sys.executable, "-m", "pipeline.cli", "ingest", str(inp), "--out", str(out),
              "--layout", "threads", "--no-progress"]
    run = subprocess.run(ingest, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    catalog = read_catalog(out)
    assert catalog["nulls.jsonl"]["rows"] == 2 and catalog["deep.jsonl"]["rows"] == 2
    assert catalog["nulls.jsonl"]["status"] == catalog["deep.jsonl"]["status"] == "partial"
    again = subprocess.run(ingest, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]  # every re-run exited 70
    errors = duckdb.sql(f"select path, error_type, message from '{out}/_errors/*.parquet'"
                        ).fetchall()
    assert sorted(os.path.basename(p) for p, _, _ in errors) == [
        "deep.jsonl", "nulls.jsonl", "nulls.jsonl", "plan.jsonl"]
    assert {m.split(": ")[-1].split(" (raw")[0] for _, _, m in errors} == {
        "nested 201 levels deep, more than the 50 allowed",
        "nested 10000 levels deep, more than the 50 allowed",
        "a JSON line must hold an object, not null"}


def test_several_values_on_one_line_are_rejected(tmp_path) -> None:
    """pyarrow reads a stream of values: ``{..} {..}`` and CR-separated records were two rows
    of one line. DuckDB's read_json calls it malformed; so does chunkmill."""
    text = '{"a":1}\n{"a":2} {"a":3}\n{"a":4}\r{"a":5}\n{"a":6} null\n{"a":7}\n'
    rows, rejected, _ = run_reader(write(tmp_path, "f.jsonl", text), "jsonl")
    assert rows.column("a").to_pylist() == [1, 7]
    assert [r.byte_offset for r in rejected] == [8, 24, 40]
    assert all(r.error_type == ErrorCode.JSON_RECORD_ERROR for r in rejected)


# --- item 7: nesting depth --------------------------------------------------------------------

def test_depth_limit_is_exactly_what_parquet_pyarrow_and_duckdb_take(tmp_path) -> None:
    """A record at the limit is kept and reads back everywhere; one level more is rejected."""
    text = "\n".join([nested_list(MAX_DEPTH), nested_list(MAX_DEPTH + 1), '{"a": null}']) + "\n"
    rows, rejected, _ = run_reader(write(tmp_path, "f.jsonl", text), "jsonl")
    assert rows.num_rows == 2
    (bad,) = rejected
    assert bad.byte_offset == text.index(nested_list(MAX_DEPTH + 1))
    assert f"nested {MAX_DEPTH + 1} levels deep" in bad.message
    pq.write_table(rows, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").equals(rows)
    assert duckdb.sql(f"select count(*) from '{tmp_path}/t.parquet'").fetchall() == [(2,)]
    sink = pa.BufferOutputStream()  # Dask ships tables as Arrow IPC
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    assert pa.ipc.open_stream(sink.getvalue()).read_all().equals(rows)
    # one level more is what pyarrow's Parquet reader refuses: the limit is not arbitrary
    deeper = pa.table({"a": pa.array([json.loads(nested_list(MAX_DEPTH + 1))["a"]])})
    pq.write_table(deeper, tmp_path / "deeper.parquet")
    with pytest.raises(OSError, match="too deep"):
        pq.read_table(tmp_path / "deeper.parquet")


def test_deep_records_after_the_head_are_rejected_not_recursed(tmp_path) -> None:
    """A deep (or deep and malformed) record beyond the inference sample: RecursionError in
    the rescue path failed the whole chunk; now it is one _errors row."""
    head = "".join(f'{{"a": "{i}"}}\n' for i in range(30))
    deep_ok = '{"a":' + "[" * 3000 + "]" * 3000 + "}"
    deep_bad = '{"a":' + "[" * 5000 + "1,"
    text = head + deep_ok + "\n" + deep_bad + "\n" + '{"a": "last"}\n'
    rows, rejected, _ = run_reader(write(tmp_path, "f.jsonl", text), "jsonl", infer_bytes=200)
    assert rows.column("a").to_pylist()[-1] == "last" and rows.num_rows == 31
    assert [r.byte_offset for r in rejected] == [len(head), len(head) + len(deep_ok) + 1]
    assert "3001 levels deep" in rejected[0].message


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    assert nesting_depth(b'{"a": "[[[[{{{{", "b": [{"c": "\\"]]"}]}') == 3
    line = ('{"s": "' + "[" * 200 + '"}\n').encode()
    assert not screen(line).bad and object_lines(line) == 1


# --- item 17: UTF-8 ---------------------------------------------------------------------------

def test_invalid_utf8_never_reaches_parquet(tmp_path) -> None:
    """Invalid bytes and lone surrogates were written into string columns: DuckDB refused the
    file and the status was ok. They are InvalidUTF8 rows; DuckDB reads the table back."""
    lines = [b'{"s": "ok", "n": 1}', b'{"s": "bad \xff byte", "n": 2}',
             b'{"s": "\\ud800 lone", "n": 3}', b'{"s": "\\udc00", "n": 4}',
             b'{"s": "cesu \xed\xa0\x80", "n": 5}', b'{"s": "\\ud83d\\ude00 pair", "n": 6}',
             b'{"s": {"k": "\xc0\xaf"}, "n": 7}', b'{"\xff": 1, "n": 8}']
    data = b"\n".join(lines) + b"\n"
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "head.jsonl").write_bytes(data)  # bad lines inside the inference sample
    (inp / "tail.jsonl").write_bytes(b'{"s": "ok", "n": 0}\n' * 20 + data)
    out = tmp_path / "out"
    report = pipeline.ingest([str(inp)], out=str(out), progress=False, layout="threads")
    assert report.rows == 2 + 22
    got = duckdb.sql(f"select s, n, count(*) from read_parquet('{out}/in/**/*.parquet') "
                     "group by all order by n").fetchall()
    assert got == [("ok", 0, 20), ("ok", 1, 2), ("😀 pair", 6, 2)]
    errors = error_rows(out)
    assert len(errors) == 12 and {e["error_type"] for e in errors} <= {"InvalidUTF8",
                                                                       "JSONRecordError"}
    kinds = {e["raw"].split(b'"n": ')[1][:1]: e["error_type"] for e in errors}
    assert kinds[b"2"] == kinds[b"3"] == kinds[b"4"] == kinds[b"5"] == "InvalidUTF8"
    assert {c["status"] for c in read_catalog(out).values()} == {"partial"}


# --- item 18: empty objects -------------------------------------------------------------------

def test_empty_objects_are_rows_of_nulls(tmp_path) -> None:
    """A `{}` line was counted in the catalog but not written (catalog rows must always equal
    the rows in the tables)."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "mixed.jsonl").write_text('{"a": 1}\n{}\n{"a": 2}\n')
    (inp / "only.jsonl").write_text("{}\n{}\n  {} \n")
    out = tmp_path / "out"
    for path, table in ((inp / "mixed.jsonl", "mixed"), (inp / "only.jsonl", "only")):
        report = pipeline.ingest([str(path)], out=str(out), progress=False, layout="threads")
        written = duckdb.sql(f"select count(*) from read_parquet('{out}/{table}/**/*.parquet')"
                             ).fetchall()[0][0]
        assert report.ok and report.rows == written == 3
        assert read_catalog(out)[path.name]["rows"] == 3
    assert sorted(table_rows(out, "mixed"), key=str) == [(1,), (2,), (None,)]


# --- item 19 and 28: widening inside lists and structs, empty structs -----------------------

def test_lists_and_structs_widen_element_wise(tmp_path) -> None:
    text = ('{"v": [1], "s": {"a": 1}}\n{"v": ["a"], "s": {"a": "q"}}\n'
            '{"v": [true, {"x": 1}], "s": {"a": [1, 2]}}\n')
    rows, rejected, _ = run_reader(write(tmp_path, "f.jsonl", text), "jsonl")
    assert not rejected
    assert str(rows.schema.field("v").type) == "list<item: string>"
    assert rows.to_pylist() == [{"v": ["1"], "s": {"a": "1"}}, {"v": ["a"], "s": {"a": "q"}},
                                {"v": ["true", '{"x":1}'], "s": {"a": "[1,2]"}}]


def test_values_needing_their_json_text_cost_few_parses(tmp_path, monkeypatch) -> None:
    """A column widened to string whose values are mostly numbers: every line needs its JSON
    text. Lines are re-serialised a piece at a time, not parsed one by one (100,000 such lines
    took 141 s)."""
    from readers.jsonl import JSONLReader

    calls = []
    parse = JSONLReader._read_json
    monkeypatch.setattr(JSONLReader, "_read_json",
                        lambda self, *a, **k: calls.append(1) or parse(self, *a, **k))
    text = '{"v": "x", "n": [1]}\n' * 5 + '{"v": 1, "n": [{"a": 2}]}\n' * 5000
    rows, rejected, _ = run_reader(write(tmp_path, "f.jsonl", text), "jsonl")
    assert not rejected and rows.num_rows == 5005
    assert rows.to_pylist()[-1] == {"v": "1", "n": ['{"a":2}']}
    assert len(calls) < 200, len(calls)


def test_empty_structs_become_json_text(tmp_path) -> None:
    """``{"v": {}}`` failed its chunk ("Cannot write struct type with no child field"). A
    struct no sampled value gave a field becomes text; later values keep their JSON text."""
    head = '{"v": {}, "l": [], "w": {"e": {}}}\n' * 5
    later = '{"v": {"a": 1}, "l": [1, "x"], "w": {"e": {"b": [true]}}}\n'
    path = write(tmp_path, "f.jsonl", head + later)
    rows, rejected, _ = run_reader(path, "jsonl", infer_bytes=len(head))
    assert not rejected
    assert rows.schema == pa.schema([("v", pa.string()), ("l", pa.list_(pa.string())),
                                     ("w", pa.struct([("e", pa.string())]))])
    assert rows.to_pylist()[-1] == {"v": '{"a":1}', "l": ["1", "x"], "w": {"e": '{"b":[true]}'}}
    # end to end: written, and read back by DuckDB as text
    out = tmp_path / "out"
    report = pipeline.ingest([write(tmp_path, "g.jsonl", head)], out=str(out), progress=False,
                             layout="threads")
    assert report.ok and report.rows == 5 and not error_rows(out)
    got = duckdb.sql(f"select v, l, w.e from read_parquet('{out}/g/**/*.parquet')").fetchall()
    assert got == [("{}", [], "{}")] * 5


def test_no_nulls_reaches_nested_types() -> None:
    schema = pa.schema([("n", pa.null()), ("l", pa.list_(pa.null())),
                        ("s", pa.struct([("e", pa.struct([])), ("x", pa.int64())])),
                        ("k", pa.int32())])
    assert no_nulls(schema) == pa.schema([
        ("n", pa.string()), ("l", pa.list_(pa.string())),
        ("s", pa.struct([("e", pa.string()), ("x", pa.int64())])), ("k", pa.int32())])


# --- issue 16: timestamps with a zone ---------------------------------------------------------

TIME_COLUMNS = {
    "z": ["2020-01-01T00:00:00Z", "2020-06-01T12:30:00+02:00", "2020-01-01T00:00:00-0130"],
    "frac": ["2020-01-01T00:00:00.123456Z", "2020-01-01T00:00:00.5+01:00", None],
    "naive": ["2020-01-01T00:00:00", "2020-01-01 02:00:00", None],
    "naive_frac": ["2020-01-01T00:00:00", "2020-01-01 02:00:00.25", "2020-01-02T00:00:00"],
    "day": ["2020-01-01", "2021-12-31", None],
    "mixed": ["2020-01-01T00:00:00", "2020-01-01T00:00:00Z", None],
    "day_and_zone": ["2020-01-01", "2020-01-01T00:00:00Z", None],
    "text": ["2020-01-01T00:00:00Z", "not a time", None],
}


def test_json_times_are_typed_as_csv_types_them(tmp_path) -> None:
    """Offsets were dropped (naive timestamps); now every column gets the type pyarrow's CSV
    inference gives the same text: UTC-aware for zoned text, naive for naive, text for a mix."""
    records = [{k: v[i] for k, v in TIME_COLUMNS.items()} for i in range(3)]
    path = write(tmp_path, "t.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    rows, rejected, _ = run_reader(path, "jsonl")
    assert not rejected
    csv = pacsv.read_csv(io.BytesIO(("\n".join(
        [",".join(TIME_COLUMNS)] + [",".join(r[k] or "" for k in TIME_COLUMNS)
                                    for r in records]) + "\n").encode()))
    for name in TIME_COLUMNS:
        assert rows.schema.field(name).type == csv.schema.field(name).type, name
        # (pyarrow's CSV reads an empty field of a text column as "", JSON null is None)
        expected = [None if v == "" else v for v in csv.column(name).to_pylist()]
        assert rows.column(name).to_pylist() == expected, name
    assert str(rows.schema.field("z").type) == "timestamp[s, tz=UTC]"
    assert rows.column("z").to_pylist() == [dt.datetime(2020, 1, 1, tzinfo=UTC),
                                            dt.datetime(2020, 6, 1, 10, 30, tzinfo=UTC),
                                            dt.datetime(2020, 1, 1, 1, 30, tzinfo=UTC)]
    # DuckDB's read_json holds the same instants
    duck = duckdb.sql(f"select z from read_json('{path}', format='newline_delimited')").fetchall()
    assert [d.astimezone(UTC) for (d,) in duck] == rows.column("z").to_pylist()


def test_zoned_times_nested_and_after_the_head(tmp_path) -> None:
    """Nested leaves are typed too; naive text later in a UTC column is a TypeMismatch (as in
    CSV), not silently taken as UTC."""
    head = "".join(json.dumps({"e": {"t": f"2020-01-01T00:00:0{i}+01:00",
                                     "l": ["2020-01-01T10:00Z"]}}) + "\n" for i in range(5))
    tail = (json.dumps({"e": {"t": "2020-01-01T00:00:00", "l": []}}) + "\n"
            + json.dumps({"e": {"t": "2020-01-01T05:00:00Z", "l": None}}) + "\n")
    path = write(tmp_path, "t.jsonl", head + tail)
    rows, rejected, _ = run_reader(path, "jsonl", infer_bytes=len(head))
    assert rows.schema.field("e").type == pa.struct([
        ("t", pa.timestamp("s", tz="UTC")), ("l", pa.list_(pa.timestamp("s", tz="UTC")))])
    assert rows.num_rows == 6
    assert rows.to_pylist()[-1]["e"]["t"] == dt.datetime(2020, 1, 1, 5, tzinfo=UTC)
    (bad,) = rejected
    assert bad.error_type == ErrorCode.TYPE_MISMATCH and bad.byte_offset == len(head)
    assert "zone offset" in bad.message


def test_naive_and_aware_files_meet_as_text(tmp_path) -> None:
    """Files of one table with naive, zoned and date-only times: the column is text holding
    the values as written (DuckDB's read_json makes the same mix VARCHAR); zoned files alone
    stay TIMESTAMPTZ."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jsonl").write_text('{"t": "2020-01-01T00:00:00Z", '
                                 '"z": "2020-01-01T02:00:00+02:00"}\n')
    (inp / "b.jsonl").write_text('{"t": "2020-01-01T00:00:00", "z": "2020-01-01T00:00:00Z"}\n')
    (inp / "c.jsonl").write_text('{"t": "2020-01-02", "z": "2020-01-01T00:00:00-01:00"}\n')
    out = tmp_path / "out"
    report = pipeline.ingest([str(inp)], out=str(out), progress=False, layout="threads")
    assert report.ok and report.rows == 3 and not error_rows(out)
    rel = duckdb.sql(f"select t, z from read_parquet('{out}/in/**/*.parquet') order by t")
    assert [str(t) for t in rel.types] == ["VARCHAR", "TIMESTAMP WITH TIME ZONE"]
    got = rel.fetchall()
    assert [t for t, _ in got] == ["2020-01-01T00:00:00", "2020-01-01T00:00:00Z", "2020-01-02"]
    assert sorted(z.astimezone(UTC) for _, z in got) == [
        dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2020, 1, 1, tzinfo=UTC),
        dt.datetime(2020, 1, 1, 1, tzinfo=UTC)]
    duck = duckdb.sql(f"select t from read_json('{inp}/*.jsonl', format='newline_delimited')")
    assert [str(t) for t in duck.types] == ["VARCHAR"]

"""Issue 16 items 2 (leading zeros) and 3 (dialect): sniffed and given CSV dialects, values kept
intact, through the CLI and the Python API, with DuckDB's ``read_csv`` as the reference."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

import pipeline
from pipeline.cli import run as cli
from pipeline.errors import UsageError
from tests.conftest import read_catalog, run_reader

FLAGS = ["--no-progress", "--layout", "threads", "--chunk-size", "24"]


def _duck(sql: str) -> tuple[list[tuple], list[str]]:
    con = duckdb.connect()
    rows = con.sql(sql).fetchall()
    types = [r[1] for r in con.sql(f"describe {sql}").fetchall()]
    return rows, types


def _out(out, table: str) -> tuple[list[tuple], list[str]]:
    return _duck(f"select * exclude (_file_id) from read_parquet('{out}/{table}/**/*.parquet') "
                 "order by all")


def _errors(out) -> list[dict]:
    try:
        return duckdb.sql(f"select * from read_parquet('{out}/_errors/**/*.parquet')"
                          ).fetch_arrow_table().to_pylist()
    except duckdb.IOException:
        return []


# --- 2. leading zeros ------------------------------------------------------------------------
def test_leading_zeros_are_text_like_duckdb(tmp_path) -> None:
    src = tmp_path / "z.csv"
    src.write_text("zip,n,f,neg,one\n01420,0,0.5,-0,1\n00007,1,1.5,3,01\n99501,2,2.5,4,2\n")
    out = tmp_path / "o"
    assert pipeline.ingest(src, out=out, progress=False, chunk_size=16).ok
    got, types = _out(out, "z")
    want = _duck(f"select * from read_csv('{src}') order by all")
    assert (got, types) == want
    assert types == ["VARCHAR", "BIGINT", "DOUBLE", "BIGINT", "VARCHAR"]
    assert ("00007", 1, 1.5, 3, "01") in got


def test_leading_zero_after_inference_converts_like_duckdb(tmp_path) -> None:
    """Types come from the head: a value with a leading zero after it, in a column typed int64
    there, converts as DuckDB's read_csv converts it past its sample; --schema zip=varchar
    keeps the column as text."""
    body = "".join(f"{i},{i}\n" for i in range(1, 120_000))
    assert len(body) > 1 << 20
    src = tmp_path / "late.csv"
    src.write_text("zip,n\n" + body + "0042,7\n" + "5,5\n")
    want = _duck(f"select * from read_csv('{src}', sample_size=1000) order by all")
    for chunk in ("300KB", "32MiB"):
        out = tmp_path / f"o{chunk}"
        pipeline.ingest(src, out=out, progress=False, chunk_size=chunk)
        assert _out(out, "late") == want
        assert not _errors(out)
        assert duckdb.sql(f"select count(*) from read_parquet('{out}/late/**/*.parquet') "
                          "where zip = 42 and n = 7").fetchall() == [(1,)]
    out = tmp_path / "declared"
    pipeline.ingest(src, out=out, progress=False, schema={"zip": "varchar"})
    assert not _errors(out)
    assert duckdb.sql(f"select typeof(zip), count(*) filter (zip = '0042') "
                      f"from read_parquet('{out}/late/**/*.parquet') group by all"
                      ).fetchall() == [("VARCHAR", 1)]


def test_leading_zero_after_inference_in_reader_chunks(tmp_path) -> None:
    src = tmp_path / "z.csv"
    src.write_bytes(b"a,b\n" + b"1,2\n" * 50 + b"007,3\n")
    for chunk in (3, 17, 1 << 20):
        got, rejected, _ = run_reader(str(src), chunk_size=chunk, infer_bytes=64)
        assert got.num_rows == 51 and not rejected
        assert got.column("a").to_pylist()[-1] == 7


# --- 3. dialect --------------------------------------------------------------------------------
def test_semicolon_csv_is_sniffed_and_recorded(tmp_path, capsys) -> None:
    src = tmp_path / "semi.csv"
    src.write_text('a;b;c\n1;"x;y";2,5\n2;z;3,5\n')
    out = tmp_path / "o"
    assert cli(["ingest", str(src), "--out", str(out), *FLAGS]) == 0, capsys.readouterr().err
    assert _out(out, "semi") == _duck(f"select * from read_csv('{src}') order by all")
    assert _out(out, "semi")[0] == [(1, "x;y", "2,5"), (2, "z", "3,5")]
    meta = json.loads(read_catalog(out)[src.name]["metadata"])
    assert meta["dialect"]["delimiter"] == ";" and meta["dialect"]["sniffed"] == ["delimiter"]
    assert meta["dialect"]["quote"] == '"' and meta["dialect"]["header"] is True


# name, file text, chunkmill kwargs, the equivalent DuckDB read_csv arguments
CASES = [
    ("pipe", "id|name|v\n1|a b|1.5\n2|c|2.5\n3||3.5\n", {}, ""),
    ("semicolon", "id;name\n1;x\n2;y\n3;z\n", {"delimiter": ";"}, ", delim=';'"),
    ("comments", "# exported 2024\nid,v\n1,a\n# a note\n2,b\n3,c\n", {"comment": "#"},
     ", comment='#'"),
    ("preamble", "report of\nsomething\nid,v\n1,10\n2,20\n3,30\n", {"skip_rows": 2},
     ", skip=2"),
    ("padding", "a,b,c\n1,2\n3,4,5\n6\n7,8,9\n", {"null_padding": True},
     ", null_padding=true"),
    ("nulls", "a,b\n1,NA\nNA,x\n3,null\n", {"null_values": "NA,null"},
     ", nullstr=['NA','null']"),
    ("escape", 'a,b\n1,"say \\"hi\\""\n2,"back\\\\"\n3,"x,y"\n', {"escape": "\\"},
     ", escape='\\'"),
    ("single", "a,b\n1,'it''s'\n2,'x,y'\n", {"quote": "'"}, ", quote=''''"),
    ("tab", "a\tb\n1\tx\n2\ty\n", {}, ""),
]


@pytest.mark.parametrize(("name", "text", "kwargs", "duck"), CASES, ids=[c[0] for c in CASES])
def test_dialects_match_duckdb_read_csv(tmp_path, name, text, kwargs, duck) -> None:
    src = tmp_path / f"{name}.csv"
    src.write_text(text)
    out = tmp_path / "o"
    report = pipeline.ingest(src, out=out, progress=False, chunk_size=7, **kwargs)
    assert report.ok, report
    want = _duck(f"select * from read_csv('{src}'{duck}) order by all")
    assert _out(out, name) == want
    assert not _errors(out)


def test_dialect_options_through_the_cli(tmp_path, capsys) -> None:
    src = tmp_path / "odd.txt"
    src.write_text("exported by x\n# comment\nid|v|w\n1|NA|'a|b'\n2|z\n")
    out = tmp_path / "o"
    code = cli(["ingest", str(src), "--out", str(out), "--format", "csv", *FLAGS,
                "--delimiter", "|", "--quote", "'", "--skip-rows", "1", "--comment", "#",
                "--null-values", "NA", "--null-padding"])
    assert code == 0, capsys.readouterr().err
    got = _out(out, "odd")
    assert got == _duck(f"select * from read_csv('{src}', delim='|', quote='''', skip=1, "
                        "comment='#', nullstr='NA', null_padding=true) order by all")
    assert got[0] == [(1, None, "a|b"), (2, "z", None)]
    meta = json.loads(read_catalog(out)[src.name]["metadata"])["dialect"]
    assert meta == {"delimiter": "|", "quote": "'", "escape": None, "header": True,
                    "skip_rows": 1, "comment": "#", "null_values": ["NA"],
                    "null_padding": True, "sniffed": []}


def test_missing_fields_without_padding_are_rejected_with_a_hint(tmp_path) -> None:
    src = tmp_path / "short.csv"
    src.write_text("a,b,c\n1,2,3\n4,5\n")
    out = tmp_path / "o"
    pipeline.ingest(src, out=out, progress=False)
    errors = _errors(out)
    assert len(errors) == 1 and "--null-padding" in errors[0]["message"]


def test_dialect_kwargs_in_plan_and_read(tmp_path) -> None:
    src = tmp_path / "p.csv"
    src.write_text("x\ny\nid;v\n1;a\n2;b\n")
    plan = pipeline.plan(src, skip_rows=2)
    assert [f.name for f in plan.schemas["p"]] == ["id", "v"]
    table = pipeline.read(src, skip_rows=2, delimiter=";").compute()
    assert sorted(table["id"].tolist()) == [1, 2]


@pytest.mark.parametrize("bad", [{"delimiter": "ab"}, {"quote": "\n"}, {"skip_rows": -1},
                                 {"delimiter": '"'}])
def test_bad_dialect_options_are_usage_errors(tmp_path, bad) -> None:
    with pytest.raises(UsageError):
        pipeline.ingest(tmp_path, out=tmp_path / "o", **bad)


def test_sniffer_prefers_consistent_columns() -> None:
    from readers._dialect import sniff_delimiter

    assert sniff_delimiter(b"a;b;c\n1;2,5;3\n4;5,5;6\n", '"', None, None, ",") == ";"
    assert sniff_delimiter(b"a,b\n1,2\n", '"', None, None, ",") == ","
    assert sniff_delimiter(b"a|b\n1|2\n", '"', None, None, ",") == "|"
    assert sniff_delimiter(b"a\tb\tc;d\n1\t2\t3;4\n", '"', None, None, ",") == "\t"
    assert sniff_delimiter(b"just text\nmore\n", '"', None, None, ",") is None
    assert pa is not None


def test_signed_and_decimal_leading_zeros_are_text(tmp_path) -> None:
    src = tmp_path / "s.csv"
    src.write_text("a,b,c,d\n-007,00.5,0,-0\n1,1.5,2,3\n")
    got, _, _ = run_reader(str(src))
    assert got.schema.types == [pa.string(), pa.string(), pa.int64(), pa.int64()]
    assert got.to_pylist()[0] == {"a": "-007", "b": "00.5", "c": 0, "d": 0}


def test_per_column_rescue_keeps_the_files_dialect(tmp_path) -> None:
    """A value that does not convert in a ';' file with NA as NULL: only its row is rejected,
    the NA stays NULL and the quoted ';' stays in its value (the rescue parses as the file)."""
    src = tmp_path / "r.csv"
    src.write_bytes(b"a;b\n" + b'1;"x;y"\n' * 40 + b"NA;z\n3.5;w\n2;v\n")
    got, rejected, _ = run_reader(str(src), chunk_size=1 << 20, infer_bytes=64,
                                  null_values=("NA",))
    assert [r.error_type for r in rejected] == ["TypeMismatch"]
    assert rejected[0].raw == b"3.5;w\n"
    assert got.column("a").to_pylist()[-2:] == [None, 2]
    assert got.column("b").to_pylist()[0] == "x;y" and got.num_rows == 42

"""Issue 16, items 4 and 5: ``--encoding`` (transcoding to UTF-8 while reading) and
``--columns`` (only the chosen columns are read), through the CLI and the Python API."""

from __future__ import annotations

import duckdb
import pytest

import pipeline
from pipeline.cli import run as cli
from tests.conftest import read_catalog


def _rows(out, table: str, columns: str = "* exclude (_file_id)", order: str = "1"):
    return duckdb.sql(f"select {columns} from read_parquet('{out}/{table}/**/*.parquet', "
                      f"union_by_name=true) order by {order}").fetchall()


def _names(out, table: str) -> list[str]:
    return [r[0] for r in duckdb.sql(
        f"describe select * from read_parquet('{out}/{table}/**/*.parquet')").fetchall()]


# --- --columns ---------------------------------------------------------------------------------

CSV = "id,name,price,note\n1,a,1.5,x\n2,b,2.5,y\n3,c,x,z\n"


def test_cli_columns_keeps_only_those_in_the_order_given(tmp_path, capsys) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    (tmp_path / "u.jsonl").write_text('{"id": 1, "name": "a", "deep": {"x": [1]}}\n'
                                      '{"id": 2, "extra": "not read", "name": "b"}\n')
    out = tmp_path / "out"
    code = cli(["ingest", str(tmp_path / "t.csv"), str(tmp_path / "u.jsonl"), "--out", str(out),
                "--columns", "name,id", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    # The bad price of row 3 is not read, so the row is not rejected.
    assert _names(out, "t") == ["name", "id", "_file_id"]
    assert _rows(out, "t", order="2") == [("a", 1), ("b", 2), ("c", 3)]
    assert _names(out, "u") == ["name", "id", "_file_id"]
    assert _rows(out, "u", order="2") == [("a", 1), ("b", 2)]
    want = duckdb.sql(f"select name, id from read_csv('{tmp_path / 't.csv'}') order by id")
    assert _rows(out, "t", order="2") == want.fetchall()


def test_python_columns_across_chunks_and_bundles(tmp_path) -> None:
    rows = "".join(f"{i},n{i},{i / 2},{'q' * (i % 7)}\n" for i in range(3000))
    (tmp_path / "big.csv").write_text("id,name,price,note\n" + rows)
    for i in range(3):  # small files: read many to a task
        (tmp_path / f"s{i}.csv").write_text(f"id,name,price,note\n{i},s{i},1.0,x\n")
    out = tmp_path / "out"
    report = pipeline.ingest([str(tmp_path)], out=str(out), columns=["price", "id"],
                             chunk_size="8KB", table="t", progress=False)
    assert report.exit_code == 0 and report.rows == 3003
    assert _names(out, "t") == ["price", "id", "_file_id"]
    got = _rows(out, "t", "sum(id), sum(price), count(*)")
    assert got == [(sum(range(3000)) + 3, sum(i / 2 for i in range(3000)) + 3.0, 3003)]
    df = pipeline.read([str(tmp_path / "big.csv")], columns="id").compute()
    assert list(df.columns) == ["id", "_file_id"] and len(df) == 3000


def test_columns_no_table_has_is_a_usage_error(tmp_path, capsys) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    code = cli(["ingest", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"),
                "--columns", "id,nmae", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--columns nmae" in err and "id, name, note, price" in err
    with pytest.raises(pipeline.UsageError, match="not among --columns"):
        pipeline.ingest([str(tmp_path / "t.csv")], out=str(tmp_path / "o2"), columns="id",
                        schema={"price": "double"}, progress=False)


# --- --encoding --------------------------------------------------------------------------------

def _text_rows(n: int) -> list[tuple[int, str, str]]:
    return [(i, f"Jos\u00e9 M\u00fcller \u00bd {i}", f"\u20ac {i} \u201cq\u201d \u2013 Stra\u00dfe")
            for i in range(n)]


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_single_byte_encoding_in_parallel_chunks(tmp_path, encoding) -> None:
    rows = _text_rows(1500)
    if encoding == "latin-1":  # no euro sign or curly quotes in latin-1
        rows = [(i, a, b.encode("latin-1", "replace").decode("latin-1")) for i, a, b in rows]
    text = "id,name,note\n" + "".join(f'{i},{a},"{b}"\n' for i, a, b in rows)
    text += "1500,x\u00e9\n"  # a record of two fields, not three: rejected
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode(encoding))
    out = tmp_path / "out"
    report = pipeline.ingest([str(path)], out=str(out), encoding=encoding, chunk_size="4KB",
                             progress=False)
    assert report.rows == 1500 and len(read_catalog(out)) == 1
    assert read_catalog(out)["t.csv"]["chunks"] > 10
    assert _rows(out, "t") == rows
    # Offsets in _errors are the file's own bytes.
    (offset, raw), = duckdb.sql(f"select byte_offset, raw from read_parquet('{out}/_errors/"
                                "*.parquet')").fetchall()
    assert path.read_bytes()[offset:] == "1500,x\u00e9\n".encode(encoding)
    assert raw.decode() == "1500,x\u00e9"


def test_not_utf8_without_encoding_fails_naming_the_option(tmp_path, capsys) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("id,name\n1,Jos\u00e9\n".encode("latin-1"))
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 40)  # a real binary: still sniffed
    out = tmp_path / "out"
    code = cli(["ingest", str(tmp_path), "--out", str(out), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "latin.csv" in err and "--encoding" in err
    status = {name: (r["status"], r["format"]) for name, r in read_catalog(out).items()}
    assert status == {"latin.csv": ("failed", "csv"), "blob.bin": ("ok", "binary")}
    (path_, kind, message), = duckdb.sql(
        f"select path, kind, message from read_parquet('{out}/_errors/*.parquet')").fetchall()
    assert path_.endswith("latin.csv") and kind == "file" and "--encoding latin-1" in message
    code = cli(["ingest", str(path), "--out", str(out), "--encoding", "latin-1",
                "--no-progress"])
    assert code == 0
    assert _rows(out, "latin") == [(1, "Jos\u00e9")]


def test_utf16_is_read_as_one_transcoded_stream(tmp_path, capsys) -> None:
    rows = [(i, f"\u65e5\u672c {i}", "caf\u00e9") for i in range(3000)]
    csv_path = tmp_path / "u.csv"
    csv_path.write_bytes(("id,name,note\n" + "".join(f"{i},{a},{b}\n" for i, a, b in rows))
                         .encode("utf-16"))
    json_path = tmp_path / "v.jsonl"
    json_path.write_bytes("".join(f'{{"id": {i}, "name": "{a}"}}\n' for i, a, _ in rows)
                          .encode("utf-16-le"))
    out = tmp_path / "out"
    code = cli(["ingest", str(csv_path), "--out", str(out), "--encoding", "utf-16",
                "--chunk-size", "8KB", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert _rows(out, "u") == rows
    assert read_catalog(out)["u.csv"]["chunks"] == 1
    report = pipeline.ingest([str(json_path)], out=str(out), encoding="utf-16-le",
                             progress=False)
    assert report.exit_code == 0
    assert _rows(out, "v") == [(i, a) for i, a, _ in rows]


def test_utf16_json_lines_without_encoding_fails(tmp_path, capsys) -> None:
    (tmp_path / "v.jsonl").write_bytes('{"id": 1}\n'.encode("utf-16-le"))
    code = cli(["ingest", str(tmp_path / "v.jsonl"), "--out", str(tmp_path / "out"),
                "--no-progress"])
    assert code == 1 and "--encoding" in capsys.readouterr().err


def test_a_nul_byte_in_one_json_line_rejects_that_line_only(tmp_path) -> None:
    # One damaged record among thousands is not UTF-16: it fails alone, with its offset.
    good = b'{"id": 1}\n' * 3000
    (tmp_path / "v.jsonl").write_bytes(good + b'{"id": \x002}\n' + b'{"id": 3}\n')
    report = pipeline.ingest([str(tmp_path / "v.jsonl")], out=str(tmp_path / "out"),
                             progress=False)
    assert (report.rows, report.errors) == (3001, 1)
    offsets = duckdb.sql(f"select byte_offset from '{tmp_path}/out/_errors/**/*.parquet'"
                         ).fetchall()
    assert offsets == [(len(good),)]


def test_unknown_encoding_is_a_usage_error(tmp_path, capsys) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    code = cli(["ingest", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"),
                "--encoding", "latin-9000", "--no-progress"])
    assert code == 2 and "--encoding 'latin-9000'" in capsys.readouterr().err


def test_explicit_utf8_rejects_bad_records_instead_of_the_file(tmp_path, capsys) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes("id,name\n1,Ann\n2,Jos\u00e9\n3,Bo\n".encode("latin-1"))
    out = tmp_path / "out"
    code = cli(["ingest", str(path), "--out", str(out), "--encoding", "utf-8", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert _rows(out, "mixed") == [(1, "Ann"), (3, "Bo")]
    (kind, error_type, offset), = duckdb.sql(
        f"select kind, error_type, byte_offset from read_parquet('{out}/_errors/*.parquet')"
    ).fetchall()
    assert (kind, error_type, offset) == ("record", "InvalidUTF8", 14)
    assert read_catalog(out)["mixed.csv"]["status"] == "partial"

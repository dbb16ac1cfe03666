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

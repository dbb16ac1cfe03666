"""Which files make which table (issue 17): one rule whatever the spelling of the inputs.

Files whose column sets are equal or nested make one table named after their directory; a group
whose columns do not nest with the others' is a table of its own, named after its files' common
stem; ``--table`` forces one table. Hidden names and chunkmill's own output are never inputs.
Everything is driven through the CLI or the Python API on tiny CSV files (the default embedded
threads layout) and read back with DuckDB.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline import cli
from pipeline.errors import SourceNotFound
from pipeline.planning.grouping import Member, common_stem, group_tables, series_name


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    root = tmp_path / "exports"
    write(root / "customers.csv", "id,name,email\n1,Ann,ann@x.org\n2,Bob,bob@x.org\n")
    write(root / "orders.csv", "id,customer_id,amount\n10,1,2.5\n11,2,4.0\n12,1,1.25\n")
    return root


def tables_of(plan: pipeline.Plan) -> dict[str, str]:
    """File name -> table."""
    return {os.path.basename(f.source.path): ",".join(f.tables) for f in plan.files}


def described(lake: Path, table: str) -> list[tuple[str, str]]:
    rel = duckdb.sql(f"select * exclude (_file_id) from read_parquet('{lake}/{table}/**/*.parquet',"
                     " union_by_name=true)")
    return list(zip(rel.columns, map(str, rel.types), strict=True))


def count(lake: Path, table: str) -> int:
    return duckdb.sql(f"select count(*) from read_parquet('{lake}/{table}/**/*.parquet', "
                      "union_by_name=true)").fetchall()[0][0]


def catalog(lake: Path) -> dict[str, dict]:
    rows = duckdb.sql(f"select * from '{lake}/_catalog/*.parquet'").df().to_dict("records")
    return {os.path.basename(r["path"]): dict(r, metadata=json.loads(r["metadata"]))
            for r in rows}


def tables_in(lake: Path) -> set[str]:
    return {p.name for p in lake.iterdir() if p.is_dir() and p.name[0] not in "._"}


# --- the rule, on its own -----------------------------------------------------------------------
@pytest.mark.parametrize("stem,name", [
    ("orders_2024-01", "orders"), ("part-00001-c1a2", "part"), ("sales_v2", "sales"),
    ("orders2024", "orders"), ("2024-01-01", ""), ("customers", "customers"),
])
def test_series_name(stem: str, name: str) -> None:
    assert series_name(stem) == name


def test_common_stem_cuts_at_a_word() -> None:
    assert common_stem(["d/orders_2024-01.csv", "d/orders_2024-02.csv.gz"]) == "orders"
    assert common_stem(["d/sales_east.csv", "d/sales_eastern.csv"]) == "sales"
    assert common_stem(["d/a.csv", "d/b.csv"]) == ""


def test_grouping_does_not_depend_on_order() -> None:
    members = [Member("/d/a.csv", "/d", ("x", "y")), Member("/d/b.csv", "/d", ("x", "y", "z")),
               Member("/d/c.csv", "/d", ("p", "q")), Member("/d/c_2.csv", "/d", ("p",))]
    one = group_tables(members).placements
    two = group_tables(reversed(members)).placements
    assert one == two
    assert {p: pl.table for p, pl in one.items()} == {
        "/d/a.csv": "a", "/d/b.csv": "a", "/d/c.csv": "c", "/d/c_2.csv": "c"}


# --- through the CLI and the API ----------------------------------------------------------------
def test_mixed_directory_makes_two_tables_cli(exports: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", str(exports), "--out",
                          str(lake), "--no-progress"], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    # The run says which files went where.
    assert "customers (customers.csv)" in res.stderr and "orders (orders.csv)" in res.stderr
    assert tables_in(lake) == {"customers", "orders"}
    assert described(lake, "customers") == [("id", "BIGINT"), ("name", "VARCHAR"),
                                            ("email", "VARCHAR")]
    assert described(lake, "orders") == [("id", "BIGINT"), ("customer_id", "BIGINT"),
                                         ("amount", "DOUBLE")]
    assert (count(lake, "customers"), count(lake, "orders")) == (2, 3)
    cat = catalog(lake)
    assert list(cat["orders.csv"]["tables"]) == ["orders"]
    assert "orders" in cat["orders.csv"]["metadata"]["table_rule"]
    assert "own columns" in cat["customers.csv"]["metadata"]["table_rule"]


def test_mixed_directory_api(exports: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    report = pipeline.ingest(str(exports), out=str(lake), progress=False)
    assert report.exit_code == 0 and report.rows == 5
    assert tables_in(lake) == {"customers", "orders"}
    total = duckdb.sql(f"select sum(amount) from '{lake}/orders/**/*.parquet'").fetchall()
    assert total == [(7.75,)]


def test_directory_glob_and_expanded_list_agree(exports: Path, monkeypatch:
                                                pytest.MonkeyPatch) -> None:
    write(exports / "orders_2.csv", "id,customer_id,amount,currency\n13,2,9.5,EUR\n")
    write(exports / "_SUCCESS", "")
    monkeypatch.chdir(exports.parent)
    by_dir = tables_of(pipeline.plan("exports"))
    by_glob = tables_of(pipeline.plan("exports/*"))
    expanded = sorted(str(p.relative_to(exports.parent)) for p in exports.iterdir())
    by_list = tables_of(pipeline.plan(expanded))  # the shell's expansion of exports/*
    assert by_dir == by_glob == by_list == {
        "customers.csv": "customers", "orders.csv": "orders", "orders_2.csv": "orders"}


def test_nested_columns_make_one_table(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs / "2024-01-01.csv", "ts,level\n2024-01-01T00:00:00,info\n")
    write(logs / "2024-01-02.csv", "ts,level,host\n2024-01-02T00:00:00,warn,a\n")
    write(logs / "2024-01-03.csv", "ts,level,host\n2024-01-03T00:00:00,error,b\n")
    lake = tmp_path / "lake"
    assert cli.run(["ingest", str(logs), "--out", str(lake), "--no-progress", "-q"]) == 0
    assert tables_in(lake) == {"logs"}
    assert described(lake, "logs") == [("ts", "TIMESTAMP"), ("level", "VARCHAR"),
                                       ("host", "VARCHAR")]
    assert duckdb.sql(f"select count(*), count(host) from read_parquet('{lake}/logs/*.parquet', "
                      "union_by_name=true)").fetchall() == [(3, 2)]
    rule = catalog(lake)["2024-01-01.csv"]["metadata"]["table_rule"]
    assert rule == "directory logs"


def test_series_next_to_unrelated_files(tmp_path: Path) -> None:
    d = tmp_path / "dump"
    write(d / "orders_2024-01.csv", "id,amount\n1,2.5\n")
    write(d / "orders_2024-02.csv", "id,amount\n2,3.5\n")
    write(d / "customers.csv", "id,name\n1,Ann\n")
    write(d / "events.jsonl", '{"kind": "click", "at": 3}\n')
    lake = tmp_path / "lake"
    assert pipeline.ingest(str(d), out=str(lake), progress=False).exit_code == 0
    assert tables_in(lake) == {"orders", "customers", "events"}
    assert count(lake, "orders") == 2


def test_table_forces_one_table(exports: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    assert cli.run(["ingest", str(exports), "--out", str(lake), "--table", "all",
                    "--no-progress", "-q"]) == 0
    assert tables_in(lake) == {"all"}
    assert [c for c, _ in described(lake, "all")] == ["id", "name", "email", "customer_id",
                                                      "amount"]
    assert catalog(lake)["orders.csv"]["metadata"]["table_rule"] == "--table"


def test_hidden_names_are_never_inputs(exports: Path) -> None:
    write(exports / "_tmp.csv", "x\n1\n")
    write(exports / ".hidden" / "a.csv", "x\n1\n")
    write(exports / "_staging" / "b.csv", "x\n1\n")
    for spelling in ([str(exports)], [str(exports / "*")], [str(exports / "**" / "*.csv")]):
        assert set(tables_of(pipeline.plan(spelling))) == {"customers.csv", "orders.csv"}
    with pytest.raises(SourceNotFound):
        pipeline.plan(str(exports / "_tmp.csv"))


def test_out_inside_its_input_twice(exports: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(exports)
    args = ["ingest", ".", "--out", "lake", "--no-progress", "--json"]
    assert cli.run(args) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 5
    assert cli.run(args) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 0  # lake/ was not read
    lake = exports / "lake"
    assert tables_in(lake) == {"customers", "orders"}
    assert set(catalog(lake)) == {"customers.csv", "orders.csv"}
    # An earlier OUT under another name (it holds _chunkmill/) is not read either.
    other = exports / "lake2"
    assert cli.run(["ingest", ".", "--out", str(other), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 5
    assert set(catalog(other)) == {"customers.csv", "orders.csv"}


def test_plan_shows_the_grouping(exports: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(exports.parent)
    assert cli.run(["plan", "exports", "-q"]) == 0
    text = capsys.readouterr().out
    assert "-> out" not in text
    assert "table customers (1 file(s), 46 B): id: int64, name: string, email: string" in text
    assert "1 file(s) (own columns: stem orders)" in text
    # Without --out there is no OUT: a directory called out is an input like any other.
    write(Path("out") / "more.csv", "id,customer_id,amount\n99,1,1.0\n")
    assert cli.run(["plan", "exports", "out", "-q"]) == 0
    assert "1 file(s) (directory out)" in capsys.readouterr().out
    assert cli.run(["plan", "exports", "--json", "-q"]) == 0
    got = json.loads(capsys.readouterr().out)["table_files"]
    assert {t: [os.path.basename(p) for p in v["files"]] for t, v in got.items()} == {
        "customers": ["customers.csv"], "orders": ["orders.csv"]}
    # Planned into an OUT: it is not an input, and files it holds keep their tables.
    assert cli.run(["ingest", "exports", "--out", "exports/lake", "--no-progress", "-q"]) == 0
    assert cli.run(["plan", "exports", "--out", "exports/lake", "-q"]) == 0
    text = capsys.readouterr().out
    assert "lake" not in text.replace(str(exports / "lake"), "")
    assert "(kept in orders: ingested there before)" in text


def test_files_stay_in_their_tables(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "sales"
    write(d / "orders_1.csv", "id,amount\n1,2.5\n")
    lake = tmp_path / "lake"
    assert pipeline.ingest(str(d), out=str(lake), progress=False).exit_code == 0
    assert tables_in(lake) == {"sales"}  # one file: named after its directory
    # Later: the file grows and an unrelated file joins it. A fresh grouping would name the
    # orders group `orders`; the file OUT holds stays in `sales`, and so does its series.
    write(d / "orders_1.csv", "id,amount\n1,2.5\n2,3.0\n")
    write(d / "orders_2.csv", "id,amount\n3,1.0\n")
    write(d / "customers.csv", "id,name\n1,Ann\n")
    with caplog.at_level(logging.INFO, "chunkmill.plan"):
        report = pipeline.ingest(str(d), out=str(lake), progress=False)
    assert report.exit_code == 0
    assert tables_in(lake) == {"sales", "customers"}
    assert count(lake, "sales") == 3 and count(lake, "customers") == 1
    cat = catalog(lake)
    assert list(cat["orders_1.csv"]["tables"]) == ["sales"]
    assert cat["orders_1.csv"]["metadata"]["table_rule"].startswith("kept in sales")
    assert list(cat["orders_2.csv"]["tables"]) == ["sales"]


def test_a_file_named_later_keeps_its_own_name(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "logs" / "a.csv", "x,y\n1,2\n")
    write(tmp_path / "big.csv", "x,y\n3,4\n")
    assert pipeline.ingest("logs", out="lake", progress=False).exit_code == 0
    assert pipeline.ingest("big.csv", out="lake", progress=False).exit_code == 0
    assert tables_in(tmp_path / "lake") == {"logs", "big"}


def test_files_named_one_per_run_keep_their_own_names(tmp_path: Path) -> None:
    # Same directory, nested columns, one file per run: still one table per named file.
    write(tmp_path / "t.csv", "a,b,c\n1,2,3\n")
    write(tmp_path / "j.csv", "a,b\n4,5\n")
    for name in ("t.csv", "j.csv"):
        assert pipeline.ingest(str(tmp_path / name), out=str(tmp_path / "lake"),
                               progress=False).exit_code == 0
    assert tables_in(tmp_path / "lake") == {"t", "j"}
    assert count(tmp_path / "lake", "t") == 1 and count(tmp_path / "lake", "j") == 1


def test_table_names_that_clash_get_a_suffix(tmp_path: Path) -> None:
    write(tmp_path / "a" / "data.csv", "x,y\n1,2\n")
    write(tmp_path / "b" / "data.csv", "p,q\n1,2\n")
    plan = pipeline.plan([str(tmp_path / "a" / "data.csv"), str(tmp_path / "b" / "data.csv")])
    assert [f.tables for f in plan.files] == [["data"], ["data_2"]]


def test_hive_parquet_glob_keeps_partition_columns(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    for day in ("2024-01-01", "2024-01-02"):
        (dump / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.table({"id": [1, 2]}), dump / f"day={day}" / "part-0.parquet")
    spellings = [[str(dump)], [str(dump / "*" / "*.parquet")],
                 sorted(str(p) for p in dump.glob("*/*.parquet"))]
    for spelling in spellings:
        plan = pipeline.plan(spelling)
        assert set(tables_of(plan).values()) == {"dump"}
        assert plan.schemas["dump"].names == ["id", "day"]
    lake = tmp_path / "lake"
    assert pipeline.ingest(spellings[1], out=str(lake), progress=False).exit_code == 0
    assert duckdb.sql(f"select day, count(*) from read_parquet('{lake}/dump/*.parquet') "
                      "group by day order by day").fetchall() == [("2024-01-01", 2),
                                                                  ("2024-01-02", 2)]


def test_lazy_read_picks_one_table(exports: Path) -> None:
    with pytest.raises(pipeline.errors.UsageError, match="several tables"):
        pipeline.read(str(exports))
    df = pipeline.read(str(exports), table="orders")
    assert list(df.columns) == ["id", "customer_id", "amount", "_file_id"]
    assert df["amount"].sum().compute() == 7.75

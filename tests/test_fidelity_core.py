"""Issue 16, the pipeline's side: declared types, derived columns and transforms, the partition
guard, and no silent loss; through the CLI and the Python API on real files, against DuckDB."""

from __future__ import annotations

import json
import os
import threading
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import pipeline
from pipeline.cli import run as cli
from tests.conftest import read_catalog

CSV = ("zip,ts,amount,day,flag,n,raw\n"
       "01420,2024-01-02T10:00:00Z,3.14,2024-01-02,true,7,abc\n"
       "00007,2024-03-31T23:30:00+02:00,-12.50,2024-02-29 10:00:00,false,,x y\n"
       "99501,,0.01,,,2147483647,\n")
TYPES = {"zip": "varchar", "ts": "timestamptz", "amount": "decimal(10,2)", "day": "date",
         "flag": "boolean", "n": "integer", "raw": "blob"}


def _partitions(table: Path) -> list[str]:
    """The partition directories of a table (not ``_common_metadata`` and other metadata)."""
    return sorted(n for n in os.listdir(table) if not n.startswith(("_", ".")))


def _duck(sql: str) -> tuple[list[tuple], list[str]]:
    con = duckdb.connect()
    con.execute("set TimeZone='UTC'")
    rows = con.sql(sql).fetchall()
    types = [r[1] for r in con.sql(f"describe {sql}").fetchall()]
    return rows, types


def _out(out, table: str, columns: str = "* exclude (_file_id)", order: str = "zip"):
    return _duck(f"select {columns} from read_parquet('{out}/{table}/**/*.parquet', "
                 f"hive_partitioning=true, union_by_name=true) order by {order}")


def _types_arg(types: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in types.items()) + "}"


# --- 1. declared types -----------------------------------------------------------------------
def test_cli_schema_matches_duckdb_read_csv(tmp_path, capsys) -> None:
    src = tmp_path / "t.csv"
    src.write_text(CSV)
    out = tmp_path / "o"
    code = cli(["ingest", str(src), "--out", str(out), "--no-progress",
                "--schema", "zip=varchar,ts=timestamptz,amount=decimal(10,2)",
                "--schema", "day=date,flag=boolean", "--schema", "n=integer,raw=blob"])
    assert code == 0, capsys.readouterr().err
    want = _duck(f"select * from read_csv('{src}', types={_types_arg(TYPES)}) order by zip")
    assert _out(out, "t") == want
    assert want[0][0][0] == "00007" and want[1][2] == "DECIMAL(10,2)"
    assert want[1][1] == "TIMESTAMP WITH TIME ZONE" and want[1][6] == "BLOB"


def test_python_schema_on_tsv_and_jsonl_matches_duckdb(tmp_path) -> None:
    tsv = tmp_path / "t.tsv"
    tsv.write_text(CSV.replace(",", "\t"))
    schema = pa.schema([("zip", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
                        ("amount", pa.decimal128(10, 2)), ("day", pa.date32()),
                        ("flag", pa.bool_()), ("n", pa.int32()), ("raw", pa.binary())])
    report = pipeline.ingest(str(tsv), out=str(tmp_path / "o"), schema=schema, progress=False)
    assert report.exit_code == 0 and report.rows == 3
    want = _duck(f"select * from read_csv('{tsv}', delim='\\t', types={_types_arg(TYPES)}) "
                 "order by zip")
    assert _out(tmp_path / "o", "t") == want

    jsonl = tmp_path / "j.jsonl"
    jsonl.write_text(
        '{"zip":"01420","ts":"2024-01-02T10:00:00Z","amount":3.14,"day":"2024-01-02","n":7}\n'
        '{"zip":"00007","ts":"2024-03-31T23:30:00+02:00","amount":-12.5,'
        '"day":"2024-02-29 10:00:00","n":null}\n'
        '{"zip":"99501","ts":null,"amount":"0.01","day":null,"n":2147483647}\n')
    types = {"zip": "varchar", "ts": "timestamptz", "amount": "decimal(10,2)", "day": "date",
             "n": "integer"}
    # Names and pyarrow types mixed; the JSON reader infers zip as text already.
    report = pipeline.ingest(str(jsonl), out=str(tmp_path / "o"), progress=False,
                             schema={"ts": "timestamptz", "amount": pa.decimal128(10, 2),
                                     "day": "date", "n": "int"})
    assert report.exit_code == 0 and report.rows == 3
    want = _duck(f"select * from read_json('{jsonl}', columns={_types_arg(types)}) "
                 "order by zip")
    assert _out(tmp_path / "o", "j") == want


def test_a_value_that_does_not_fit_its_declared_type_is_rejected(tmp_path) -> None:
    src = tmp_path / "t.csv"
    head = "id,amount\n1,2.50\n"
    src.write_text(head + "2,1.234\n3,abc\n4,7\n")
    report = pipeline.ingest(str(src), out=str(tmp_path / "o"), progress=False,
                             schema="amount=decimal(10,2),id=int32")
    assert report.exit_code == 0 and report.rows == 2 and report.errors == 2
    errors = duckdb.sql(f"select error_type, byte_offset, raw from "
                        f"'{tmp_path}/o/_errors/*.parquet' order by byte_offset").fetchall()
    assert errors == [("TypeMismatch", len(head), b"2,1.234\n"),
                      ("TypeMismatch", len(head) + 8, b"3,abc\n")]
    rows, types = _out(tmp_path / "o", "t", order="id")
    assert rows == [(1, Decimal("2.50")), (4, Decimal("7.00"))]
    assert types == ["INTEGER", "DECIMAL(10,2)"]


def test_declared_column_missing_from_a_file(tmp_path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id,zip\n1,01420\n")
    (tmp_path / "in" / "b.csv").write_text("id\n2\n")
    args = ["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--no-progress",
            "--schema", "zip=varchar"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "b.csv has no column 'zip'" in err and "--allow-missing-columns" in err
    assert "Traceback" not in err
    assert cli([*args, "--allow-missing-columns"]) == 0
    assert _out(tmp_path / "o", "in", order="id")[0] == [(1, "01420"), (2, None)]

    # A column no table has: a usage error (a typo), or a NULL column when allowed.
    assert cli(args[:-1] + ["zpi=varchar"]) == 2
    assert "no table has a column 'zpi'" in capsys.readouterr().err
    report = pipeline.ingest(str(tmp_path / "in"), out=str(tmp_path / "o2"), progress=False,
                             schema={"note": "varchar"}, allow_missing_columns=True)
    assert report.exit_code == 0
    rows, types = _out(tmp_path / "o2", "in", order="id")
    assert rows == [(1, "01420", None), (2, None, None)] and types[-1] == "VARCHAR"  # item 2


def test_unknown_type_is_a_usage_error(tmp_path, capsys) -> None:
    src = tmp_path / "t.csv"
    src.write_text("a\n1\n")
    assert cli(["ingest", str(src), "--out", str(tmp_path / "o"), "--schema", "a=number"]) == 2
    err = capsys.readouterr().err
    assert "unknown type 'number'" in err and "decimal(P,S)" in err and "timestamptz" in err
    with pytest.raises(pipeline.UsageError, match="unknown type"):
        pipeline.plan(str(src), schema={"a": "nope"})


def test_declared_type_wins_over_the_remembered_schema(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id,zip\n1,1420\n2,99501\n")
    out = str(tmp_path / "o")
    pipeline.ingest(str(tmp_path / "in"), out=out, progress=False)
    assert _out(out, "in", order="id")[1] == ["BIGINT", "BIGINT"]
    again = pipeline.ingest(str(tmp_path / "in"), out=out, progress=False,
                            schema={"zip": "varchar"})
    # The declaration changes what is written: the file is read again, not taken as
    # unchanged, and its old fragment is replaced.
    assert again.files == {"ok": 1} and again.rows == 2
    assert any("zip int64->string" in n for n in again.notes)
    assert _out(out, "in", order="id") == ([(1, "1420"), (2, "99501")], ["BIGINT", "VARCHAR"])
    schemas = pipeline.plan(str(tmp_path / "in"), schema={"zip": "varchar"}).schemas
    assert schemas["in"].field("zip").type == pa.string()


# --- 6. derived columns and transforms --------------------------------------------------------
def _events(path, days: int = 3, per_day: int = 400) -> None:
    lines = ["ts,user,amount"]
    for d in range(days):
        for i in range(per_day):
            lines.append(f"2024-01-{d + 1:02d}T{i % 24:02d}:{i % 60:02d}:00Z,u{i % 37},{i}")
    path.write_text("\n".join(lines) + "\n")


def test_cli_derive_day_partitions(tmp_path, capsys) -> None:
    src = tmp_path / "events.csv"
    _events(src)
    out = tmp_path / "o"
    code = cli(["ingest", str(src), "--out", str(out), "--no-progress", "--chunk-size", "8KB",
                "--derive", "day=date(ts)", "--derive", "b=bucket(user, 8)",
                "--partition-by", "day"])
    assert code == 0, capsys.readouterr().err
    assert _partitions(out / "events") == ["day=2024-01-01", "day=2024-01-02",
                                                  "day=2024-01-03"]
    got = _duck(f"select day, count(*), sum(amount) from read_parquet('{out}/events/**/*.parquet',"
                " hive_partitioning=true) group by day order by day")
    want = _duck(f"select date(ts), count(*), sum(amount) from read_csv('{src}') group by 1 "
                 "order by 1")
    assert got[0] == want[0] and got[1][0] == "DATE"
    buckets = duckdb.sql(f"select user, b from read_parquet('{out}/events/**/*.parquet') "
                         "group by all").fetchall()
    from tests.test_types_derive import _murmur3

    assert all(b == (_murmur3(u.encode()) & 0x7FFFFFFF) % 8 for u, b in buckets)
    assert len(buckets) == 37


def test_derive_usage_errors(tmp_path, capsys) -> None:
    src = tmp_path / "events.csv"
    src.write_text("ts,user,day,when\n2024-01-01 10:00:00,a,x,n/a\n"
                   "2024-01-01 11:00:00,b,y,2024-01-02T10:00:00\n")
    base = ["plan", str(src)]
    assert cli([*base, "--derive", "day=date(ts)"]) == 2
    assert "already has a column 'day'" in capsys.readouterr().err
    assert cli([*base, "--derive", "h=hour(user)"]) == 2
    assert "hour() takes a timestamp or date column; user is string" in \
        capsys.readouterr().err
    assert cli([*base, "--derive", "h=hour(nope)"]) == 2
    assert "no table has a column 'nope'" in capsys.readouterr().err
    assert cli([*base, "--derive", "h=week(ts)"]) == 2
    assert "unknown function 'week'" in capsys.readouterr().err
    # A column inferred as text that holds timestamps: declare its type, then derive.
    assert cli([*base, "--derive", "d=date(when)"]) == 2
    assert "--schema when=timestamp" in capsys.readouterr().err
    out = tmp_path / "o"
    assert cli(["ingest", str(src), "--out", str(out), "--no-progress", "--schema",
                "when=timestamp", "--derive", "d=date(when)", "--partition-by", "d"]) == 0
    assert _partitions(out / "events") == ["d=2024-01-02"]  # n/a is in _errors


def enrich(table: pa.Table) -> pa.Table:
    """A per-batch user transform: normalise, enrich, compute a vector; drops refunds."""
    table = table.filter(pc.greater_equal(table["amount"], 0))
    vec = pa.FixedSizeListArray.from_arrays(
        pc.cast(pc.list_flatten(pa.array([[a, a * 2.0] for a in
                                          table["amount"].to_pylist()],
                                         pa.list_(pa.float64()))), pa.float32()), 2)
    return (table.drop_columns(["note"])
            .append_column("user_lc", pc.utf8_lower(table["user"]))
            .append_column("vec", vec))


def test_transform_through_chunks_bundles_and_read(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    rows = []
    for f in range(40):  # small files: read many to a task (bundles)
        lines = ["user,amount,note"] + [f"U{f}x{i},{i - 2},n" for i in range(20)]
        rows += lines[1:]
        (tmp_path / "in" / f"s{f}.csv").write_text("\n".join(lines) + "\n")
    big = ["user,amount,note"] + [f"Big{i},{i % 50 - 3},n" for i in range(3000)]
    rows += big[1:]
    (tmp_path / "in" / "big.csv").write_text("\n".join(big) + "\n")
    plan = pipeline.plan(str(tmp_path / "in"), transform=enrich, chunk_size="8KB")
    assert str(plan.schemas["in"]) == str(pa.schema([
        ("user", pa.string()), ("amount", pa.int64()), ("user_lc", pa.string()),
        ("vec", pa.list_(pa.float32(), 2))]))
    out = tmp_path / "o"
    report = pipeline.ingest(str(tmp_path / "in"), out=str(out), transform=enrich,
                             chunk_size="8KB", progress=False)
    kept = [r for r in rows if int(r.split(",")[1]) >= 0]
    assert report.exit_code == 0 and report.rows == len(kept)
    got = duckdb.sql(f"select user, amount, user_lc, vec from read_parquet('{out}/in/*.parquet')"
                     " order by user").fetchall()
    want = sorted((u, int(a), u.lower(), [float(a), float(a) * 2])
                  for u, a, _ in (r.split(",") for r in kept))
    assert got == want
    # Each row keeps the file it came from, also in bundles where the transform drops rows.
    per_file = dict(duckdb.sql(
        f"select c.path, count(*) from read_parquet('{out}/in/*.parquet') r join "
        f"'{out}/_catalog/*.parquet' c on r._file_id = c.file_id group by 1").fetchall())
    assert per_file[str(tmp_path / "in" / "s0.csv")] == 18
    assert per_file[str(tmp_path / "in" / "big.csv")] == sum(
        1 for r in big[1:] if int(r.split(",")[1]) >= 0)
    assert any(r.chunk_id.startswith("bundle-") for r in report.chunk_records)

    df = pipeline.read(str(tmp_path / "in" / "big.csv"), transform=enrich, chunk_size="8KB")
    assert df.npartitions > 3 and list(df.columns) == ["user", "amount", "user_lc", "vec",
                                                       "_file_id"]
    assert len(df.compute()) == per_file[str(tmp_path / "in" / "big.csv")]


def test_transform_schema_from_a_sample_and_per_batch_mismatch(tmp_path) -> None:
    src = tmp_path / "t.csv"
    src.write_text("name\n" + "".join(f"n{i}\n" for i in range(2000)) + "bad\n")

    def first_name(t: pa.Table) -> pa.Table:  # fails on an empty table: planned from a sample
        return t.append_column("first", pa.array([t["name"][0].as_py()] * t.num_rows))

    assert pipeline.plan(str(src), transform=first_name).schemas["t"].field("first").type == \
        pa.string()

    def unstable(t: pa.Table) -> pa.Table:
        if "bad" in t["name"].to_pylist():
            return t.append_column("x", pa.array(["text"] * t.num_rows))
        return t.append_column("x", pa.array([1] * t.num_rows, pa.int64()))

    out = tmp_path / "o"
    report = pipeline.ingest(str(src), out=str(out), transform=unstable, chunk_size="4KB",
                             progress=False)
    errors = duckdb.sql(f"select kind, error_type, message from '{out}/_errors/*.parquet'"
                        ).fetchall()
    assert len(errors) == 1 and errors[0][:2] == ("chunk", "TransformError")
    assert "transform " in errors[0][2] and "unstable returned columns" in errors[0][2]
    assert report.exit_code == 0 and 0 < report.rows < 2001  # the other chunks are kept

    lock = threading.Lock()
    with pytest.raises(pipeline.UsageError, match="cannot be pickled"):
        pipeline.plan(str(src), transform=lambda t: (lock, t)[1])
    with pytest.raises(pipeline.UsageError, match="returned list, not a pyarrow.Table"):
        pipeline.plan(str(src), transform=lambda t: [t])


@pytest.mark.parametrize("small_file_size", ["0", "4MiB"])  # alone, and bundled
def test_every_batch_has_its_tables_columns(tmp_path, small_file_size) -> None:
    """A file without a column of its table still gives derive and transform that column."""
    (tmp_path / "in").mkdir()
    for name, text in {"a.csv": "ts,x\n2024-01-01T05:00:00Z,1\n", "b.csv": "x\n2\n",
                       "c.csv": "x,ts\n3,2024-01-03T05:00:00Z\n"}.items():
        (tmp_path / "in" / name).write_text(text)

    def names(t: pa.Table) -> pa.Table:
        return t.append_column("cols", pa.array([",".join(t.column_names)] * t.num_rows))

    report = pipeline.ingest(str(tmp_path / "in"), out=str(tmp_path / "o"), progress=False,
                             derive="d=day(ts)", transform=names,
                             small_file_size=small_file_size)
    assert report.exit_code == 0
    got = duckdb.sql(f"select x, d, cols from '{tmp_path}/o/in/*.parquet' order by x").fetchall()
    assert got == [(1, 1, "ts,x,d"), (2, None, "ts,x,d"), (3, 3, "ts,x,d")]


def test_transform_and_derive_on_worker_processes(tmp_path, shared_scheduler) -> None:
    """Tasks travel pickled (a lambda through cloudpickle); the transform's code is part of
    the options a file was ingested under."""
    src = tmp_path / "t.csv"
    src.write_text("a,ts\n1,2024-05-01T10:00:00Z\n2,2024-05-02T10:00:00Z\n")
    out = str(tmp_path / "o")
    common = {"scheduler": shared_scheduler, "progress": False, "derive": ["m=month(ts)"]}
    first = pipeline.ingest(str(src), out=out, transform=lambda t: t.append_column(
        "b", pc.multiply(t["a"], 10)), **common)
    assert first.exit_code == 0
    read = f"select a, b, m from read_parquet('{out}/t/*.parquet') order by a"
    assert duckdb.sql(read).fetchall() == [(1, 10, 5), (2, 20, 5)]
    same = pipeline.ingest(str(src), out=out, transform=lambda t: t.append_column(
        "b", pc.multiply(t["a"], 10)), **common)
    assert same.files == {"unchanged": 1}
    edited = pipeline.ingest(str(src), out=out, transform=lambda t: t.append_column(
        "b", pc.multiply(t["a"], 3)), **common)
    assert edited.files == {"ok": 1}
    assert duckdb.sql(read).fetchall() == [(1, 3, 5), (2, 6, 5)]


# --- 7. partition guard ------------------------------------------------------------------------
def test_partition_guard_stops_before_writing(tmp_path, capsys) -> None:
    src = tmp_path / "ids.csv"
    src.write_text("id,ts\n" + "".join(f"{i},2024-01-01 00:00:{i % 60:02d}\n"
                                       for i in range(20000)))
    out = tmp_path / "o"
    code = cli(["ingest", str(src), "--out", str(out), "--no-progress",
                "--partition-by", "id", "--max-partitions", "1000"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--derive id_bucket=bucket(id, 64) --partition-by id_bucket" in err
    assert "more than 1,000 partitions" in err and "Traceback" not in err
    assert not (out / "ids").exists()
    # What it suggests works.
    assert cli(["ingest", str(src), "--out", str(out), "--no-progress", "--partition-by",
                "id_bucket", "--derive", "id_bucket=bucket(id, 64)",
                "--max-partitions", "1000"]) == 0
    assert len(_partitions(out / "ids")) == 64


@pytest.mark.parametrize(("limit", "says"), [(200, "partitions written so far"),
                                             (100, "one chunk alone")])
def test_partition_guard_at_run_time(tmp_path, capsys, monkeypatch, limit, says) -> None:
    """The plan-time sample sees 5 values; later chunks of ~150 values each bring more
    (counted on the client), or one chunk alone brings more than the limit (the worker
    stops writing)."""
    monkeypatch.setattr("pipeline.planning.tables.SAMPLE_BYTES", 16 << 10)
    src = tmp_path / "late.csv"
    pad = "p" * 200
    head = "".join(f"{i % 5},{pad}\n" for i in range(100))  # > the sample: five values
    tail = "".join(f"{10 + i},{pad}\n" for i in range(600))
    src.write_text("id,pad\n" + head + tail)
    out = tmp_path / "o"
    code = cli(["ingest", str(src), "--out", str(out), "--no-progress", "--chunk-size", "32KB",
                "--partition-by", "id", "--max-partitions", str(limit)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and "--derive" in err
    assert not (out / "late").exists()


# --- 8. no silent loss --------------------------------------------------------------------------
def test_a_file_whose_every_record_is_rejected_fails(tmp_path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.csv").write_text("a,b\n1,2,3\n4,5,6\n")
    (tmp_path / "in" / "some.csv").write_text("a,b\n1,2,3\n4,5\n")
    out = tmp_path / "o"
    code = cli(["ingest", str(tmp_path / "in"), "--out", str(out), "--no-progress",
                "--small-file-size", "0"])
    err = capsys.readouterr()
    assert code == 1
    assert "bad.csv: all 2 record(s) rejected" in err.err + err.out
    cat = read_catalog(out)
    assert (cat["bad.csv"]["status"], cat["bad.csv"]["rows"]) == ("failed", 0)
    assert (cat["some.csv"]["status"], cat["some.csv"]["rows"]) == ("partial", 1)
    # The same through a declared type that no value fits, in a bundle.
    src = tmp_path / "amounts.csv"
    src.write_text("amount\nabc\ndef\n")
    report = pipeline.ingest(str(src), out=str(tmp_path / "o2"), schema="amount=bigint",
                             progress=False)
    assert report.exit_code == 1 and report.files == {"failed": 1}


def test_read_raises_on_the_first_rejected_record(tmp_path) -> None:
    src = tmp_path / "t.csv"
    head = "a,b\n1,2\n"
    src.write_text(head + "3,4,5\n6,7\n")
    df = pipeline.read(str(src))
    with pytest.raises(pipeline.RejectedRecord,
                       match=rf"t\.csv: record rejected at byte {len(head)} "
                             r"\(FieldCountMismatch\).*on_bad='skip'"):
        df.compute()
    assert pipeline.read(str(src), on_bad="skip").compute()["a"].tolist() == [1, 6]
    with pytest.raises(pipeline.UsageError, match="on_bad"):
        pipeline.read(str(src), on_bad="ignore")
    # Declared types and derived columns apply to read() as to ingest().
    df = pipeline.read(str(src), on_bad="skip", schema={"a": "varchar"},
                       derive=["h=bucket(a, 4)"])
    assert df.compute()["h"].tolist() == bucket_ref(["1", "6"], 4)


def bucket_ref(values: list[str], n: int) -> list[int]:
    from tests.test_types_derive import _murmur3

    return [(_murmur3(v.encode()) & 0x7FFFFFFF) % n for v in values]


def test_plan_json_shows_declared_and_derived_columns(tmp_path, capsys) -> None:
    src = tmp_path / "t.csv"
    src.write_text("ts,zip\n2024-01-01T00:00:00Z,01420\n")
    assert cli(["plan", str(src), "--json", "--schema", "zip=text",
                "--derive", "m=month(ts)"]) == 0
    tables = json.loads(capsys.readouterr().out)["tables"]
    assert "zip: string" in tables["t"] and "m: int64" in tables["t"]

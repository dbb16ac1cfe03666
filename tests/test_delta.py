"""``--table-format delta``: Delta Lake tables read back by deltalake, Polars and DuckDB with the
rows of hive output; incremental runs, --prune, bundles and schema changes as Delta
transactions; a reader of the table never sees a file half replaced, even across SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import thorough

import pipeline
from pipeline import cli

deltalake = pytest.importorskip("deltalake")
pl = pytest.importorskip("polars")

EVENTS = ["click", "view", "a/b=c", "50% off", "..", None]


def make_csv(path, rows: int, seed: int, start: int = 0) -> None:
    rnd = random.Random(seed)
    lines = ["id,event,value,note"]
    for i in range(start, start + rows):
        event = rnd.choice(EVENTS)
        note = rnd.choice(["plain", 'has "quotes"', "two\nlines", ""])
        lines.append(f"{i},{'' if event is None else event},{rnd.random() * 100:.3f},"
                     f"\"{note.replace(chr(34), chr(34) * 2)}\"")
    path.write_text("\n".join(lines) + "\n")


def make_inputs(src, big_rows: int = 4000, small: int = 6) -> None:
    src.mkdir(parents=True, exist_ok=True)
    make_csv(src / "big.csv", big_rows, seed=1)
    for n in range(small):  # small files: bundled, several to a fragment
        make_csv(src / f"s{n}.csv", 40, seed=10 + n, start=100_000 * (n + 1))


def delta_table(out, table: str, version: int | None = None) -> pa.Table:
    dt = deltalake.DeltaTable(str(out / table), version=version)
    return pa.table(dt.to_pyarrow_table())


def rows_of(table: pa.Table, columns=("id", "event", "value", "note", "_file_id")) -> list:
    return sorted(tuple(r[c] for c in columns) for r in table.select(list(columns)).to_pylist())


def hive_rows(out, table: str) -> list:
    return sorted(duckdb.sql(
        f"select id, event, value, note, _file_id from read_parquet('{out}/{table}/**/*.parquet',"
        " hive_partitioning=true)").fetchall())


def per_file(table: pa.Table) -> dict[str, tuple[int, int]]:
    """Rows and an order-free hash of them, per source file."""
    rows = table  # noqa: F841 - DuckDB reads the local variable
    got = duckdb.sql("select _file_id, count(*), sum(hash(id, value, note))::hugeint "
                     "from rows group by 1").fetchall()
    return {fid: (n, int(h)) for fid, n, h in got}


def ingest(src, out, **options):
    options.setdefault("chunk_size", "16KB")
    options.setdefault("progress", False)
    return pipeline.ingest([str(src)], out=str(out), **options)


def test_delta_tables_read_back_with_the_rows_of_hive_output(tmp_path) -> None:
    src = tmp_path / "logs"
    make_inputs(src)
    hive, delta = tmp_path / "hive", tmp_path / "delta"
    assert ingest(src, hive, partition_by=["event"]).ok
    report = ingest(src, delta, partition_by=["event"], table_format="delta")
    assert report.ok and report.files == {"ok": 7}
    expected = hive_rows(hive, "logs")
    assert len(expected) == 4000 + 6 * 40
    # deltalake itself
    dt = deltalake.DeltaTable(str(delta / "logs"))
    assert dt.metadata().partition_columns == ["event"]
    assert rows_of(delta_table(delta, "logs")) == expected
    # Polars
    got = pl.scan_delta(str(delta / "logs")).select(
        "id", "event", "value", "note", "_file_id").collect().rows()
    assert sorted(got) == expected
    # DuckDB: its delta extension is not installable offline here, so DuckDB reads the
    # Parquet files the Delta log lists (file_uris), with the hive partition directories.
    files = dt.file_uris()
    got = duckdb.sql(f"select id, event, value, note, _file_id from read_parquet({files}, "
                     "hive_partitioning=true)").fetchall()
    assert sorted(got) == expected
    # the catalog and _errors stay plain Parquet tables
    catalog = pq.read_table(delta / "_catalog" / "catalog.parquet").to_pylist()
    assert sorted(r["rows"] for r in catalog) == sorted([4000] + [40] * 6)
    # every add carries statistics readers skip files with
    actions = pa.table(dt.get_add_actions(flatten=True))
    assert all(n > 0 for n in actions.column("num_records").to_pylist())
    assert "min.id" in actions.column_names


def test_delta_incremental_runs_are_one_transaction_per_commit(tmp_path) -> None:
    src, out = tmp_path / "logs", tmp_path / "out"
    make_inputs(src)
    assert ingest(src, out, table_format="delta").ok
    dt = deltalake.DeltaTable(str(out / "logs"))
    before = dt.version()
    first = per_file(delta_table(out, "logs"))
    # nothing changed: no transaction at all
    report = ingest(src, out, table_format="delta")
    assert report.files == {"unchanged": 7}
    dt.update_incremental()
    assert dt.version() == before
    # a changed big file and a changed bundle member: each replaced wholly, once
    make_csv(src / "big.csv", 2500, seed=99)
    make_csv(src / "s0.csv", 55, seed=98, start=100_000)
    report = ingest(src, out, table_format="delta")
    assert report.ok and report.files.get("ok", 0) >= 2  # bundle mates are read again too
    now = per_file(delta_table(out, "logs"))
    assert sum(n for n, _ in now.values()) == 2500 + 55 + 5 * 40
    unchanged = {fid for fid in first if first[fid] == now.get(fid)}
    assert len(unchanged) == 5  # the other small files kept their rows
    # every version of the table holds every file whole: its old or its new rows
    dt.update_incremental()
    for version in range(before, dt.version() + 1):
        at = per_file(delta_table(out, "logs", version))
        assert all(at[fid] in (first.get(fid), now.get(fid)) for fid in at), version
    # a deleted input: rows kept until --prune, then removed in a transaction
    os.remove(src / "s1.csv")
    assert ingest(src, out, table_format="delta").ok
    assert sum(n for n, _ in per_file(delta_table(out, "logs")).values()) == 2500 + 55 + 5 * 40
    report = ingest(src, out, table_format="delta", prune=True)
    assert report.ok and any("pruned" in n for n in report.notes)
    assert sum(n for n, _ in per_file(delta_table(out, "logs")).values()) == 2500 + 55 + 4 * 40
    # --force rewrites everything, still once
    assert ingest(src, out, table_format="delta", force=True).ok
    assert sum(n for n, _ in per_file(delta_table(out, "logs")).values()) == 2500 + 55 + 4 * 40
    # removed files are gone from the table, kept on disk for older versions until vacuum
    listed = {os.path.basename(u) for u in deltalake.DeltaTable(str(out / "logs")).file_uris()}
    on_disk = {f for _, _, fs in os.walk(out / "logs") for f in fs if f.endswith(".parquet")}
    assert listed < on_disk


def test_delta_schema_evolution_adds_columns_and_keeps_types(tmp_path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.csv").write_text("id,n\n1,10\n2,20\n")
    assert ingest(src, out, table="t", table_format="delta").ok
    # a new column, and text in an int64 column
    (src / "b.csv").write_text("id,n,extra\n3,30,x\n4,oops,y\n5,50,z\n")
    report = ingest(src, out, table="t", table_format="delta")
    assert report.rows == 2 and report.errors == 1
    assert any("new column(s) extra" in n for n in report.notes)
    assert any("column n" in n and "kept int64" in n for n in report.notes)
    schema = pa.schema(deltalake.DeltaTable(str(out / "t")).schema().to_arrow())
    assert schema.field("n").type == pa.int64() and "extra" in schema.names
    got = sorted(pl.read_delta(str(out / "t")).select("id", "n", "extra").rows())
    assert got == [(1, 10, None), (2, 20, None), (3, 30, "x"), (5, 50, "z")]
    errors = duckdb.sql(f"select error_type, raw from '{out}/_errors/*.parquet'").fetchall()
    assert [(t, bytes(r).strip()) for t, r in errors] == [("TypeMismatch", b"4,oops,y")]


def test_fragments_record_their_lineage(tmp_path) -> None:
    src = tmp_path / "logs"
    make_inputs(src, big_rows=500, small=3)
    for fmt in ("hive", "delta"):
        out = tmp_path / fmt
        report = ingest(src, out, table_format=fmt, partition_by=["event"])
        catalog = {r["file_id"]: r["path"] for r in
                   pq.read_table(out / "_catalog" / "catalog.parquet").to_pylist()}
        seen: set[str] = set()
        for root, _, files in os.walk(out / "logs"):
            for name in files:
                if not name.endswith(".parquet"):
                    continue
                meta = pq.read_metadata(os.path.join(root, name)).metadata
                assert meta[b"chunkmill.run_id"].decode() == report.run_id
                assert meta[b"chunkmill.version"].decode() not in ("", "unknown")
                ids = json.loads(meta[b"chunkmill.file_ids"])
                held = set(pq.read_table(os.path.join(root, name)).column("_file_id")
                           .to_pylist())
                assert set(ids) == held and held <= set(catalog)
                values = json.loads(meta[b"chunkmill.partition"])
                assert set(values) == {"event"}
                seen |= held
        assert seen == set(catalog), fmt


def test_hive_tables_get_common_metadata(tmp_path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.csv").write_text("id,k,n\n1,a,10\n2,b,20\n")
    assert ingest(src, out, table="t", partition_by=["k"]).ok
    common = pq.read_schema(out / "t" / "_common_metadata")
    assert common.names == ["id", "n", "_file_id"]  # the files' columns, no partition column
    assert common.field("n").type == pa.int64()
    # a widening run rewrites it with the unified types
    (src / "b.csv").write_text("id,k,n\n3,a,x\n")
    assert ingest(src, out, table="t", partition_by=["k"]).ok
    assert pq.read_schema(out / "t" / "_common_metadata").field("n").type == pa.string()
    # readers do not take it for data
    import pyarrow.dataset as pads

    assert pads.dataset(out / "t", partitioning="hive").count_rows() == 3
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/t/**/*.parquet', "
                      "hive_partitioning=true, union_by_name=true)").fetchall() == [(3,)]


def test_one_table_format_per_output_and_cli_status_report(tmp_path, capsys) -> None:
    src, out = tmp_path / "logs", tmp_path / "out"
    make_inputs(src, big_rows=300, small=2)
    assert cli.run(["ingest", str(src), "--out", str(out), "--table-format", "delta",
                    "--chunk-size", "8KB", "--no-progress", "-q"]) == 0
    assert cli.run(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 done, 0 pending, 0 failed" in text and "table logs: 3 done" in text
    assert cli.run(["report", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == {"ok": 3}
    assert cli.run(["ingest", str(src), "--out", str(out), "--table-format", "hive",
                    "--no-progress"]) == 2
    assert "holds delta tables" in capsys.readouterr().err


# --- a reader polling the table while runs are killed ---------------------------------------------
def _run(args: list[str], crash_at: str | None, delay: float | None) -> int:
    env = dict(os.environ)
    if crash_at:
        env["CHUNKMILL_CRASH_AT"] = crash_at
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=300)


class Poller(threading.Thread):
    """Reads the latest version of the table over and over, as a dashboard would."""

    def __init__(self, uri: str) -> None:
        super().__init__(daemon=True)
        self.uri, self.stop, self.seen, self.errors = uri, threading.Event(), [], []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if deltalake.DeltaTable.is_deltatable(self.uri):
                    dt = deltalake.DeltaTable(self.uri)
                    self.seen.append((dt.version(), per_file(pa.table(dt.to_pyarrow_table()))))
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                self.errors.append(repr(exc))
            time.sleep(0.05)


@pytest.mark.timeout(400)
def test_readers_never_see_a_file_half_replaced_across_sigkill(tmp_path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in range(3):
        make_csv(src / f"f{n}.csv", 3000, seed=n)
    args = ["ingest", str(src), "--out", str(out), "--table", "t", "--table-format", "delta",
            "--partition-by", "event", "--chunk-size", "24KB", "--small-file-size", "0",
            "--no-progress"]
    assert _run(args, None, None) == 0
    old = per_file(delta_table(out, "t"))
    base = deltalake.DeltaTable(str(out / "t")).version()
    for n in range(3):  # every file changes: more chunks, other rows
        make_csv(src / f"f{n}.csv", 4500, seed=50 + n)
    poller = Poller(str(out / "t"))
    poller.start()
    rnd = random.Random(3)
    kills = [("mid_commit", None), ("before_commit", None), ("staged:3", None),
             (None, rnd.uniform(1.0, 2.5)), (None, rnd.uniform(1.5, 3.0)), ("catalog", None)]
    if not thorough():
        kills = [kills[0], kills[2], kills[3]]
    codes = [_run(args, crash_at, delay) for crash_at, delay in kills]
    assert _run(args, None, None) == 0
    poller.stop.set()
    poller.join()
    assert -signal.SIGKILL in codes, codes
    new = per_file(delta_table(out, "t"))
    assert set(new) == set(old) and all(new[f] != old[f] for f in new)
    assert sum(n for n, _ in new.values()) == 3 * 4500
    # every version ever committed, and everything the poller saw, holds whole files only
    dt = deltalake.DeltaTable(str(out / "t"))
    versions = [per_file(delta_table(out, "t", v)) for v in range(base, dt.version() + 1)]
    for at in versions + [seen for _, seen in poller.seen]:
        assert all(at[fid] in (old[fid], new[fid]) for fid in at), at
        assert set(at) == set(old)
    assert poller.seen and not poller.errors, poller.errors[:3]
    # and a run after the finished one changes nothing
    assert _run(args, None, None) == 0
    assert deltalake.DeltaTable(str(out / "t")).version() == dt.version()

"""Columnar inputs (Parquet, Arrow IPC / Feather, ORC) read through pyarrow as tables.

Every ingest is checked against DuckDB reading the same input (Parquet directly; Arrow and ORC
as the Arrow tables pyarrow reads from them, which DuckDB scans): the output holds exactly the
input's rows, values and types. Also: hive-partitioned dumps (partition columns come back, as
pyarrow's hive partitioning types them), re-partitioning through the CLI, a directory of
Parquet files with nested columns and widened schemas, and damaged files.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.feather as feather
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline import cli
from readers import detect, get_reader
from readers._columnar import ColumnarSelector, hive_partitions, plain_type
from readers.arrow_ipc import ArrowIPCReader
from readers.base import ChunkContext, Source, stable_id
from readers.errors import BadFile
from readers.orc import ORCReader
from readers.parquet import ParquetReader

N = 3000
PARIS = "Europe/Paris"


def sample(n: int = N, start: int = 0) -> pa.Table:
    """Types users keep in columnar dumps: dictionary, zoned timestamps, decimals, nesting."""
    ids = range(start, start + n)
    t0 = dt.datetime(2024, 3, 31, tzinfo=dt.UTC)
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "name": pa.array([None if i % 11 == 0 else f"n{i % 7}" for i in ids]).dictionary_encode(),
        "ts": pa.array([t0 + dt.timedelta(minutes=7 * i) for i in ids], pa.timestamp("us", PARIS)),
        "amount": pa.array([decimal.Decimal(i) / 100 for i in ids], pa.decimal128(12, 2)),
        "tags": pa.array([[f"t{i % 3}", "x"] if i % 4 else None for i in ids],
                         pa.list_(pa.string())),
        "point": pa.array([{"x": i, "y": i / 2} for i in ids],
                          pa.struct([("x", pa.int64()), ("y", pa.float64())])),
        "flag": pa.array([i % 3 == 0 for i in ids]),
        "day": pa.array([dt.date(2024, 1, 1 + i % 28) for i in ids], pa.date32()),
    })


def plain(table: pa.Table) -> pa.Table:
    """The table with dictionaries decoded (what chunkmill promises to write)."""
    return table.cast(pa.schema([(f.name, plain_type(f.type)) for f in table.schema]))


def write_ipc_file(table: pa.Table, path: Path, rows: int, compression: str | None = None) -> None:
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_file(str(path), table.schema, options=options) as w:
        for batch in table.to_batches(max_chunksize=rows):
            w.write_batch(batch)


def write_ipc_stream(table: pa.Table, path: Path, rows: int) -> None:
    with pa.ipc.new_stream(str(path), table.schema) as w:
        for batch in table.to_batches(max_chunksize=rows):
            w.write_batch(batch)


def local_source(path: Path, table: str = "t") -> Source:
    url = "file://" + os.path.abspath(path)
    return Source(url, path.stat().st_size, path.stat().st_mtime, stable_id(url), "fp", table)


def out_rows(lake: Path, table: str, where: str = "") -> duckdb.DuckDBPyRelation:
    return duckdb.sql(f"select * exclude (_file_id) from read_parquet("
                      f"'{lake}/{table}/**/*.parquet', hive_partitioning=false) {where}")


def assert_same(got: duckdb.DuckDBPyRelation, want: duckdb.DuckDBPyRelation) -> None:
    """Same column names and DuckDB types, and the same rows as multisets."""
    assert list(zip(got.columns, map(str, got.types), strict=True)) == \
        list(zip(want.columns, map(str, want.types), strict=True))
    assert got.count("*").fetchall() == want.count("*").fetchall()
    assert got.except_(want).count("*").fetchall() == [(0,)]  # EXCEPT is set-wise: check both
    assert want.except_(got).count("*").fetchall() == [(0,)]
    key = got.columns[0]
    assert got.order(key).fetchall() == want.order(key).fetchall()


def catalog(lake: Path) -> dict[str, dict]:
    rows = duckdb.sql(f"select * from '{lake}/_catalog/*.parquet'").df().to_dict("records")
    return {os.path.basename(r["path"]): dict(r, metadata=json.loads(r["metadata"]))
            for r in rows}


def errors(lake: Path) -> list[dict]:
    if not list(lake.glob("_errors/*.parquet")):
        return []
    return duckdb.sql(f"select * from '{lake}/_errors/*.parquet' order by path, chunk"
                      ).df().to_dict("records")


# --- inputs -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory per format (a directory names its table, whatever the grouping rule)."""
    root = tmp_path_factory.mktemp("columnar")
    t = sample()
    for name in ("pq", "feather", "stream", "orcs"):
        (root / name).mkdir()
    pq.write_table(t, root / "pq" / "multi.parquet", row_group_size=400, compression="zstd")
    feather.write_feather(t, str(root / "feather" / "table.feather"), chunksize=500)  # lz4, v2
    write_ipc_stream(t, root / "stream" / "events.arrows", 700)
    # ORC has no dictionary columns and keeps instants in UTC
    orc_table = t.set_column(1, "name", t["name"].cast(pa.string()))
    # (the writer checks the stripe size once per batch and estimates compressed data low)
    orc.write_table(orc_table, str(root / "orcs" / "table.orc"), stripe_size=1024,
                    batch_size=500, compression="uncompressed")
    return root


@pytest.fixture(scope="module")
def lake(inputs: Path, tmp_path_factory: pytest.TempPathFactory, shared_scheduler: str) -> Path:
    """All four formats, small chunks (several per file), on worker processes."""
    out = tmp_path_factory.mktemp("lake") / "out"
    report = pipeline.ingest([str(inputs / d) for d in ("pq", "feather", "stream", "orcs")],
                             out=str(out), chunk_size="40KB", scheduler=shared_scheduler,
                             progress=False)
    assert report.exit_code == 0, report
    return out


# --- sniffing and describing --------------------------------------------------------------------
def test_magic_bytes_pick_the_reader(inputs: Path) -> None:
    def head(path: Path) -> bytes:
        return path.read_bytes()[:65536]

    assert detect(head(inputs / "pq" / "multi.parquet"), "x.bin") is ParquetReader
    assert detect(head(inputs / "feather" / "table.feather"), "x.bin") is ArrowIPCReader
    assert detect(head(inputs / "stream" / "events.arrows"), "x.bin") is ArrowIPCReader
    assert detect(head(inputs / "orcs" / "table.orc"), "x.bin") is ORCReader
    # look-alikes stay with the readers they belong to
    assert detect(b"ORCHARD,apples\n1,2\n", "fruit.csv") is get_reader("csv")
    assert detect(b"\xff\xff\xff\xff" + os.urandom(200), "x.bin") is get_reader("binary")
    assert all(r.threads_ok and r.bundles for r in (ParquetReader, ArrowIPCReader, ORCReader))


def test_describe_reads_the_footer_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A 10 MB Parquet file is described from its last few KiB (through fsspec, counted)."""
    path = tmp_path / "big.parquet"
    table = pa.table({"a": np.random.default_rng(2).integers(0, 255, 10 << 20, dtype=np.uint8)})
    pq.write_table(table, path, row_group_size=1 << 18, compression="none")
    fs = fsspec.filesystem("memory")
    fs.pipe("/big.parquet", path.read_bytes())
    counted = [0]
    opened = Source.open_stored

    class Counting:
        def __init__(self, f):  # noqa: ANN001
            self.f = f

        def read(self, n: int = -1) -> bytes:
            data = self.f.read(n)
            counted[0] += len(data)
            return data

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self.f, name)

    monkeypatch.setattr(Source, "open_stored", lambda self: Counting(opened(self)))
    source = Source("memory:///big.parquet", path.stat().st_size, None, "id", "fp", "big")
    description = ParquetReader().describe(source, ParquetReader.configure({}))
    assert description.metadata["row_groups"] == 40 and description.metadata["rows"] == 10 << 20
    assert 0 < counted[0] < 200_000, counted[0]


def test_describe_metadata_and_plan(inputs: Path) -> None:
    path = inputs / "pq" / "multi.parquet"
    reader = ParquetReader()
    rg_bytes = pq.ParquetFile(path).metadata.row_group(0).total_byte_size
    options = reader.configure({"chunk_size": int(rg_bytes * 3.5)})
    description = reader.describe(local_source(path), options)
    meta = description.metadata
    assert (meta["rows"], meta["row_groups"], meta["compression"]) == (N, 8, ["ZSTD"])
    assert meta["created_by"].startswith("parquet-cpp-arrow")
    assert "name: dictionary<values=string, indices=int32, ordered=0>" in meta["schema"]
    assert description.tables["t"] == plain(sample()).schema
    chunks = reader.plan(local_source(path), description, options)
    # row groups grouped three to a chunk, covering the file once, in order
    assert [(c.selector.first, c.selector.stop) for c in chunks] == [(0, 3), (3, 6), (6, 8)]
    assert all(c.weight <= options.chunk_size for c in chunks)
    assert chunks[1].offset == pq.ParquetFile(path).metadata.row_group(3).column(0) \
        .dictionary_page_offset


def test_truncated_footer_is_a_clean_error(inputs: Path, tmp_path: Path) -> None:
    data = (inputs / "pq" / "multi.parquet").read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadFile, match=str(cut)):
        ParquetReader().describe(local_source(cut), ParquetReader.configure({}))
    ipc = tmp_path / "cut.arrow"
    write_ipc_file(sample(100), ipc, 50)
    ipc.write_bytes(ipc.read_bytes()[:-30])
    with pytest.raises(BadFile, match=str(ipc)):
        ArrowIPCReader().describe(local_source(ipc), ArrowIPCReader.configure({}))


def test_hive_segments_are_decoded(tmp_path: Path) -> None:
    f = tmp_path / "dump" / "2024" / "day=a%2Fb" / "hour=05" / "x=__HIVE_DEFAULT_PARTITION__" / "p"
    src = Source("file://" + str(f), 0, None, "id", "fp", "dump")
    assert hive_partitions(src, (str(tmp_path / "dump") + "/",)) == (
        ("day", "a/b"), ("hour", "05"), ("x", None))
    assert hive_partitions(src, ()) == ()
    assert hive_partitions(src, (str(tmp_path / "elsewhere"),)) == ()


# --- every format through an ingest -------------------------------------------------------------
@pytest.mark.parametrize("table,expected", [
    ("pq", lambda d: duckdb.sql(f"select * from read_parquet('{d}/pq/multi.parquet')")),
    ("feather", lambda d: plain(feather.read_table(str(d / "feather" / "table.feather")))),
    ("stream", lambda d: plain(pa.ipc.open_stream(str(d / "stream" / "events.arrows"))
                               .read_all())),
    ("orcs", lambda d: orc.read_table(str(d / "orcs" / "table.orc"))),
])
def test_output_holds_the_inputs_rows_and_types(lake: Path, inputs: Path, table: str,
                                                expected) -> None:  # noqa: ANN001
    want = expected(inputs)
    if isinstance(want, pa.Table):
        want = duckdb.from_arrow(want)
    assert_same(out_rows(lake, table), want)


def test_catalog_says_what_each_file_is(lake: Path) -> None:
    cat = catalog(lake)
    assert {n: (r["format"], r["status"], r["rows"]) for n, r in cat.items()} == {
        "multi.parquet": ("parquet", "ok", N), "table.feather": ("arrow", "ok", N),
        "events.arrows": ("arrow", "ok", N), "table.orc": ("orc", "ok", N)}
    assert cat["multi.parquet"]["chunks"] > 1 and cat["table.feather"]["chunks"] > 1
    assert cat["events.arrows"]["chunks"] == 1  # a stream has no index: one chunk
    assert cat["table.feather"]["metadata"]["ipc_format"] == "file"
    assert cat["table.feather"]["metadata"]["record_batches"] == 6
    assert cat["events.arrows"]["metadata"]["ipc_format"] == "stream"
    orc_meta = cat["table.orc"]["metadata"]
    assert (orc_meta["compression"], orc_meta["stripes"]) == ("UNCOMPRESSED", 6)
    assert cat["table.orc"]["chunks"] > 1
    assert orc_meta["rows"] == N
    assert not errors(lake)


def test_feather_v1_is_read(tmp_path: Path) -> None:
    t = sample(500).drop_columns(["tags", "point", "amount"])  # v1: flat, no decimals
    path = tmp_path / "old.feather"
    with pytest.warns(DeprecationWarning):
        feather.write_feather(t.to_pandas(), str(path), version=1)
    reader = ArrowIPCReader()
    options = reader.configure({"chunk_size": 4096, "batch_bytes": 2048})
    source = local_source(path)
    description = reader.describe(source, options)
    assert description.metadata["ipc_format"] == "feather-v1"
    chunks = reader.plan(source, description, options)
    assert len(chunks) > 1
    got = []
    for chunk in chunks:
        ctx = ChunkContext(source, chunk)
        got += [rows for _, rows in reader.read(source, chunk, description, options, ctx)]
        assert not ctx.rejected
    want = feather.read_table(str(path))
    assert pa.concat_tables(got).equals(plain(want))


# --- hive-partitioned dumps ---------------------------------------------------------------------
DAYS = ("2024-01-01", "2024-01-02", "a%2Fb", "__HIVE_DEFAULT_PARTITION__")


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dump/day=<d>/hour=<h>/part-0.parquet`` as Spark writes it, with its marker files."""
    root = tmp_path_factory.mktemp("hive") / "dump"
    start = 0
    for i, day in enumerate(DAYS):
        for hour in ("05", "17")[: 1 + i % 2]:
            where = root / f"day={day}" / f"hour={hour}"
            where.mkdir(parents=True)
            n = 150 + 50 * i
            pq.write_table(sample(n, start).drop_columns(["day"]), where / "part-0.parquet",
                           row_group_size=100)
            start += n
    (root / "_SUCCESS").write_bytes(b"")
    pq.write_metadata(sample(1).schema, root / "_common_metadata")
    return root


def expected_dump(dump: Path) -> pa.Table:
    return plain(pads.dataset(str(dump), partitioning="hive").to_table())


def test_hive_partition_columns_come_back(dump: Path, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    report = pipeline.ingest([str(dump)], out=str(out), progress=False)  # threads layout
    assert report.exit_code == 0 and report.rows == sum(150 + 50 * i for i in (0, 1, 1, 2, 3, 3))
    want = expected_dump(dump)
    got = pq.read_table(out / "dump", partitioning=None).drop_columns(["_file_id"])
    assert got.schema == want.schema  # day: string, hour: int32, as pyarrow infers them
    assert_same(out_rows(out, "dump"), duckdb.from_arrow(want))
    assert {None, "a/b"} <= set(got["day"].to_pylist())
    assert set(got["hour"].to_pylist()) == {5, 17}
    cat = catalog(out)
    assert set(cat) == {"part-0.parquet"}  # _SUCCESS and _common_metadata are not inputs
    partitions = duckdb.sql(f"select metadata from '{out}/_catalog/*.parquet'").fetchall()
    assert {json.loads(m)["partition"]["hour"] for (m,) in partitions} == {"05", "17"}


def test_repartition_a_dump_from_the_cli(dump: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lake"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", str(dump), "--out",
                          str(out), "--partition-by", "day", "--no-progress"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    got = duckdb.sql(f"select day, hour, count(*) from read_parquet('{out}/dump/**/*.parquet', "
                     f"hive_partitioning=true, hive_types_autocast=false) group by all").fetchall()
    want = duckdb.from_arrow(expected_dump(dump)).aggregate("day, hour, count(*)").fetchall()
    assert sorted(got, key=str) == sorted(want, key=str)
    dirs = sorted(p.name for p in (out / "dump").iterdir() if p.name[0] not in "._")
    assert dirs == ["day=2024-01-01", "day=2024-01-02", "day=__HIVE_DEFAULT_PARTITION__",
                    "day=a%2Fb"]
    # the same command again, in this process (one interpreter start is enough)
    assert cli.run(["ingest", str(dump), "--out", str(out), "--partition-by", "day",
                    "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 0  # unchanged: nothing read again


# --- a directory of Parquet files with nested columns and widened schemas -----------------------
def test_mixed_directory_widens_nested_columns(tmp_path: Path) -> None:
    src = tmp_path / "mixed"
    src.mkdir()
    pq.write_table(pa.table({
        "id": pa.array([1, 2], pa.int32()),
        "s": pa.array([{"x": 1}, None], pa.struct([("x", pa.int32())])),
        "tags": pa.array([["a"], []], pa.list_(pa.string())),
    }), src / "a.parquet")
    b = pa.table({
        "id": pa.array([3, 4, 5], pa.int64()),
        "s": pa.array([{"x": 3, "y": "c"}, {"x": None, "y": "d"}, None],
                      pa.struct([("x", pa.int64()), ("y", pa.string())])),
        "tags": pa.array([["b", "b"], None, ["c"]], pa.list_(pa.string())),
        "score": pa.array([0.5, None, 2.0], pa.float32()),
    })
    pq.write_table(b, src / "b.parquet")
    dictionary_tags = pa.array([["z"], ["z", "y"]]).cast(
        pa.list_(pa.dictionary(pa.int8(), pa.string())))
    pq.write_table(pa.table({"id": pa.array([6, 7], pa.int64()),
                             "tags": dictionary_tags,
                             "score": pa.array([1.0, 3.0], pa.float64())}),
                   src / "c.parquet", row_group_size=1)
    out = tmp_path / "lake"
    report = pipeline.ingest([str(src)], out=str(out), progress=False)
    assert report.exit_code == 0 and report.rows == 7
    got = pq.read_table(out / "mixed").drop_columns(["_file_id"]).sort_by("id")
    assert got.schema == pa.schema([
        ("id", pa.int64()), ("s", pa.struct([("x", pa.int64()), ("y", pa.string())])),
        ("tags", pa.list_(pa.string())), ("score", pa.float64())])
    want = duckdb.sql(f"select id, s, tags, score from read_parquet('{src}/*.parquet', "
                      f"union_by_name=true) order by id").fetchall()
    assert [tuple(r.values()) for r in got.to_pylist()] == [
        (i, None if s is None else {"x": s["x"], "y": s.get("y")}, tags, score)
        for i, s, tags, score in want]


# --- damaged files ------------------------------------------------------------------------------
def corrupt_row_group(src: Path, dst: Path, group: int) -> tuple[int, int]:
    """``src`` with the column data of one row group scrambled; (its byte offset, its rows)."""
    rg = pq.ParquetFile(src).metadata.row_group(group)
    start = min(x for c in range(rg.num_columns) for x in
                (rg.column(c).dictionary_page_offset, rg.column(c).data_page_offset) if x)
    size = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
    data = bytearray(src.read_bytes())
    for p in range(start + 40, start + size - 40, 7):
        data[p] ^= 0x5A
    dst.write_bytes(bytes(data))
    return start, rg.num_rows


def test_damaged_units_cost_only_themselves(inputs: Path, tmp_path: Path) -> None:
    src = tmp_path / "broken"
    src.mkdir()
    good = inputs / "pq" / "multi.parquet"
    offset, lost = corrupt_row_group(good, src / "corrupt.parquet", 2)
    data = good.read_bytes()
    (src / "cut.parquet").write_bytes(data[: len(data) - 100])
    write_ipc_file(sample(600, 10_000), src / "batches.arrow", 100, compression="zstd")
    ipc = bytearray((src / "batches.arrow").read_bytes())
    at = int(len(ipc) * 0.45)
    ipc[at:at + 40] = bytes(b ^ 0x55 for b in ipc[at:at + 40])
    (src / "batches.arrow").write_bytes(bytes(ipc))
    out = tmp_path / "lake"
    report = pipeline.ingest([str(src)], out=str(out), progress=False, chunk_size="30KB")
    assert report.exit_code == 1  # cut.parquet failed; the others were ingested
    cat = catalog(out)
    assert (cat["corrupt.parquet"]["status"], cat["corrupt.parquet"]["rows"]) == \
        ("partial", N - lost)
    assert cat["cut.parquet"]["status"] == "failed"
    assert cat["batches.arrow"]["status"] == "partial"
    assert cat["batches.arrow"]["rows"] == 500  # one batch of 100 rows lost
    errs = {os.path.basename(e["path"]): e for e in errors(out)}
    assert set(errs) == {"corrupt.parquet", "cut.parquet", "batches.arrow"}
    bad = errs["corrupt.parquet"]
    assert (bad["kind"], bad["error_type"], bad["byte_offset"]) == ("chunk", "BadStructure", offset)
    assert "row group 2 cannot be decoded" in bad["message"] and str(src) not in bad["message"]
    assert errs["cut.parquet"]["kind"] == "file"
    assert "not a readable Parquet file" in errs["cut.parquet"]["message"]
    assert "record batch" in errs["batches.arrow"]["message"]
    # the rows kept are exactly the input's other row groups
    first_lost = 2 * 400
    got = duckdb.sql(f"select * exclude (_file_id) from read_parquet('{out}/broken/**/*.parquet')"
                     f" where id < 10000")
    want = duckdb.sql(f"select * from read_parquet('{good}') "
                      f"where id not between {first_lost} and {first_lost + lost - 1}")
    assert_same(got, want)


# --- memory --------------------------------------------------------------------------------------
def test_a_big_row_group_is_read_in_bounded_batches(tmp_path: Path) -> None:
    """A 48 MB row group read in 1 MiB batches: Arrow's pool never holds the row group."""
    path = tmp_path / "one_group.parquet"
    n = 2_000_000
    rng = np.random.default_rng(1)
    pq.write_table(pa.table({"a": rng.random(n), "b": rng.integers(0, 9, n), "c": rng.random(n)}),
                   path, row_group_size=n, compression="none")
    script = textwrap.dedent(f"""
        import os
        import pyarrow as pa
        from readers.base import ChunkContext, Source
        from readers.parquet import ParquetReader
        path = {str(path)!r}
        source = Source("file://" + path, os.path.getsize(path), None, "id", "fp", "t")
        reader = ParquetReader()
        options = reader.configure({{"batch_bytes": 1 << 20}})
        description = reader.describe(source, options)
        (chunk,) = reader.plan(source, description, options)
        rows = sum(t.num_rows for _, t in reader.read(source, chunk, description, options,
                                                       ChunkContext(source, chunk)))
        print(rows, pa.default_memory_pool().max_memory())
    """)
    # a fresh interpreter: the pool's high-water mark is per process
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stderr
    rows, peak = map(int, res.stdout.split())
    assert rows == n
    assert peak < 16 << 20, peak  # the row group decodes to 48 MB


def test_selectors_pickle() -> None:
    import pickle

    sel = ColumnarSelector(2, 5)
    assert pickle.loads(pickle.dumps(sel)) == sel

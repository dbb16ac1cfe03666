"""Zarr reader: v2 and v3 stores as directory inputs, layouts, metadata, hostile stores.

Local stores go through `pipeline.ingest` (one module-scoped run); ``memory://`` stores are
process-local, so remote reading is tested at the reader level (describe/plan/read in-process).
"""

from __future__ import annotations

import json
import time

import duckdb
import numpy as np
import pytest
import zarr
import zarr.storage
from conftest import read_all, read_catalog

import pipeline
from readers.base import Source
from readers.zarr import ZarrReader

N = 1000


def _v3(path, store=None) -> None:
    g = zarr.open_group(store if store is not None else str(path), mode="w", zarr_format=3)
    g.attrs["title"] = "v3 store"
    t = g.create_array("sensors/temp", shape=(N,), chunks=(100,), dtype="f8", fill_value=-1.0)
    t[:] = np.arange(N, dtype="f8")
    t.attrs["unit"] = "C"
    img = g.create_array("img", shape=(40, 4, 5), chunks=(10, 2, 5), shards=(20, 4, 5),
                         dtype="i2")
    img[:] = np.arange(40 * 20, dtype="i2").reshape(40, 4, 5)
    names = g.create_array("names", shape=(3,), chunks=(2,), dtype=str)
    names[:] = ["a", "béta", ""]
    sparse = g.create_array("sparse", shape=(2**40,), chunks=(1024,), dtype="u1")
    sparse[0:1024] = 7
    sparse[2**39:2**39 + 1024] = 9
    g.create_array("scalar", shape=(), dtype="i4")[()] = 42


def _v2(path) -> None:
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.attrs["title"] = "v2 store"
    x = g.create_array("x", shape=(30,), chunks=(7,), dtype=">i4")
    x[:] = np.arange(30)
    rec = g.create_array("rec", shape=(4,), chunks=(2,), dtype=[("a", "<i4"), ("b", "<f8")])
    rec[:] = np.array([(1, 0.5), (2, 1.5), (3, 2.5), (4, 3.5)], dtype=rec.dtype)
    part = g.create_array("partial", shape=(20,), chunks=(5,), dtype="i8", fill_value=-7)
    part[0:5] = 1  # chunks 1..3 are never written: they read as the fill value


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_scheduler):
    base = tmp_path_factory.mktemp("zarr")
    inp = base / "data"
    (inp / "nested").mkdir(parents=True)
    _v3(inp / "nested" / "v3.zarr")
    _v2(inp / "v2.zarr")
    root = zarr.open_array(str(inp / "rootarr.zarr"), mode="w", shape=(10,), chunks=(4,),
                           dtype="i8", zarr_format=3)
    root[:] = np.arange(10)
    (inp / "side.csv").write_text("a,b\n1,2\n")

    # Hostile stores.
    bad = inp / "corrupt.zarr"
    _v2(bad)
    (bad / "x" / "2").write_bytes(b"not a blosc frame at all")
    broken = inp / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{ this is not json")
    absurd = inp / "absurd.zarr"
    g = zarr.open_group(str(absurd), mode="w", zarr_format=3)
    g.create_array("wide", shape=(4, 2**40), chunks=(1, 2**20), dtype="f8")
    g.create_array("tall", shape=(2**50,), chunks=(1,), dtype="f8")

    out = base / "out"
    started = time.time()
    # On the tests' shared cluster (worker processes, planned as one worker would be), not an
    # embedded cluster started for this module alone.
    report = pipeline.ingest([str(inp)], out=str(out), workers=1, progress=False,
                             scheduler=shared_scheduler)
    return {"out": out, "inp": inp, "report": report, "seconds": time.time() - started}


def _sql(query: str) -> list[tuple]:
    return duckdb.sql(query).fetchall()




def _of(out, table: str, store: str, cols: str) -> list[tuple]:
    """Rows of ``table`` that came from the store named ``store``, in row order."""
    return _sql(f"select {cols} from read_parquet('{out}/{table}/**/*.parquet') t join "
                f"read_parquet('{out}/_catalog/*.parquet') c on t._file_id = c.file_id "
                f"where c.path like '%/{store}' order by row")


def _errors(out) -> list[tuple]:
    return _sql(f"select path, kind, error_type, message from "
                f"read_parquet('{out}/_errors/*.parquet')")


def test_stores_are_single_inputs(run):
    cat = read_catalog(run["out"])
    assert set(cat) == {"v3.zarr", "v2.zarr", "rootarr.zarr", "side.csv", "corrupt.zarr",
                        "broken.zarr", "absurd.zarr"}
    assert all(cat[n]["format"] == "zarr" for n in cat if n.endswith(".zarr"))
    assert cat["v3.zarr"]["path"].endswith("data/nested/v3.zarr")
    assert run["seconds"] < 60


def test_v3_arrays(run):
    out = run["out"]
    assert _sql(f"select count(*), sum(temp), max(row) from "
                f"read_parquet('{out}/sensors.temp/**/*.parquet', hive_partitioning=true)") == [
        (N, float(sum(range(N))), N - 1)]
    img = _sql(f"select row, value from read_parquet('{out}/img/**/*.parquet') order by row")
    assert len(img) == 40 and list(img[39][1]) == list(range(780, 800))
    assert _sql(f"select names from read_parquet('{out}/names/**/*.parquet') order by row") == [
        ("a",), ("béta",), ("",)]
    # The 2**40-row array is planned from its stored chunks only.
    assert _sql(f"select count(*), min(row), max(row), sum(sparse) from "
                f"read_parquet('{out}/sparse/**/*.parquet')") == [
        (2048, 0, 2**39 + 1023, 1024 * 16)]


def test_v2_arrays_and_fill_values(run):
    out = run["out"]
    assert _of(out, "x", "v2.zarr", "row, x") == [(i, i) for i in range(30)]
    assert _of(out, "rec", "v2.zarr", "row, a, b")[2] == (2, 3, 2.5)
    part = _of(out, "partial", "v2.zarr", "partial")
    assert [r[0] for r in part] == [1] * 5 + [-7] * 15


def test_root_array_store_is_named_after_the_store(run):
    cat = read_catalog(run["out"])
    assert cat["rootarr.zarr"]["tables"] == ["rootarr"]
    assert _sql(f"select sum(rootarr) from read_parquet('{run['out']}/rootarr/**/*.parquet')"
                ) == [(45,)]


def test_catalog_metadata(run):
    meta = json.loads(read_catalog(run["out"])["v3.zarr"]["metadata"])
    assert meta["zarr_format"] == 3 and meta["attributes"] == {"title": "v3 store"}
    temp = meta["arrays"]["sensors/temp"]
    assert temp["table"] == "sensors.temp" and temp["chunks"] == [100]
    assert temp["fill_value"] == -1.0 and temp["attributes"] == {"unit": "C"}
    assert meta["arrays"]["img"]["shards"] == [20, 4, 5]
    assert meta["arrays"]["img"]["value_shape"] == [4, 5]
    assert meta["arrays"]["img"]["codecs"][0]["name"] == "sharding_indexed"
    assert meta["arrays"]["sparse"]["planning"] == "sparse"
    assert meta["scalars"]["scalar"]["value"] == 42
    v2 = json.loads(read_catalog(run["out"])["v2.zarr"]["metadata"])
    assert v2["zarr_format"] == 2 and v2["arrays"]["x"]["codecs"]["compressor"]["id"] == "blosc"


def test_hostile_stores(run):
    out, cat = run["out"], read_catalog(run["out"])
    assert cat["broken.zarr"]["status"] == "failed"
    assert "broken.zarr" in json.loads(cat["broken.zarr"]["metadata"])["error"]
    corrupt = [e for e in _errors(out) if e[0].endswith("corrupt.zarr")]
    assert len(corrupt) == 1 and corrupt[0][1] == "chunk"
    assert "array x rows 14:21" in corrupt[0][3]
    assert cat["corrupt.zarr"]["status"] == "partial"
    absurd = cat["absurd.zarr"]
    meta = json.loads(absurd["metadata"])
    assert "2**31" in meta["refused"]["wide"]
    assert meta["arrays"]["tall"]["planning"] == "sparse" and absurd["rows"] == 0
    assert absurd["chunks"] == 1  # the refusal of "wide"; "tall" has no stored chunk


# --- reader level ----------------------------------------------------------------------------


def _read_all(source: Source, options=None):
    return read_all(ZarrReader(), source, options)


def test_remote_store_through_fsspec():
    store = zarr.storage.FsspecStore.from_url("memory://zarrtest/remote.zarr", read_only=False)
    _v3(None, store=store)
    src = Source("memory://zarrtest/remote.zarr", 10_000, None, "fid", "fp", "remote")
    desc, tables, rejected = _read_all(src, {"chunk_size": 2048})
    assert not rejected
    assert tables["sensors.temp"].column("temp").to_pylist() == list(map(float, range(N)))
    assert tables["sparse"].num_rows == 2048
    assert desc.metadata["arrays"]["img"]["shards"] == [20, 4, 5]


def test_blocks_are_whole_shards(tmp_path):
    _v3(tmp_path / "s.zarr")
    src = Source("file://" + str(tmp_path / "s.zarr"), 10_000, None, "fid", "fp", "s")
    reader = ZarrReader()
    desc = reader.describe(src, reader.configure({}))
    blocks = [(c.selector.start, c.selector.stop)
              for c in reader.plan(src, desc, reader.configure({"chunk_size": 1}))
              if c.selector.path == "img"]
    assert blocks == [(0, 20), (20, 40)]  # one shard (20 rows) per block, never a chunk of 10


def test_sparse_listing_is_capped(tmp_path):
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=3)
    a = g.create_array("big", shape=(2**40,), chunks=(8,), dtype="u1")
    a[0:64] = 1
    src = Source("file://" + str(tmp_path / "c.zarr"), 1000, None, "fid", "fp", "c")
    _, tables, rejected = _read_all(src, {"max_listed_chunks": 3})
    assert not tables and len(rejected) == 1 and "more than 3" in rejected[0].message


def test_directory_markers():
    assert set(ZarrReader.directory_markers) == {"zarr.json", ".zgroup", ".zarray"}
    assert ZarrReader.sniff(b'{"zarr_format": 3}', "zarr.json") == 0


def test_many_small_arrays_share_chunks_and_empty_ones_go_to_the_catalog(tmp_path):
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="w", zarr_format=3)
    for i in range(300):
        g.create_array(f"a{i:03d}", shape=(2,), chunks=(2,), dtype="i4")[:] = [i, -i]
    g.create_array("none", shape=(0,), chunks=(4,), dtype="f8")
    g.create_array("flat", shape=(3, 0), chunks=(1, 1), dtype="f8")
    src = Source("file://" + str(tmp_path / "m.zarr"), 100_000, None, "fid", "fp", "m")
    reader = ZarrReader()
    options = reader.configure({})
    desc = reader.describe(src, options)
    assert len(reader.plan(src, desc, options)) == 2  # 256 + 44 arrays, not 300 tasks
    assert desc.metadata["arrays"]["none"]["empty"] is True
    assert desc.metadata["arrays"]["flat"]["empty"] is True
    assert "none" not in desc.tables and "flat" not in desc.tables
    _, tables, rejected = _read_all(src, {})
    assert not rejected and len(tables) == 300
    assert tables["a299"].column("a299").to_pylist() == [299, -299]


def test_hostile_chunks_and_metadata_found_by_fuzzing(tmp_path):
    """A chunk its codec cannot decode is a damaged chunk, not an internal error; metadata
    zarr refuses while listing the hierarchy fails the store with a reader error."""
    from readers.errors import ReaderError

    g = zarr.open_group(str(tmp_path / "z.zarr"), mode="w", zarr_format=3)
    g.create_array("a", shape=(40,), chunks=(16,), dtype="<i4")[:] = np.arange(40)
    chunk = tmp_path / "z.zarr" / "a" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[0] ^= 1  # the zstd frame magic
    chunk.write_bytes(bytes(data))
    src = Source("file://" + str(tmp_path / "z.zarr"), 10_000, None, "fid", "fp", "z")
    _, tables, rejected = _read_all(src, {"chunk_size": 64})
    assert [(r.kind, r.error_type) for r in rejected] == [("chunk", "CorruptStream")]
    assert tables["a"].column("a").to_pylist() == list(range(16, 40))

    meta = tmp_path / "z.zarr" / "a" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"] = None
    meta.write_text(json.dumps(doc))
    with pytest.raises(ReaderError, match="damaged Zarr hierarchy"):
        _read_all(src, {})

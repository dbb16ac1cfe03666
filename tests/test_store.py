"""`pipeline.output.store`: durable batches of many small files."""

from __future__ import annotations

import ctypes
import errno
import os

import pyarrow as pa
import pytest

from pipeline.output import store as store_mod
from pipeline.output.store import BATCH_SYNC_FILES, LocalStore, open_store, sync_filesystems


def _files(root, n: int) -> list[str]:
    paths = []
    for i in range(n):
        path = root / f"f{i}"
        path.write_bytes(b"x" * 100)
        paths.append(str(path))
    return paths


def test_sync_many_is_one_syncfs_per_batch_and_falls_back_to_fsync(tmp_path, monkeypatch):
    paths = _files(tmp_path, BATCH_SYNC_FILES)
    store = LocalStore(str(tmp_path), str(tmp_path), {})
    fsyncs: list[int] = []
    syncfs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))

    def fake(result: int, err: int = 0):
        def call(fd: int) -> int:
            syncfs.append(fd)
            ctypes.set_errno(err)
            return result
        return lambda: call

    monkeypatch.setattr(store_mod, "_syncfs", fake(0))
    store.sync_many(paths)
    assert len(syncfs) == 1 and fsyncs == []  # one filesystem: one call for the batch
    store.sync_many(paths[:3])  # a few files: an fsync each
    assert len(syncfs) == 1 and len(fsyncs) == 3

    # no syncfs here (another OS, another libc), or a kernel without it: an fsync per file
    fsyncs.clear()
    monkeypatch.setattr(store_mod, "_syncfs", lambda: None)
    store.sync_many(paths)
    assert len(fsyncs) == len(paths)
    fsyncs.clear()
    monkeypatch.setattr(store_mod, "_syncfs", fake(-1, errno.ENOSYS))
    store.sync_many(paths)
    assert len(fsyncs) == len(paths)

    # a writeback error is raised, as fsync's would be, never taken for success
    monkeypatch.setattr(store_mod, "_syncfs", fake(-1, errno.EIO))
    with pytest.raises(OSError) as failed:
        store.sync_many(paths)
    assert failed.value.errno == errno.EIO


def test_sync_filesystems_for_real(tmp_path):
    paths = _files(tmp_path, 3)
    done = sync_filesystems(paths)
    assert done == (store_mod._syncfs() is not None)


def test_open_write_and_replace_make_missing_directories(tmp_path):
    store = LocalStore(str(tmp_path), str(tmp_path), {})
    with store.open_write(store.path("a", "b", "f.bin")) as f:
        f.write(b"data")
    store.replace(store.path("a", "b", "f.bin"), store.path("c", "d", "g.bin"))
    assert (tmp_path / "c" / "d" / "g.bin").read_bytes() == b"data"
    with pytest.raises(FileNotFoundError):  # a missing source stays an error
        store.replace(store.path("a", "b", "f.bin"), store.path("c", "d", "h.bin"))


def test_write_many_atomic_leaves_whole_files_only(tmp_path):
    store = LocalStore(str(tmp_path), str(tmp_path), {})
    items = [(store.path(f"t{i % 5}", "new" if i % 2 else "", f"f{i}"), bytes([i]) * (i + 1))
             for i in range(BATCH_SYNC_FILES + 3)]  # directories missing: made on the way
    store.write_many_atomic(items)
    store.write_many_atomic(items[:2])  # a few: synced one by one
    for path, data in items:
        assert open(path, "rb").read() == data
    left = [p.name for p in tmp_path.rglob("*") if p.is_file() and ".tmp-" in p.name]
    assert left == []


def test_file_id_written_from_a_dictionary_reads_as_text(tmp_path) -> None:
    """Fragments get ``_file_id`` as a dictionary array (the Parquet writer then skips
    hashing every row), yet their footers say text exactly as a text column's would: the
    same ``ARROW:schema``, Parquet schema, statistics and values in pyarrow, Polars, DuckDB."""
    import datetime

    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    from pipeline.output.writer import FragmentWriter, SinkSpec

    n = 3000
    data = pa.table({
        "i": pa.array(range(n), pa.int64()),
        "ts": pa.array([datetime.datetime(2024, 1, 1)] * n, pa.timestamp("us", tz="UTC")),
        "dur": pa.array([5] * n, pa.duration("ms")),
        "vec": pa.FixedSizeListArray.from_arrays(pa.array([1.5] * (3 * n)), 3),
        "s": pa.array(["x", None, "é"] * (n // 3)),
    }).replace_schema_metadata({"origin": "test"})
    store = open_store(str(tmp_path))
    spec = SinkSpec(store, "run", {"t": data.schema})
    writer = FragmentWriter(spec, "c0", "f" * 16)
    writer.write("t", data.slice(0, 1000))
    writer.write("t", data.slice(1000), file_id="e" * 16)  # another file's rows
    [fragment] = writer.close()
    got = pq.ParquetFile(fragment.staged)
    table = got.read()
    assert table.schema.field("_file_id").type == pa.string()
    assert table.column("_file_id").to_pylist() == ["f" * 16] * 1000 + ["e" * 16] * 2000
    # the same rows, text column and all, written by pyarrow itself
    plain = tmp_path / "plain.parquet"
    expected = data.append_column(pa.field("_file_id", pa.string()),
                                  pa.array(["f" * 16] * 1000 + ["e" * 16] * 2000))
    pq.write_table(expected, plain, compression="zstd", row_group_size=spec.row_group_rows)
    assert table.select(expected.column_names).equals(pq.read_table(plain))
    ref = pq.ParquetFile(plain)
    assert got.metadata.metadata[b"ARROW:schema"] == ref.metadata.metadata[b"ARROW:schema"]
    assert got.metadata.metadata[b"origin"] == b"test"
    assert got.schema.equals(ref.schema)
    stats = got.metadata.row_group(0).column(table.schema.get_field_index("_file_id")).statistics
    assert (stats.min, stats.max) == ("e" * 16, "f" * 16)
    assert pl.read_parquet(fragment.staged).equals(pl.read_parquet(plain))
    assert duckdb.sql(f"select typeof(_file_id), count(*) from '{fragment.staged}' "
                      "group by all").fetchall() == [("VARCHAR", n)]

"""Writing output: staged Parquet fragments, atomic commit, the catalog and the errors table.

A chunk task writes its fragments under ``OUT/_chunkmill/staging/<run>/`` (invisible to readers
of ``OUT/<table>/**/*.parquet``). The client moves them into place with a rename only once the
chunk is verified, so a crash never leaves a half-written or unverified fragment where queries
look. Fragment names are deterministic per (file, chunk): a re-run overwrites, never duplicates.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipeline import partition
from pipeline.columns import int64_array, repeated_text, text_array
from pipeline.faults import crash_point
from pipeline.schema import conform
from readers.base import Rejected

FILE_ID = "_file_id"
STATE_DIR = "_chunkmill"
CATALOG_DIR = "_catalog"
ERRORS_DIR = "_errors"

ERRORS_SCHEMA = pa.schema([
    ("file_id", pa.string()), ("path", pa.string()), ("chunk", pa.int64()),
    ("byte_offset", pa.int64()), ("kind", pa.string()), ("error_type", pa.string()),
    ("message", pa.string()), ("raw", pa.binary()), ("run_id", pa.string()),
])


class Store:
    """The output root on any fsspec filesystem, with fast, durable paths for local disks."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = root
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = url_to_fs(root, **self.storage_options)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.local = protocol in ("file", "local")
        if self.local:
            self.root = os.path.abspath(self.root)

    def __reduce__(self):  # noqa: ANN204 - rebuild from the URL on workers
        return (Store, (self.url, self.storage_options))

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *[p for p in parts if p])

    def makedirs(self, path: str) -> None:
        if self.local:
            os.makedirs(path, exist_ok=True)
        else:
            self.fs.makedirs(path, exist_ok=True)

    def open_write(self, path: str):  # noqa: ANN201 - binary output stream
        """A new file to write; `sync` it after closing to make it durable.

        On local disks this is Arrow's own buffered file, not a Python one: pyarrow's Parquet
        writer then writes without the GIL, where a Python file object made every page write
        wait for it (7 % of a worker thread's time on plain CSV).
        """
        self.makedirs(posixpath.dirname(path))
        if self.local:
            return pa.output_stream(path, compression=None, buffer_size=1 << 20)
        return self.fs.open(path, "wb")

    def sync(self, path: str) -> None:
        """Flush a closed local file to disk (fsync works on any descriptor of the file);
        remote stores commit when the file closes."""
        if not self.local:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        """Move ``src`` over ``dst`` atomically where the filesystem allows it."""
        self.makedirs(posixpath.dirname(dst))
        if self.local:
            os.replace(src, dst)
        else:
            self.fs.mv(src, dst)

    def exists(self, path: str) -> bool:
        return os.path.exists(path) if self.local else self.fs.exists(path)

    def remove(self, path: str) -> None:
        try:
            if self.local:
                os.remove(path)
            else:
                self.fs.rm(path)
        except FileNotFoundError:
            pass

    def rmtree(self, path: str) -> None:
        if not self.exists(path):
            return
        if self.local:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            self.fs.rm(path, recursive=True)

    @staticmethod
    def temp_name(path: str) -> str:
        """A sibling name no reader picks up: hidden (pyarrow, Spark) and not ``*.parquet``."""
        head, tail = posixpath.split(path)
        return posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        tmp = self.temp_name(path)
        with self.open_write(tmp) as f:
            f.write(data)
        self.sync(tmp)
        self.replace(tmp, path)

    def write_table_atomic(self, path: str, table: pa.Table, compression: str = "zstd") -> None:
        tmp = self.temp_name(path)
        with self.open_write(tmp) as f:
            pq.write_table(table, f, compression=_codec(compression))
        self.sync(tmp)
        crash_point("before_rename")
        self.replace(tmp, path)

    def glob(self, pattern: str) -> list[str]:
        if self.local:
            import glob

            return sorted(glob.glob(pattern, recursive=True))
        return sorted(self.fs.glob(pattern))


def _codec(compression: str) -> str | None:
    return None if compression == "none" else compression


@dataclass(slots=True)
class Fragment:
    """One staged Parquet file of one chunk: where it is, where it goes, what it holds."""

    table: str
    partition: str
    staged: str
    final: str
    rows: int
    bytes: int = 0


@dataclass(slots=True)
class SinkSpec:
    """Everything a chunk task needs to write its output; small and picklable."""

    store: Store
    run_id: str
    schemas: dict[str, pa.Schema]
    partition_by: tuple[str, ...] = ()
    compression: str = "zstd"
    row_group_rows: int = 1 << 19
    """Rows buffered per (table, partition) before a row group is written: readers get row
    groups of a useful size even though parsers hand over small batches."""


@dataclass
class FragmentWriter:
    """Writes one chunk's pieces to staged fragments, one per (table, partition directory)."""

    spec: SinkSpec
    chunk_id: str
    file_id: str
    writers: dict[tuple[str, str], tuple[pq.ParquetWriter, Any, Fragment]] = field(
        default_factory=dict)
    pending: dict[tuple[str, str], list[pa.Table]] = field(default_factory=dict)
    _own_ids: pa.Array | None = None
    """The writer's own ``_file_id`` column, sliced for each batch of rows."""

    def write(self, table: str, rows: pa.Table, file_id: str | pa.Array | None = None) -> None:
        """Rows of ``table`` from one file (``file_id``: the writer's own by default), or
        from several (``file_id``: one id per row)."""
        schema = self.spec.schemas[table]
        rows = conform(rows, schema)
        if isinstance(file_id, pa.Array):
            ids = file_id
        elif file_id and file_id != self.file_id:
            ids = repeated_text(file_id, rows.num_rows)
        else:
            ids = self._ids(rows.num_rows)
        rows = rows.append_column(FILE_ID, ids)
        for rel, part in partition.split(rows, self.partition_columns(table)):
            self.add(table, rel, part)

    def _ids(self, count: int) -> pa.Array:
        if self._own_ids is None or len(self._own_ids) < count:
            self._own_ids = repeated_text(self.file_id, max(count, 1 << 16))
        return self._own_ids.slice(0, count)

    def partition_columns(self, table: str) -> tuple[str, ...]:
        schema = self.spec.schemas[table]
        return self.spec.partition_by if all(
            c in schema.names for c in self.spec.partition_by) else ()

    def add(self, table: str, rel: str, part: pa.Table) -> None:
        """Rows already split: no partition columns, ``_file_id`` last."""
        key = (table, rel)
        self.pending.setdefault(key, []).append(part)
        if sum(t.num_rows for t in self.pending[key]) >= self.spec.row_group_rows:
            self._flush(key)

    def _flush(self, key: tuple[str, str]) -> None:
        parts = self.pending.pop(key, [])
        if not parts:
            return
        data = pa.concat_tables(parts)
        self._writer(key[0], key[1], data).write_table(
            data, row_group_size=self.spec.row_group_rows)
        self.writers[key][2].rows += data.num_rows

    def _writer(self, table: str, rel: str, first: pa.Table) -> pq.ParquetWriter:
        key = (table, rel)
        if key not in self.writers:
            store = self.spec.store
            name = f"{self.chunk_id}.parquet"
            # Unique per attempt: a worker presumed lost cannot scribble over its successor.
            staged = store.path(STATE_DIR, "staging", self.spec.run_id, table, rel,
                                f"{self.chunk_id}.{uuid.uuid4().hex[:8]}.parquet")
            final = store.path(table, rel, name)
            handle = store.open_write(staged)
            writer = pq.ParquetWriter(handle, first.schema,
                                      compression=_codec(self.spec.compression),
                                      use_dictionary=dictionary_columns(first))
            self.writers[key] = (writer, handle, Fragment(table, rel, staged, final, 0))
        return self.writers[key][0]

    def close(self) -> list[Fragment]:
        for key in list(self.pending):
            self._flush(key)
        out = []
        for writer, handle, fragment in self.writers.values():
            writer.close()
            fragment.bytes = handle.tell()
            handle.close()
            self.spec.store.sync(fragment.staged)
            out.append(fragment)
        self.writers.clear()
        return out

    def abort(self) -> None:
        self.pending.clear()
        for writer, handle, fragment in self.writers.values():
            try:
                writer.close()
                handle.close()
            finally:
                self.spec.store.remove(fragment.staged)
        self.writers.clear()


_DICT_SAMPLE_ROWS = 8192


def dictionary_columns(table: pa.Table) -> list[str] | bool:
    """Columns worth Parquet dictionary encoding, judged from the first rows a writer sees.

    Text always (the writer falls back to plain pages by itself when a dictionary outgrows its
    page). Numbers and times only when the sample repeats values a lot: for a unique id or a
    measurement, the writer would hash a whole dictionary page of values only to throw it away,
    which made fragments both slower to write (a fifth of the write time) and no smaller.
    """
    if any(pa.types.is_nested(f.type) for f in table.schema):
        return True  # leaf paths of nested columns differ from field names: keep the default
    sample = table.slice(0, _DICT_SAMPLE_ROWS)
    chosen = []
    for name, column in zip(table.column_names, sample.columns, strict=True):
        kind = column.type
        if (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                or pa.types.is_dictionary(kind)):
            chosen.append(name)
        elif pa.types.is_boolean(kind) or pa.types.is_null(kind):
            continue
        elif _repetitive(column):
            chosen.append(name)
    return chosen


def _repetitive(column: pa.ChunkedArray) -> bool:
    try:
        return pc.count_distinct(column).as_py() * 4 <= len(column)
    except pa.ArrowNotImplementedError:
        return True  # a type count_distinct does not hash: the writer's default


def errors_table(rows: Iterable[tuple[str, str, int | None, Rejected]], run_id: str) -> pa.Table:
    """The ``_errors`` rows for (file_id, path, chunk index, rejection) tuples."""
    rows = list(rows)
    return pa.Table.from_arrays([
        text_array([r[0] for r in rows]), text_array([r[1] for r in rows]),
        int64_array([r[2] for r in rows]), int64_array([r[3].byte_offset for r in rows]),
        text_array([r[3].kind for r in rows]), text_array([r[3].error_type for r in rows]),
        text_array([r[3].message for r in rows]),
        text_array([r[3].raw for r in rows], pa.binary()),
        repeated_text(run_id, len(rows)),
    ], schema=ERRORS_SCHEMA)


def stage_errors(spec: SinkSpec, name: str, table: pa.Table) -> Fragment:
    """Stage an ``_errors`` fragment (committed with the chunk's data fragments)."""
    store = spec.store
    staged = store.path(STATE_DIR, "staging", spec.run_id, ERRORS_DIR,
                        f"{name}.{uuid.uuid4().hex[:8]}.parquet")
    with store.open_write(staged) as f:
        pq.write_table(table, f, compression=_codec(spec.compression))
    store.sync(staged)
    return Fragment(ERRORS_DIR, "", staged, store.path(ERRORS_DIR, f"{name}.parquet"),
                    table.num_rows)


CATALOG_SCHEMA = pa.schema([
    ("file_id", pa.string()), ("path", pa.string()), ("format", pa.string()),
    ("size_bytes", pa.int64()), ("mtime", pa.timestamp("us", tz="UTC")),
    ("fingerprint", pa.string()), ("status", pa.string()), ("tables", pa.list_(pa.string())),
    ("rows", pa.int64()), ("chunks", pa.int64()), ("error_count", pa.int64()),
    ("duration_s", pa.float64()), ("metadata", pa.string()), ("run_id", pa.string()),
    ("ingested_at", pa.timestamp("us", tz="UTC")),
])


def catalog_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The ``_catalog`` table; ``metadata`` is JSON text (query it with json_extract).

    Built by pyarrow's JSON reader against the fixed schema rather than ``from_pydict``: any
    conversion of Python objects imports pandas inside pyarrow, a third of a second and 40 MiB
    at the end of every run for a table of a few rows per file.
    """
    import datetime as dt

    if not rows:
        return CATALOG_SCHEMA.empty_table()

    def ts(value: float | None) -> str | None:
        return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC).isoformat()

    lines = []
    for row in rows:
        record = {name: row.get(name) for name in CATALOG_SCHEMA.names}
        record["mtime"], record["ingested_at"] = ts(record["mtime"]), ts(record["ingested_at"])
        record["metadata"] = json.dumps(record["metadata"] or {}, default=str, sort_keys=True)
        lines.append(json.dumps(record, default=_json_scalar))
    # A record must fit one parse block (1 MiB by default); json.dumps output is ASCII.
    block = max(1 << 20, max(map(len, lines)) + 64)
    return pa_json.read_json(
        io.BytesIO("\n".join(lines).encode()), read_options=pa_json.ReadOptions(block_size=block),
        parse_options=pa_json.ParseOptions(explicit_schema=CATALOG_SCHEMA,
                                           unexpected_field_behavior="error"))


def _json_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


def now() -> float:
    return time.time()


__all__ = ["Store", "SinkSpec", "FragmentWriter", "Fragment", "errors_table", "stage_errors",
           "catalog_table", "FILE_ID", "STATE_DIR", "CATALOG_DIR", "ERRORS_DIR"]

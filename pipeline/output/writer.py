"""Staged Parquet fragments: what a chunk task writes, one file per (table, partition).

A chunk task writes its fragments under ``OUT/_chunkmill/staging/<run>/`` (invisible to readers
of ``OUT/<table>/**/*.parquet``). The client moves them into place with a rename only once the
chunk is verified, so a crash never leaves a half-written or unverified fragment where queries
look. Fragment names are deterministic per (file, chunk): a re-run overwrites, never duplicates.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.output import partition
from pipeline.output.columns import repeated_text
from pipeline.output.layout import FILE_ID, STATE_DIR, table_name
from pipeline.output.partition_guard import TooManyPartitions
from pipeline.output.store import Store, codec
from readers.widening import conform


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
    max_partitions: int = 0
    """A chunk writing more partitions of one table than this stops (0: no limit)."""


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
    _partitions: dict[str, int] = field(default_factory=dict)
    """Partition directories opened per table (for `SinkSpec.max_partitions`)."""

    def write(self, table: str, rows: pa.Table, file_id: str | pa.Array | None = None) -> None:
        """Rows of ``table`` from one file (``file_id``: the writer's own by default), or
        from several (``file_id``: one id per row). ``table`` is the reader's name for it;
        rows go to the table `table_name` makes of it, inside OUT."""
        table = table_name(table)
        schema = self.spec.schemas[table]
        # A table without columns (JSON lines of `{}` only) still has its rows: keep their
        # count, which building a table from no arrays would lose.
        rows = conform(rows, schema) if len(schema) else rows.select([])
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
        if rel and self.spec.max_partitions and key not in self.pending \
                and key not in self.writers:
            count = self._partitions[table] = self._partitions.get(table, 0) + 1
            if count > self.spec.max_partitions:
                raise TooManyPartitions(table, count, self.spec.max_partitions)
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
                                      compression=codec(self.spec.compression),
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
        self._partitions.clear()
        for writer, handle, fragment in self.writers.values():
            # Closing flushes: on a full disk that fails again, and the staged file goes anyway.
            with contextlib.suppress(OSError):
                writer.close()
            with contextlib.suppress(OSError):
                handle.close()
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



"""Staged Parquet fragments: what a chunk task writes, one file per (table, partition).

Hive tables: a chunk task writes its fragments under ``OUT/_chunkmill/staging/<run>/``
(invisible to readers of ``OUT/<table>/**/*.parquet``). The client moves them into place with a
rename only once the chunk is verified, so a crash never leaves a half-written or unverified
fragment where queries look. Fragment names are deterministic per (file, chunk): a re-run
overwrites, never duplicates.

Delta tables: fragments go straight to their final place, ``<table>/<partition>/<chunk id>-
<attempt>.parquet``, in Delta types, with the statistics of their ``add`` action: Delta readers
see only what the table's log lists, so the commit adds them without moving a byte.

Every fragment carries its lineage in its Parquet key-value metadata: ``chunkmill.version``,
``chunkmill.run_id``, ``chunkmill.file_ids`` (JSON list of the source files whose rows it
holds) and ``chunkmill.partition`` (JSON of its partition values, uncut).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output import partition
from pipeline.output.columns import repeated_id, repeated_text
from pipeline.output.layout import FILE_ID, STATE_DIR, table_name
from pipeline.output.partition_guard import TooManyPartitions
from pipeline.output.store import Store, codec
from readers._compute import call
from readers.widening import conform


def version() -> str:
    """chunkmill's installed version (recorded in every fragment)."""
    try:
        return importlib_metadata.version("chunkmill")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


@dataclass(slots=True)
class Fragment:
    """One staged Parquet file of one chunk: where it is, where it goes, what it holds."""

    table: str
    partition: str
    staged: str
    final: str
    rows: int
    bytes: int = 0
    values: dict[str, str | None] | None = None
    """Delta tables: the fragment's ``partitionValues`` (Delta's text of each value)."""
    stats: str = ""
    """Delta tables: the ``stats`` JSON of its ``add`` action."""
    mtime: int = 0
    """Delta tables: when it was written, in ms since the epoch."""


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
    table_format: str = "hive"
    version: str = field(default_factory=version)
    _delta: dict[str, pa.Schema] = field(default_factory=dict)

    @property
    def delta(self) -> bool:
        return self.table_format == "delta"

    def delta_schema(self, table: str) -> pa.Schema:
        """The Delta table's columns (in Delta types) for ``table``'s planned schema."""
        if table not in self._delta:
            from pipeline.output.delta import table_schema

            self._delta[table] = table_schema(self.schemas[table])
        return self._delta[table]


@dataclass
class FragmentWriter:
    """Writes one chunk's pieces to staged fragments, one per (table, partition directory)."""

    spec: SinkSpec
    chunk_id: str
    file_id: str
    writers: dict[tuple[str, str], tuple[pq.ParquetWriter, Any, Fragment]] = field(
        default_factory=dict)
    pending: dict[tuple[str, str], list[pa.Table]] = field(default_factory=dict)
    sources: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """Ids of the files whose rows each fragment holds (its lineage)."""
    values: dict[tuple[str, str], tuple[tuple[str, object], ...]] = field(default_factory=dict)
    """Partition values of each fragment, by column."""
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
        # As dictionary arrays: the Parquet writer dictionary-encodes this column anyway, and
        # from plain text it hashes every row to do so (a third of writing a table of one
        # float column; `_writer` keeps the file's schema saying text).
        if isinstance(file_id, pa.Array):
            ids = file_id  # one per row (a bundle's): `add` encodes them
        elif file_id and file_id != self.file_id:
            ids = self._repeated(file_id, rows.num_rows)
        else:
            ids = self._ids(rows.num_rows)
        rows = rows.append_column(FILE_ID, ids)
        if self.spec.delta:
            from pipeline.output.delta import cast

            rows = cast(rows, self.spec.delta_schema(table))
        own = None if isinstance(file_id, pa.Array) else {file_id or self.file_id}
        columns = self.partition_columns(table)
        for rel, values, part in partition.split_values(rows, columns):
            self.add(table, rel, part, tuple(zip(columns, values, strict=True)), own)

    def _ids(self, count: int) -> pa.Array:
        if self._own_ids is None or len(self._own_ids) < count:
            self._own_ids = self._repeated(self.file_id, max(count, 1 << 16))
        return self._own_ids.slice(0, count)

    def _repeated(self, file_id: str, count: int) -> pa.Array:
        # Delta tables declare the column text and cast to it: a dictionary would be undone.
        return (repeated_text if self.spec.delta else repeated_id)(file_id, count)

    def partition_columns(self, table: str) -> tuple[str, ...]:
        schema = self.spec.schemas[table]
        return self.spec.partition_by if all(
            c in schema.names for c in self.spec.partition_by) else ()

    def add(self, table: str, rel: str, part: pa.Table,
            values: tuple[tuple[str, object], ...] | None = None,
            sources: set[str] | None = None) -> None:
        """Rows already split: no partition columns, ``_file_id`` last; ``values`` are the
        partition's (column, value) pairs, ``sources`` the file ids among the rows (read from
        them if not given)."""
        key = (table, rel)
        if rel and self.spec.max_partitions and key not in self.pending \
                and key not in self.writers:
            count = self._partitions[table] = self._partitions.get(table, 0) + 1
            if count > self.spec.max_partitions:
                raise TooManyPartitions(table, count, self.spec.max_partitions)
        if values is not None:
            self.values.setdefault(key, values)
        if not self.spec.delta:
            part = _dictionary_ids(part)
        if sources is None:
            sources = set(call("unique", part.column(FILE_ID)).to_pylist())
        self.sources.setdefault(key, set()).update(sources)
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
            attempt = uuid.uuid4().hex[:8]
            if self.spec.delta:
                # Invisible until the commit adds it; unique, so a retry never touches a file
                # a reader of an older table version may still read.
                staged = final = store.path(table, rel, f"{self.chunk_id}-{attempt}.parquet")
            else:
                # Unique per attempt: a worker presumed lost cannot scribble over its successor.
                # Flat, not one directory per table: a file of thousands of small datasets
                # made (and later removed) a staging directory for each of them.
                staged = store.path(STATE_DIR, "staging", self.spec.run_id,
                                    f"{self.chunk_id}.{attempt}.{len(self.writers)}.parquet")
                final = store.path(table, rel, f"{self.chunk_id}.parquet")
            handle = store.open_write(staged)
            dictionary = dictionary_columns(first)
            delta = [] if dictionary is True else counting_columns(first, dictionary)
            stored = _as_text(first.schema)
            writer = pq.ParquetWriter(handle, first.schema,
                                      compression=codec(self.spec.compression),
                                      use_dictionary=dictionary,
                                      column_encoding={c: "DELTA_BINARY_PACKED" for c in delta}
                                      or None, store_schema=stored is None)
            if stored is not None:
                writer.add_key_value_metadata(stored)
            self.writers[key] = (writer, handle, Fragment(table, rel, staged, final, 0))
        return self.writers[key][0]

    def close(self) -> list[Fragment]:
        for key in list(self.pending):
            self._flush(key)
        for key, (writer, handle, fragment) in self.writers.items():
            values = self.values.get(key, ())
            writer.add_key_value_metadata({
                "chunkmill.version": self.spec.version, "chunkmill.run_id": self.spec.run_id,
                "chunkmill.file_ids": json.dumps(sorted(self.sources.get(key, ()))),
                "chunkmill.partition": json.dumps({c: v for c, v in values}, default=str)})
            writer.close()
            fragment.bytes = handle.tell()
            handle.close()
        # Durable together: a chunk of many small tables has as many fragments.
        self.spec.store.sync_many([fragment.staged for _, _, fragment in self.writers.values()])
        out = []
        for key, (writer, _, fragment) in self.writers.items():
            values = self.values.get(key, ())
            if self.spec.delta:
                from pipeline.output.delta import file_stats, partition_value

                fragment.values = {c: partition_value(v) for c, v in values}
                fragment.stats = file_stats(writer.writer.metadata,
                                            self.spec.delta_schema(fragment.table))
                fragment.mtime = int(time.time() * 1000)
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


def _dictionary_ids(part: pa.Table) -> pa.Table:
    """``part`` with a text ``_file_id`` dictionary-encoded (see `_as_text`): every part of a
    fragment must have the same schema, and a bundle's ids or carried rows come as text."""
    i = part.schema.get_field_index(FILE_ID)
    if i < 0 or pa.types.is_dictionary(part.schema.field(i).type):
        return part
    column = call("dictionary_encode", part.column(i))
    return part.set_column(i, part.schema.field(i).with_type(column.type), column)


def _as_text(schema: pa.Schema) -> dict[bytes, bytes] | None:
    """The footer metadata pyarrow's writer stores for ``schema`` (its own metadata and its
    Arrow schema under ``ARROW:schema``, as ``store_schema`` writes them), but with a
    dictionary ``_file_id`` said to be text; None if it is text already.

    Readers then see the column as the text it is everywhere else (pyarrow and Polars restore
    Arrow types from ``ARROW:schema``): only the writer sees the dictionary it needs to skip
    hashing every row. Footers come out identical to a text column's (a test compares)."""
    if FILE_ID not in schema.names:
        return None
    i = schema.get_field_index(FILE_ID)
    field_ = schema.field(i)
    if not pa.types.is_dictionary(field_.type):
        return None
    declared = schema.set(i, field_.with_type(field_.type.value_type))
    stored = dict(declared.metadata or {})
    stored[b"ARROW:schema"] = base64.b64encode(declared.serialize().to_pybytes())
    return stored


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
    # Fewer than 4 rows cannot repeat a value 4 times over: no kernel call needed (a file of
    # thousands of one-row datasets asks this once per table).
    few = table.num_rows < 4
    chosen = []
    for name, column in zip(table.column_names, sample.columns, strict=True):
        kind = column.type
        if (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                or pa.types.is_dictionary(kind)):
            chosen.append(name)
        elif pa.types.is_boolean(kind) or pa.types.is_null(kind) or few:
            continue
        elif _repetitive(column):
            chosen.append(name)
    return chosen


def counting_columns(table: pa.Table, dictionary: list[str]) -> list[str]:
    """Integer columns whose first rows count up by one (the ``row`` index of array tables,
    a sequence id): Parquet's DELTA_BINARY_PACKED stores such a run in a few bytes per page,
    where plain pages cost 8 bytes a value to write and then to compress."""
    if table.num_rows < 2:
        return []
    sample = table.slice(0, _DICT_SAMPLE_ROWS)
    chosen = []
    for name, column in zip(table.column_names, sample.columns, strict=True):
        if name in dictionary or not pa.types.is_integer(column.type) or len(column) < 2 \
                or column.null_count:
            continue
        # pyarrow's own kernels: to_numpy() of an Arrow column imports pandas
        steps = call("min_max", call("pairwise_diff", column.combine_chunks())).as_py()
        if steps["min"] == steps["max"] == 1:
            chosen.append(name)
    return chosen


def _repetitive(column: pa.ChunkedArray) -> bool:
    try:
        return call("count_distinct", column).as_py() * 4 <= len(column)
    except pa.ArrowNotImplementedError:
        return True  # a type count_distinct does not hash: the writer's default



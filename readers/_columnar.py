"""What the columnar readers (Parquet, Arrow IPC/Feather, ORC) share.

This module covers:

- the plan: a columnar file is a sequence of *units* its format can read one at a time (Parquet
  row groups, ORC stripes, IPC record batches); consecutive units are grouped into spans of
  about ``chunk_size`` bytes, one chunk each (`group_units`, `ColumnarReader.plan`);
- the read loop (`ColumnarReader.read`): one unit after another, in batches, so memory holds one
  batch (Parquet) or one unit (ORC stripe, IPC batch) at a time; a unit that cannot be decoded
  becomes one ``_errors`` row and the other units of the chunk are kept;
- hive partition columns (`hive_partitions`): ``key=value`` directories between the input root
  and the file come back as columns, typed as pyarrow's hive partitioning infers them (int32 when
  the value is a 32-bit integer, else string; ``__HIVE_DEFAULT_PARTITION__`` is null) and
  percent-decoded. The raw text travels with the description and is cast to the table's
  unified type only when rows are made, so ``05`` stays ``05`` when another file's value makes
  the column a string, and becomes 5 when every file's value is an integer (as in pyarrow);
- types: dictionary columns are decoded to their value type (at any depth), so files that
  dictionary-encode a column and files that do not unify; columns the Parquet writer cannot
  store (unions, ...) are left out and named in the catalog;
- the catalog's key-value metadata, trimmed.

It does not cover format sniffing or footers: each format's module does (`readers.parquet`,
`readers.arrow_ipc`, `readers.orc`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.types as pt

from readers.base import ChunkContext, ChunkSpec, Description, Reader, Source
from readers.errors import ErrorCode, FileChanged, ReaderError, Unsupported, one_line
from readers.options import ReaderOptions
from readers.widening import conform

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_INT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnarOptions(ReaderOptions):
    """Options of the columnar readers."""

    batch_bytes: int = 4 << 20
    """Decoded bytes per batch a Parquet row group is read in (the decoder's buffers hold
    about twice that again), like the text readers' parse blocks."""
    metadata_chars: int = 1024
    """Key-value metadata values longer than this are cut in the catalog."""
    metadata_keys: int = 64
    """Key-value metadata entries kept in the catalog."""


@dataclass(frozen=True, slots=True)
class Span:
    """Consecutive units ``[first, stop)`` read by one chunk."""

    first: int
    stop: int
    offset: int
    """Byte offset of the first unit (estimated where the format does not say: ORC, IPC)."""
    stored: int
    """Stored bytes of the units (estimated likewise)."""
    decoded: int
    """Decoded bytes (Parquet's uncompressed size; the stored size where unknown)."""


@dataclass(frozen=True, slots=True)
class ColumnarSelector:
    """Which units a chunk reads (`ChunkSpec.selector` of the columnar readers)."""

    first: int
    stop: int


@dataclass(frozen=True, slots=True)
class ColumnarState:
    """What describe learnt that chunks need (`Description.state`); small and picklable."""

    spans: tuple[Span, ...]
    partitions: tuple[tuple[str, str | None], ...] = ()
    """Partition columns this file adds: (name, decoded text or None for null)."""
    kind: str = ""
    """The reader's own variant (``file``, ``stream``, ``feather-v1`` for Arrow IPC)."""
    unit_rows: int = 0
    """Rows per unit when units are row blocks of one table (Feather v1)."""


# --- planning ---------------------------------------------------------------------------------
def group_units(sizes: Sequence[int], target: int) -> list[tuple[int, int]]:
    """``[first, stop)`` ranges of consecutive units of about ``target`` bytes (at least one)."""
    spans: list[tuple[int, int]] = []
    first, total = 0, 0
    for i, size in enumerate(sizes):
        if i > first and total + size > target:
            spans.append((first, i))
            first, total = i, 0
        total += size
    if first < len(sizes):
        spans.append((first, len(sizes)))
    return spans


def spans_of(offsets: Sequence[int], stored: Sequence[int], decoded: Sequence[int],
             target: int) -> tuple[Span, ...]:
    """Units grouped by decoded bytes into `Span`s."""
    return tuple(Span(a, b, offsets[a], sum(stored[a:b]), sum(decoded[a:b]))
                 for a, b in group_units(decoded, target))


def even_spans(count: int, start: int, stored: int, target: int) -> tuple[Span, ...]:
    """Spans of ``count`` units whose sizes the format does not expose: assumed equal."""
    if count <= 0:
        return ()
    each = max(1, stored // count)
    return spans_of([start + i * each for i in range(count)], [each] * count, [each] * count,
                    target)


# --- hive partitions --------------------------------------------------------------------------
def hive_partitions(source: Source, roots: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """``key=value`` directory names between the input root and the file, decoded.

    The outermost root holding the file counts (an input ``dump/`` and ``dump/day=1/`` both
    give ``day``). Segments without ``=`` are passed over, as pyarrow does; a key given twice
    keeps its innermost value.
    """
    where = source.local_path if source.local_path is not None else source.url
    inside = [r.rstrip("/") for r in roots if where.startswith(r.rstrip("/") + "/")]
    if not inside:
        return ()
    root = min(inside, key=len)
    found: dict[str, str | None] = {}
    for segment in where[len(root) + 1:].split("/")[:-1]:
        key, eq, value = segment.partition("=")
        if eq and key:
            found[unquote(key)] = None if value == HIVE_NULL else unquote(value)
    return tuple(found.items())


def partition_type(value: str | None) -> pa.DataType:
    """pyarrow's inference for one value: null, int32 when it fits, else string."""
    if value is None:
        return pa.null()
    if _INT.fullmatch(value) and -(2**31) <= int(value) < 2**31:
        return pa.int32()
    return pa.string()


def partition_column(value: str | None, type_: pa.DataType, rows: int) -> pa.Array:
    """One partition value repeated, cast from its text to the table's unified type."""
    if value is None:
        return pa.nulls(rows, type_)
    return pa.repeat(pa.scalar(value, pa.string()).cast(type_), rows)


# --- types ------------------------------------------------------------------------------------
def plain_type(t: pa.DataType) -> pa.DataType:
    """``t`` with every dictionary type (at any depth) replaced by its value type."""
    if pt.is_dictionary(t):
        return plain_type(t.value_type)
    if pt.is_list(t):
        return pa.list_(_plain_field(t.value_field))
    if pt.is_large_list(t):
        return pa.large_list(_plain_field(t.value_field))
    if pt.is_fixed_size_list(t):
        return pa.list_(_plain_field(t.value_field), t.list_size)
    if pt.is_map(t):
        return pa.map_(_plain_field(t.key_field), _plain_field(t.item_field), t.keys_sorted)
    if pt.is_struct(t):
        return pa.struct([_plain_field(t.field(i)) for i in range(t.num_fields)])
    return t


def _plain_field(f: pa.Field) -> pa.Field:
    return f.with_type(plain_type(f.type))


@lru_cache(maxsize=256)
def unstorable(schema: pa.Schema) -> tuple[tuple[str, str], ...]:
    """(column, reason) of the columns chunkmill's Parquet writer cannot store (unions, ...).

    Asked of the writer itself (an empty table written to memory), once per distinct schema.
    """
    import pyarrow.parquet as pq

    def fails(s: pa.Schema) -> str | None:
        try:
            pq.write_table(s.empty_table(), pa.BufferOutputStream())
        except (pa.ArrowException, ValueError, TypeError) as exc:
            return one_line(exc)
        return None

    if fails(schema) is None:
        return ()
    out = []
    for f in schema:
        reason = fails(pa.schema([f]))
        if reason is not None:
            out.append((f.name, reason))
    return tuple(out)


def table_schema(file_schema: pa.Schema, partitions: Sequence[tuple[str, str | None]]
                 ) -> tuple[pa.Schema, dict[str, Any]]:
    """The table schema a file feeds (dictionaries decoded, partition columns appended) and
    catalog notes about it (columns left out, partition keys the file holds itself).

    Raises `Unsupported` for duplicate column names (rows are matched to columns by name).
    """
    names = file_schema.names
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise Unsupported(f"duplicate column names {dupes}: columns are matched by name")
    plain = pa.schema([(f.name, plain_type(f.type)) for f in file_schema])
    notes: dict[str, Any] = {}
    dropped = dict(unstorable(plain))
    if dropped:
        notes["columns_left_out"] = dropped
        plain = pa.schema([f for f in plain if f.name not in dropped])
    fields = list(plain)
    shadowed = [k for k, _ in partitions if k in names]
    if shadowed:
        notes["partition_keys_in_file"] = shadowed  # the file's own column wins
    fields += [pa.field(k, partition_type(v)) for k, v in partitions if k not in names]
    return pa.schema(fields), notes


def assemble(batch: pa.RecordBatch | pa.Table, schema: pa.Schema,
             partitions: Sequence[tuple[str, str | None]]) -> pa.Table:
    """Rows in ``schema``: dictionaries decoded, types widened, partition columns added."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    for key, value in partitions:
        if key in schema.names and key not in table.column_names:
            table = table.append_column(key, partition_column(value, schema.field(key).type,
                                                              table.num_rows))
    return conform(table, schema)


# --- files and errors -------------------------------------------------------------------------
@contextlib.contextmanager
def open_native(source: Source) -> Iterator[pa.NativeFile]:
    """The stored bytes as an Arrow file: local files natively (reads release the GIL without
    calling back into Python), others through fsspec. Refuses a file whose size changed."""
    if source.local_path is not None:
        f: pa.NativeFile = pa.OSFile(source.local_path, "rb")
    else:
        f = pa.PythonFile(source.open_stored(), mode="r")
    with f:
        size = f.size()
        if size != source.size:
            raise FileChanged(f"{source.path}: {size} bytes now, {source.size} when discovered")
        yield f


def data_error(exc: BaseException) -> bool:
    """True when ``exc`` says the file's bytes are bad (a corrupt page, a bad footer), False
    for trouble that may pass (network, memory) and must reach the retry policy."""
    if isinstance(exc, MemoryError | ConnectionError | TimeoutError):
        return False
    if isinstance(exc, pa.ArrowException):
        return True
    # pyarrow's decode and thrift errors are plain OSError without an errno; a failed system
    # call has one, and fsspec's network errors keep their own types.
    return type(exc) is OSError and exc.errno is None


@contextlib.contextmanager
def unreadable(source: Source, error: type[ReaderError], what: str) -> Iterator[None]:
    """Turn a data error inside the block into ``error`` ("<path>: not a readable <what>");
    other exceptions pass on to the retry policy (see `data_error`)."""
    try:
        yield
    except Exception as exc:
        if not data_error(exc):
            raise
        raise error(f"{source.path}: {what} ({one_line(exc)})") from exc


def damage_code(exc: BaseException) -> str:
    """``_errors.error_type`` of a unit that cannot be decoded: our own code, else
    ``BadStructure`` (pyarrow says ArrowInvalid or OSError for what is damage to the file)."""
    return exc.code if isinstance(exc, ReaderError) else ErrorCode.BAD_STRUCTURE


def key_values(meta: Mapping[bytes, bytes] | None, options: ColumnarOptions) -> dict[str, str]:
    """Key-value metadata for the catalog: text, values cut, Arrow's own schema blob left out
    (the catalog's ``schema`` says the same in words)."""
    out: dict[str, str] = {}
    for key, value in (meta or {}).items():
        if key == b"ARROW:schema":
            continue
        if len(out) >= options.metadata_keys:
            out["..."] = f"{len(meta) - len(out)} more keys left out"
            break
        text = value.decode("utf-8", "replace")
        if len(text) > options.metadata_chars:
            text = text[:options.metadata_chars] + f"... ({len(value)} bytes)"
        out[key.decode("utf-8", "replace")] = text
    return out


def schema_words(schema: pa.Schema) -> list[str]:
    """The file's own schema for the catalog: ``name: type`` per column."""
    return [f"{f.name}: {f.type}" for f in schema]


def describe_table(source: Source, file_schema: pa.Schema, options: ReaderOptions,
                   meta: dict[str, Any], state: ColumnarState) -> Description:
    """The `Description` of a one-table columnar file, partition columns included."""
    partitions = hive_partitions(source, options.input_roots)
    schema, notes = table_schema(file_schema, partitions)
    meta["schema"] = schema_words(file_schema)
    if partitions:
        meta["partition"] = dict(partitions)
    meta.update(notes)
    used = tuple((k, v) for k, v in partitions if k not in file_schema.names)
    state = ColumnarState(state.spans, used, state.kind, state.unit_rows)
    return Description({source.table: schema}, meta, state)


# --- the reader -------------------------------------------------------------------------------
class ColumnarReader(Reader):
    """A one-table format read unit by unit; subclasses open the file and decode one unit."""

    options_type = ColumnarOptions
    single_table = True
    # pyarrow decodes outside the GIL and no Python code parses the bytes (a mutation fuzz
    # of each format crashed nothing), so threads in the client's process are fine.
    threads_ok = True
    # One chunk of a small file never needs reconcile: it may share a task and a fragment.
    bundles = True
    unit: ClassVar[str] = "unit"
    """What one unit is called in messages (``row group``, ``stripe``, ``record batch``)."""

    def plan(self, source: Source, description: Description,
             options: ColumnarOptions) -> list[ChunkSpec]:
        state: ColumnarState = description.state
        return [ChunkSpec(source.file_id, i, s.offset, s.stored, source.table,
                          ColumnarSelector(s.first, s.stop), s.decoded)
                for i, s in enumerate(state.spans)]

    def open_units(self, f: pa.NativeFile, source: Source, state: ColumnarState,
                   options: ColumnarOptions) -> Any:
        """The opened file, handed to `batches` (the footer is read again in each task)."""
        raise NotImplementedError

    def batches(self, opened: Any, unit: int, state: ColumnarState,
                options: ColumnarOptions) -> Iterator[pa.RecordBatch]:
        """The rows of one unit, in batches."""
        raise NotImplementedError

    def unit_offset(self, opened: Any, unit: int) -> int | None:
        """Byte offset of a unit in the file, when the format says."""
        return None

    def unit_label(self, state: ColumnarState, unit: int) -> str:
        """A unit as messages name it (``row group 3``)."""
        return f"{self.unit} {unit}"

    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: ColumnarOptions, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        state: ColumnarState = description.state
        selector: ColumnarSelector = chunk.selector
        table = chunk.table or source.table
        schema = description.tables[table]
        with open_native(source) as f:
            opened = self.open_units(f, source, state, options)
            for unit in range(selector.first, selector.stop):
                done = 0
                stream = self.batches(opened, unit, state, options)
                while True:
                    try:
                        batch = next(stream, None)
                    except Exception as exc:
                        if not data_error(exc):
                            raise
                        kept = f", after {done} of its rows" if done else ""
                        ctx.reject(kind="chunk", error_type=damage_code(exc),
                                   byte_offset=self.unit_offset(opened, unit),
                                   message=f"{source.path}: {self.unit_label(state, unit)} "
                                           f"cannot be decoded{kept}: {one_line(exc)}")
                        break
                    if batch is None:
                        break
                    try:
                        rows = assemble(batch, schema, state.partitions)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError,
                            pa.ArrowTypeError) as exc:
                        ctx.reject(kind="chunk", error_type=ErrorCode.TYPE_MISMATCH,
                                   byte_offset=self.unit_offset(opened, unit),
                                   message=f"{source.path}: {self.unit_label(state, unit)}, "
                                           f"its rows {done}-{done + batch.num_rows - 1}: do "
                                           f"not fit the table's types: {one_line(exc)}")
                    else:
                        yield table, rows
                    done += batch.num_rows
                    # let this batch go before the next one is decoded
                    batch = rows = None  # noqa: F841


__all__ = ["ColumnarOptions", "ColumnarReader", "ColumnarSelector", "ColumnarState", "Span",
           "group_units", "spans_of", "even_spans", "hive_partitions", "partition_type",
           "plain_type", "table_schema", "assemble", "open_native", "data_error", "unreadable",
           "key_values", "describe_table", "HIVE_NULL"]

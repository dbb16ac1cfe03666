"""Array -> table machinery shared by the HDF5 and Zarr readers.

Layout: every table has ``row`` (int64, position along axis 0); a 1-D array is one column named
after its path's last part, a 1-D compound array one column per field, an N-D array one
``value`` column holding the other axes flattened as a fixed-size list. Row blocks follow the
array's own storage grid; absurd declared sizes are planned from what is actually stored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from readers._deferred import deferred
from readers.base import RAW_CAP, ChunkContext, ChunkSpec, Description
from readers.errors import ErrorCode, Unsupported, error_code, one_line
from readers.options import ReaderOptions

h5py = deferred("h5py")

@dataclass(frozen=True, slots=True, kw_only=True)
class ArrayOptions(ReaderOptions):
    """Options of the array readers (HDF5, Zarr): limits against absurd or hostile files."""

    max_expansion: int = 1000
    """Declared bytes per stored byte before an array counts as absurd..."""
    dense_limit: int = 1 << 30
    """... and never absurd below this many declared bytes."""
    max_listed_chunks: int = 1_000_000
    """Written chunks listed to plan an absurd array sparsely."""
    max_objects: int = 10_000
    """Links (datasets, groups) walked per file."""
    max_chunks_per_file: int = 200_000
    max_arrays_per_chunk: int = 256
    """Arrays small enough for one row block each are read many to a chunk task (up to this
    many, and about ``chunk_size`` bytes): a file of thousands of tiny datasets would
    otherwise cost a task, a file open and a scheduling round trip per dataset."""
    vlen_read_timeout: float = 10.0
    """Seconds (plus 10 ms per value) an HDF5 file's variable-length attributes and scalars
    may take to read before the file is refused as damaged (see `readers.hdf5.GuardedReads`)."""


_VLEN_ROW_GUESS = 32  # bytes per variable-length element, for block sizing only

#: Errors that may pass on retry: raised to the runner (which retries the chunk), never rejected.
TRANSIENT = (MemoryError, ConnectionError, TimeoutError)


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """How one array becomes one table; small and picklable (travels in `Description.state`)."""

    path: str
    """Path of the array inside the file or store."""
    table: str
    layout: str
    """``column`` (1-D), ``fields`` (1-D compound) or ``value`` (N-D)."""
    index: str
    """Name of the row-index column."""
    nrows: int
    row_bytes: int
    """Decoded bytes of one row (estimated for variable-length types)."""
    grid_rows: int
    """Rows per storage chunk along axis 0 (1 when unchunked)."""
    sparse: bool = False
    """Plan only row blocks that hold a written chunk (absurd declared size)."""
    refused: str | None = None
    """Why the array is not read (an ``_errors`` row instead of rows)."""


@dataclass(frozen=True, slots=True)
class ArraySelector:
    """Which rows of which array a chunk reads (`ChunkSpec.selector` of the array readers)."""

    path: str
    start: int = 0
    stop: int = 0
    refused: str | None = None
    """Why the array is not read: the chunk only writes this reason to ``_errors``."""


@dataclass(frozen=True, slots=True)
class ArrayBatch:
    """Several whole small arrays read by one chunk (`ChunkSpec.selector`, with ``table``
    None: the chunk yields rows of several tables)."""

    parts: tuple[ArraySelector, ...]


def selectors(chunk: ChunkSpec) -> tuple[ArraySelector, ...]:
    """The array slices a chunk reads, whether it reads one or a batch."""
    sel = chunk.selector
    return sel.parts if isinstance(sel, ArrayBatch) else (sel,)


@dataclass(frozen=True, slots=True)
class Unit:
    """One planned row block (or refusal) of one array, before chunks are numbered."""

    selector: ArraySelector
    table: str | None
    length: int
    """Stored bytes expected (`ChunkSpec.length`)."""
    weight: int
    """Decoded bytes (`ChunkSpec.weight`)."""
    whole: bool
    """The block is the whole array (or a refusal): it may share a chunk with others."""


def number_chunks(file_id: str, units: Sequence[Unit], options: ArrayOptions
                  ) -> list[ChunkSpec]:
    """Chunks of a file from its planned units: blocks of big arrays one per chunk, whole
    small arrays (and refusals) packed into batches of up to ``max_arrays_per_chunk``
    arrays and about ``chunk_size`` decoded bytes. Deterministic: same units, same chunks."""
    specs: list[ChunkSpec] = []
    batches: list[list[Unit]] = []
    size = 0
    cap = max(1, options.max_arrays_per_chunk)
    for unit in units:
        if not unit.whole:
            specs.append(ChunkSpec(file_id, len(specs), unit.selector.start, unit.length,
                                   unit.table, unit.selector, unit.weight))
            continue
        if not batches or len(batches[-1]) >= cap or size + unit.weight > options.chunk_size:
            batches.append([])
            size = 0
        batches[-1].append(unit)
        size += unit.weight
    for batch in batches:
        if len(batch) == 1:
            unit = batch[0]
            specs.append(ChunkSpec(file_id, len(specs), unit.selector.start, unit.length,
                                   unit.table, unit.selector, unit.weight))
        else:
            specs.append(ChunkSpec(file_id, len(specs), 0, sum(u.length for u in batch), None,
                                   ArrayBatch(tuple(u.selector for u in batch)),
                                   sum(u.weight for u in batch)))
    return specs


def chunk_description(description: Description, chunk: ChunkSpec) -> Description:
    """What reading ``chunk`` needs of a file's description: its arrays' layouts and table
    schemas, not the whole file's (nor the catalog facts, which stay on the client)."""
    infos: dict[str, ArrayInfo] = description.state["arrays"]
    keep = {s.path: infos[s.path] for s in selectors(chunk) if s.path in infos}
    tables = {i.table: description.tables[i.table] for i in keep.values()
              if i.table in description.tables}
    return Description(tables, {}, {"arrays": keep})


def table_name(path: str) -> str:
    """``/sensors/temp`` -> ``sensors.temp`` (safe as one directory name, never hidden)."""
    name = ".".join(p for p in path.split("/") if p)
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned.lstrip("._") or "data"


def unique_table(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def arrow_type(dt: np.dtype) -> pa.DataType:
    """Arrow type of one element of ``dt`` (raises `Unsupported`)."""
    meta = dt.metadata or {}
    if "ref" in meta:
        raise Unsupported("object references have no column form")
    vlen = meta.get("vlen")
    if vlen in (str, bytes):
        return pa.string()
    if vlen is not None:
        return pa.list_(arrow_type(np.dtype(vlen)))
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return pa.list_(arrow_type(base), math.prod(shape))
    if dt.names:
        return pa.struct([(n, arrow_type(dt.fields[n][0])) for n in dt.names])
    kind = dt.kind
    try:
        if kind == "f" and dt.itemsize > 8:
            return pa.float64()  # long double: see `WIDE_FLOAT_NOTE`
        if kind in "biufmM":
            return pa.from_numpy_dtype(dt.newbyteorder("="))
        if kind == "c" and dt.itemsize in (8, 16, 24, 32):
            part = pa.float32() if dt.itemsize == 8 else pa.float64()
            return pa.struct([("real", part), ("imag", part)])
    except (pa.ArrowNotImplementedError, TypeError) as exc:
        raise Unsupported(f"dtype {dt} has no Arrow equivalent") from exc
    if kind in "SUTO":
        return pa.string()
    if kind == "V":
        return pa.binary(dt.itemsize)
    raise Unsupported(f"dtype {dt} has no Arrow equivalent")


#: Catalog note for long doubles (float128/float96, and complex of them): Parquet has no such
#: type. They become float64, rounded to its 53-bit mantissa; a finite value beyond float64's
#: range would become infinite, so its row is rejected instead (``TypeMismatch``).
WIDE_FLOAT_NOTE = ("long double values are stored as float64 (rounded to 53 bits of mantissa); "
                   "rows holding a finite value beyond float64's range go to _errors")


def has_wide_float(dt: np.dtype) -> bool:
    """True when ``dt`` holds long doubles anywhere (fields, sub-arrays)."""
    if dt.subdtype is not None:
        return has_wide_float(dt.subdtype[0])
    if dt.names:
        return any(has_wide_float(dt.fields[n][0]) for n in dt.names)
    return dt.kind in "fc" and dt.itemsize > (8 if dt.kind == "f" else 16)


def element_shape(dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
    """An array whose elements are themselves arrays (HDF5 ``H5T_ARRAY``, numpy sub-array
    dtype) as an array of their base type with the element axes appended: h5py reads it so."""
    if dtype.subdtype is None:
        return dtype, tuple(shape)
    base, inner = dtype.subdtype
    return element_shape(base, (*shape, *inner))


def array_layout(path: str, dtype: np.dtype, shape: tuple[int, ...]
                 ) -> tuple[pa.Schema, str, str, tuple[int, ...]]:
    """(schema, layout, index column, value shape) of the table an array of ``shape`` makes."""
    leaf = path.rstrip("/").rsplit("/", 1)[-1] or "value"
    if len(shape) > 1:  # a 1-D array of arrays is a list column; N-D ones fold into ``value``
        dtype, shape = element_shape(dtype, shape)
    if len(shape) == 1 and dtype.names and dtype.subdtype is None:
        layout = "fields"
        columns = [(n, arrow_type(dtype.fields[n][0])) for n in dtype.names]
    elif len(shape) == 1:
        layout, columns = "column", [(leaf, arrow_type(dtype))]
    else:
        size = math.prod(shape[1:])
        if size >= 2**31:
            raise Unsupported(f"one row holds {size} values (Arrow lists hold < 2**31)")
        if size == 0:
            raise Unsupported(f"rows hold no values (shape {list(shape)})")
        layout, columns = "value", [("value", pa.list_(arrow_type(dtype), size))]
    index = "_row" if any(n == "row" for n, _ in columns) else "row"
    schema = pa.schema([(index, pa.int64()), *columns])
    return schema, layout, index, tuple(shape[1:])


def row_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    item = _VLEN_ROW_GUESS if dtype.hasobject or dtype.itemsize == 0 else dtype.itemsize
    return max(1, item * math.prod(shape[1:]))


def is_absurd(declared: int, stored: int, options: ArrayOptions) -> bool:
    """True when an array declares far more bytes than its storage could ever hold."""
    return declared > max(options.dense_limit, options.max_expansion * max(stored, 1))


def row_blocks(nrows: int, grid_rows: int, bytes_per_row: int, chunk_size: int,
               present: Sequence[int] | None = None, limit: int | None = None
               ) -> list[tuple[int, int]]:
    """Row ranges along axis 0, whole storage chunks each, about ``chunk_size`` bytes.

    With ``present`` (sorted grid indices along axis 0 that hold data) only runs of those are
    planned. Raises ValueError when more than ``limit`` blocks would be needed.
    """
    grid_rows = max(1, grid_rows)
    per = max(1, chunk_size // max(1, bytes_per_row * grid_rows))  # grid rows per block
    step = per * grid_rows
    if present is None:
        count = -(-nrows // step)
        blocks = [] if limit is not None and count > limit else [
            (a, min(a + step, nrows)) for a in range(0, nrows, step)]
    else:
        blocks, run_start, prev = [], None, None
        for g in [*present, None]:
            if g is not None and prev is not None and g == prev + 1 and g - run_start < per:
                prev = g
                continue
            if run_start is not None:
                blocks.append((run_start * grid_rows, min((prev + 1) * grid_rows, nrows)))
            run_start = prev = g
        blocks = [(a, b) for a, b in blocks if a < b]
        count = len(blocks)
    if limit is not None and count > limit:
        raise Unsupported(f"{nrows} rows would need {count} chunks (limit {limit}); "
                         "raise --chunk-size")
    return blocks


#: Why a row is rejected: bit flags of the per-row masks `convert` returns.
BAD_UTF8 = 1
"""A string value is not UTF-8."""
OUT_OF_RANGE = 2
"""A long double is finite but beyond float64's range."""


def _or(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    return a if b is None else a | b


_NARROW = 64
"""Widths of fixed ``S`` values whose lengths are found one byte position at a time."""


def _fixed_bytes(values: np.ndarray) -> pa.Array:
    """Fixed-width ``S`` values as binary without their NUL padding (embedded NULs kept)."""
    n, width = len(values), values.dtype.itemsize
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(n, width)
    if width <= _NARROW:
        # A value ends after its last non-NUL byte: one pass per byte position costs less
        # than a 2-D mask, its reversal and argmax (0.20 against 0.32 s for 4 M names of 8).
        lengths = np.zeros(n, dtype=np.int64)
        for j in range(width):
            np.copyto(lengths, j + 1, where=raw[:, j] != 0)
    else:
        nonzero = raw != 0
        lengths = np.where(nonzero.any(axis=1), width - np.argmax(nonzero[:, ::-1], axis=1), 0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # no padding anywhere: the values are the buffer as it is
    data = raw.reshape(-1) if offsets[-1] == n * width else \
        raw[np.arange(width) < lengths[:, None]]
    if offsets[-1] < 2**31:
        return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                      pa.py_buffer(data)])
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets),
                                                        pa.py_buffer(data)])


def _valid_utf8(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    try:
        bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _strings(values: np.ndarray) -> tuple[pa.Array, np.ndarray | None]:
    if values.dtype.kind == "S":
        arr = _fixed_bytes(values)
    elif values.dtype.kind == "O":
        try:
            arr = pa.array(values, from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # str and bytes mixed
            arr = pa.array([v.encode() if isinstance(v, str) else v for v in values],
                           type=pa.binary())
    else:
        return pa.array(values, type=pa.string()), None
    try:
        return arr.cast(pa.string()), None
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # rare: find the rows that are not UTF-8
        items = arr.to_pylist()
        bad = np.fromiter((not _valid_utf8(v) for v in items), bool, len(items))
        kept = pa.array([None if b else v for v, b in zip(items, bad, strict=True)],
                        type=pa.binary())
        return kept.cast(pa.string()), bad.astype(np.uint8) * BAD_UTF8


def _wide_floats(values: np.ndarray) -> tuple[pa.Array, np.ndarray | None]:
    """Long doubles as float64 (see `WIDE_FLOAT_NOTE`); finite values that overflow are bad."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(np.float64)
    overflow = np.isinf(out) & np.isfinite(values)
    if overflow.any():
        out[overflow] = 0.0
        return pa.array(out), overflow.astype(np.uint8) * OUT_OF_RANGE
    return pa.array(out), None


def convert(values: np.ndarray) -> tuple[pa.Array, np.ndarray | None]:
    """Arrow array of ``values`` along axis 0, and per row the flags (`BAD_UTF8`,
    `OUT_OF_RANGE`) of values it could not hold (None when every row is good)."""
    n = len(values)
    if values.ndim > 1:
        size = math.prod(values.shape[1:])
        inner, bad = convert(values.reshape(n * size))
        if bad is not None:
            bad = np.bitwise_or.reduce(bad.reshape(n, size), axis=1)
        return pa.FixedSizeListArray.from_arrays(inner, size), bad
    dt = values.dtype
    vlen = (dt.metadata or {}).get("vlen")
    if dt.names:
        children, bad = [], None
        for name in dt.names:
            child, child_bad = convert(values[name])
            children.append(child)
            bad = _or(bad, child_bad)
        return pa.StructArray.from_arrays(children, names=list(dt.names)), bad
    if vlen is not None and vlen not in (str, bytes):
        return pa.array(list(values), type=arrow_type(dt)), None
    if dt.kind in "SOUT":
        return _strings(values)
    if dt.kind == "f" and dt.itemsize > 8:
        return _wide_floats(values)
    if dt.kind == "c":
        real, real_bad = convert(np.ascontiguousarray(values.real))
        imag, imag_bad = convert(np.ascontiguousarray(values.imag))
        return (pa.StructArray.from_arrays([real, imag], names=["real", "imag"]),
                _or(real_bad, imag_bad))
    if dt.kind == "V":
        data = pa.py_buffer(np.ascontiguousarray(values).view(np.uint8))
        return pa.Array.from_buffers(pa.binary(dt.itemsize), n, [None, data]), None
    if not dt.isnative:
        values = values.astype(dt.newbyteorder("="))
    return numeric(values), None


def numeric(values: np.ndarray) -> pa.Array:
    """A 1-D numpy array as Arrow; plain numbers over their own buffer. (``pa.array`` of any
    ndarray imports pandas to ask whether it is categorical: about a second of every worker's
    first chunk.)"""
    values = np.ascontiguousarray(values)
    if values.ndim == 1 and values.dtype.kind in "iuf" and values.dtype.isnative:
        return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values),
                                     [None, pa.py_buffer(values)])
    return pa.array(values)


#: Rows per yielded table (one Parquet row group): keeps the per-piece columns the sink adds
#: (``row``, ``_file_id``) small however many rows a block holds.
PIECE_ROWS = 1 << 20


def to_columns(values: np.ndarray, info: ArrayInfo, schema: pa.Schema
               ) -> tuple[list[pa.Array], np.ndarray | None]:
    """Data columns of a block in ``schema``'s types, and the mask of rows with bad strings."""
    n = len(values)
    if info.layout == "fields":
        converted = [convert(values[name]) for name in values.dtype.names]
    elif info.layout == "column":
        converted = [convert(values)]
    else:
        converted = [convert(values.reshape(n, -1))]
    bad = None
    for _, mask in converted:
        bad = _or(bad, mask)
    arrays = [a if a.type == f.type else a.cast(f.type)
              for (a, _), f in zip(converted, list(schema)[1:], strict=True)]
    return arrays, bad if bad is not None and bad.any() else None


def to_tables(arrays: list[pa.Array], bad: np.ndarray | None, schema: pa.Schema, start: int,
              piece_rows: int = PIECE_ROWS) -> Iterator[pa.Table]:
    """Tables of at most ``piece_rows`` rows with the ``row`` index; bad-string rows dropped."""
    n = len(arrays[0]) if arrays else 0
    for lo in range(0, n, piece_rows):
        hi = min(lo + piece_rows, n)
        row = numeric(np.arange(start + lo, start + hi, dtype=np.int64))
        table = pa.Table.from_arrays([row, *(a.slice(lo, hi - lo) for a in arrays)],
                                     schema=schema)
        if bad is not None and bad[lo:hi].any():
            table = table.filter(pa.array(bad[lo:hi] == 0))
        yield table


def reject_rows(ctx: ChunkContext, values: np.ndarray, bad: np.ndarray, start: int, where: str,
                byte_offset: int | None, row_bytes_: int) -> None:
    """One ``_errors`` row per row holding a value no column can hold (see `convert`)."""
    for i in np.flatnonzero(bad):
        item = values[i]
        raw = item if isinstance(item, bytes) else (
            repr(item).encode() if values.dtype.hasobject else np.asarray(item).tobytes())
        if bad[i] & BAD_UTF8:
            code, why = ErrorCode.INVALID_UTF8, "string value is not valid UTF-8"
        else:
            code, why = ErrorCode.TYPE_MISMATCH, "long double value beyond float64's range"
        ctx.reject(error_type=code, raw=raw[:RAW_CAP],
                   byte_offset=None if byte_offset is None else byte_offset + int(i) * row_bytes_,
                   message=f"{where} row {start + int(i)}: {why}")


class _Undecodable(Exception):  # noqa: N818 - a wrapper, never raised out of read_rows
    """The storage library could not give a block's values (``cause`` says why)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def read_rows(fetch: Callable[[int, int], np.ndarray], info: ArrayInfo, schema: pa.Schema,
              a: int, b: int, ctx: ChunkContext, where: str,
              offset_of: Callable[[int], int | None] = lambda row: None,
              record_offsets: bool = False) -> Iterator[pa.Table]:
    """Rows ``a:b`` as tables; a block that fails is retried one storage chunk at a time.

    So one damaged chunk costs only its own rows: each chunk that still fails becomes one
    ``chunk`` row in ``_errors`` at its byte offset (when known). Whatever the storage library
    raises while decoding stored bytes (a codec's RuntimeError, ...) is a damaged chunk
    (``CorruptStream``), not an internal error; a failure converting decoded values keeps its
    own code.
    """
    try:
        try:
            values = fetch(a, b)
        except TRANSIENT:
            raise
        except Exception as exc:
            raise _Undecodable(exc) from exc
        arrays, bad = to_columns(values, info, schema)
    except TRANSIENT:
        raise  # the runner retries the whole chunk after a backoff
    except Exception as exc:
        if b - a > info.grid_rows:
            for start in range(a, b, info.grid_rows):
                yield from read_rows(fetch, info, schema, start, min(start + info.grid_rows, b),
                                     ctx, where, offset_of, record_offsets)
            return
        cause = exc.cause if isinstance(exc, _Undecodable) else exc
        code = error_code(cause)
        if isinstance(exc, _Undecodable) and code == ErrorCode.INTERNAL:
            code = ErrorCode.CORRUPT_STREAM
        ctx.reject(kind="chunk", error_type=code, byte_offset=offset_of(a),
                   message=f"{where} rows {a}:{b}: {one_line(cause)}")
        return
    if bad is not None:
        reject_rows(ctx, values, bad, a, where, offset_of(a) if record_offsets else None,
                    info.row_bytes)
    del values  # the arrays keep the buffer alive, zero-copy
    yield from to_tables(arrays, bad, schema, a)


def json_safe(value: Any, depth: int = 0) -> Any:
    """Attribute or fill value as JSON: bytes decoded, small arrays listed, big ones summarised."""
    if depth > 8:
        return _trim(str(value))
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _trim(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _trim(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, complex):
        return {"real": json_safe(value.real), "imag": json_safe(value.imag)}
    if isinstance(value, np.void):
        if value.dtype.names:
            return {n: json_safe(value[n], depth + 1) for n in value.dtype.names}
        return value.tobytes()[:256].hex()
    if isinstance(value, np.generic):
        return json_safe(value.item(), depth + 1)
    if isinstance(value, np.ndarray):
        if value.size <= 64:
            return [json_safe(v, depth + 1) for v in value.reshape(-1)] if value.ndim <= 1 else \
                [json_safe(v, depth + 1) for v in value]
        head = value.reshape(-1)[:16]
        return {"dtype": str(value.dtype), "shape": list(value.shape), "truncated": True,
                "head": [json_safe(v, depth + 1) for v in head]}
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {str(k): json_safe(v, depth + 1) for k, v in items[:256]}
        if len(items) > 256:
            out["..."] = f"{len(items) - 256} more"
        return out
    if isinstance(value, list | tuple | set):
        items = list(value)
        out_list = [json_safe(v, depth + 1) for v in items[:64]]
        return out_list + ([f"... {len(items) - 64} more"] if len(items) > 64 else [])
    if isinstance(value, h5py.Empty):
        return None
    return _trim(str(value))


def _trim(text: str, limit: int = 1024) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... (+{len(text) - limit} chars)"


def within(path: str, roots: Sequence[str]) -> bool:
    """True when ``path`` (symlinks resolved) lies in one of the local ``roots``."""
    real = os.path.realpath(path)
    for root in roots:
        if "://" in root:
            continue
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False

"""HDF5 reader: every dataset becomes a table named by its path; h5py reads row blocks.

Layout of array tables (shared with `readers.zarr`):

- Table name: the dataset path with ``/`` turned into ``.`` (``/sensors/temp`` -> ``sensors.temp``);
  characters outside ``[A-Za-z0-9_.-]`` become ``_``; leading ``.``/``_`` are dropped so no table
  can land in a hidden or reserved directory (``_errors``); clashes get a ``_2``, ``_3`` suffix.
- Every table has ``row`` (int64, the index along axis 0; ``_row`` if a data column is called
  ``row``). A 1-D dataset adds one column named after its last path component; a 1-D compound
  dataset one column per field; an N-D dataset one column ``value``: a fixed-size list holding
  the remaining axes flattened in C order (the catalog records ``value_shape``).
- Types: fixed ``S`` (NUL padding trimmed), variable-length and numpy strings -> string, and a
  value that is not UTF-8 rejects its row into ``_errors``; complex -> struct<real, imag>;
  opaque -> fixed_size_binary; enum -> its integer base (mapping in the catalog); sub-array
  fields -> fixed-size list; nested compound -> struct; ragged sequences -> list.
- 0-d (scalar) and empty datasets go to the catalog metadata (``scalars``), not to tables.

Planning: row blocks along axis 0, a multiple of the storage chunk's rows, about ``chunk_size``
bytes of decoded data each (never less than one chunk row). A dataset declaring more than
``max_expansion`` times the file size and more than ``dense_limit`` bytes is *absurd*: when it is
chunked only row blocks holding a written chunk are planned (unwritten chunks hold the fill value
alone; the catalog says ``planning: sparse``); otherwise it is refused. Below that bound
unwritten chunks come out as fill values, which is what the array holds.

Refused with an ``_errors`` row (the rest of the file is still read): external links leaving
``input_roots`` (links are never followed; inside links are listed in ``links``), virtual datasets
whose sources are missing or outside ``input_roots``, datasets stored in external raw files,
datasets needing an unavailable filter, unsupported types (references).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import pyarrow as pa

from readers.base import RAW_CAP, ChunkContext, ChunkSpec, Description, Reader, Source

MAGIC = b"\x89HDF\r\n\x1a\n"

DEFAULTS: dict[str, Any] = {
    "chunk_size": 64 << 20,
    "max_expansion": 1000,          # declared bytes per file byte before an array is absurd
    "dense_limit": 1 << 30,         # ... and never absurd below this many declared bytes
    "max_listed_chunks": 1_000_000,  # written chunks listed to plan an absurd array sparsely
    "max_objects": 10_000,          # links walked per file
    "max_chunks_per_file": 200_000,
}
_VLEN_ROW_GUESS = 32  # bytes per variable-length element, for block sizing only
_SCALAR_READ_LIMIT = 64 << 10
_ATTR_READ_LIMIT = 1 << 20
_NETCDF_DIM = "This is a netCDF dimension but not a netCDF variable"


def opt(options: Mapping[str, Any], name: str) -> Any:
    value = options.get(name)
    return DEFAULTS[name] if value is None else value


#: Errors that may pass on retry: raised to the runner (which retries the chunk), never rejected.
TRANSIENT = (MemoryError, ConnectionError, TimeoutError)


class Unsupported(ValueError):
    """A dtype or storage layout chunkmill cannot turn into Arrow columns."""


class HDF5FileError(OSError):
    """The file cannot be opened as HDF5 (truncated, corrupt, not HDF5); names the file."""


# --- shared array layout (used by readers.zarr too) ------------------------------------------


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
        if kind in "biufmM":
            return pa.from_numpy_dtype(dt.newbyteorder("="))
        if kind == "c" and dt.itemsize in (8, 16):
            part = pa.float32() if dt.itemsize == 8 else pa.float64()
            return pa.struct([("real", part), ("imag", part)])
    except (pa.ArrowNotImplementedError, TypeError) as exc:
        raise Unsupported(f"dtype {dt} has no Arrow equivalent") from exc
    if kind in "SUTO":
        return pa.string()
    if kind == "V":
        return pa.binary(dt.itemsize)
    raise Unsupported(f"dtype {dt} has no Arrow equivalent")


def array_layout(path: str, dtype: np.dtype, shape: tuple[int, ...]
                 ) -> tuple[pa.Schema, str, str, tuple[int, ...]]:
    """(schema, layout, index column, value shape) of the table an array of ``shape`` makes."""
    leaf = path.rstrip("/").rsplit("/", 1)[-1] or "value"
    if len(shape) == 1 and dtype.names and dtype.subdtype is None:
        layout = "fields"
        columns = [(n, arrow_type(dtype.fields[n][0])) for n in dtype.names]
    elif len(shape) == 1:
        layout, columns = "column", [(leaf, arrow_type(dtype))]
    else:
        size = math.prod(shape[1:])
        if size >= 2**31:
            raise Unsupported(f"one row holds {size} values (Arrow lists hold < 2**31)")
        layout, columns = "value", [("value", pa.list_(arrow_type(dtype), size))]
    index = "_row" if any(n == "row" for n, _ in columns) else "row"
    schema = pa.schema([(index, pa.int64()), *columns])
    return schema, layout, index, tuple(shape[1:])


def row_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    item = _VLEN_ROW_GUESS if dtype.hasobject or dtype.itemsize == 0 else dtype.itemsize
    return max(1, item * math.prod(shape[1:]))


def is_absurd(declared: int, stored: int, options: Mapping[str, Any]) -> bool:
    """True when an array declares far more bytes than its storage could ever hold."""
    return declared > max(int(opt(options, "dense_limit")),
                          int(opt(options, "max_expansion")) * max(stored, 1))


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
        raise ValueError(f"{nrows} rows would need {count} chunks (limit {limit}); "
                         "raise --chunk-size")
    return blocks


def _or(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    return a if b is None else a | b


def _fixed_bytes(values: np.ndarray) -> pa.Array:
    """Fixed-width ``S`` values as binary without their NUL padding (embedded NULs kept)."""
    n, width = len(values), values.dtype.itemsize
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(n, width)
    nonzero = raw != 0
    lengths = np.where(nonzero.any(axis=1), width - np.argmax(nonzero[:, ::-1], axis=1), 0)
    data = raw[np.arange(width) < lengths[:, None]]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
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
        return kept.cast(pa.string()), bad


def convert(values: np.ndarray) -> tuple[pa.Array, np.ndarray | None]:
    """Arrow array of ``values`` along axis 0, and a mask of rows holding undecodable strings."""
    n = len(values)
    if values.ndim > 1:
        size = math.prod(values.shape[1:])
        inner, bad = convert(values.reshape(n * size))
        if bad is not None:
            bad = bad.reshape(n, size).any(axis=1)
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
    if dt.kind == "c":
        real, imag = convert(np.ascontiguousarray(values.real))[0], convert(
            np.ascontiguousarray(values.imag))[0]
        return pa.StructArray.from_arrays([real, imag], names=["real", "imag"]), None
    if dt.kind == "V":
        data = pa.py_buffer(np.ascontiguousarray(values).view(np.uint8))
        return pa.Array.from_buffers(pa.binary(dt.itemsize), n, [None, data]), None
    if not dt.isnative:
        values = values.astype(dt.newbyteorder("="))
    return pa.array(np.ascontiguousarray(values)), None


def to_table(values: np.ndarray, info: ArrayInfo, schema: pa.Schema, start: int
             ) -> tuple[pa.Table, np.ndarray | None]:
    """Rows ``start..`` of an array as a table (bad-string rows dropped, their mask returned)."""
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
    arrays = [pa.array(np.arange(start, start + n, dtype=np.int64)), *(a for a, _ in converted)]
    table = pa.Table.from_arrays(arrays, names=schema.names)
    if table.schema != schema:
        table = table.cast(schema)
    if bad is not None and bad.any():
        table = table.filter(pa.array(~bad))
    return table, bad if bad is not None and bad.any() else None


def reject_rows(ctx: ChunkContext, values: np.ndarray, bad: np.ndarray, start: int, where: str,
                byte_offset: int | None, row_bytes_: int) -> None:
    """One ``_errors`` row per row holding a string that is not UTF-8."""
    for i in np.flatnonzero(bad):
        item = values[i]
        raw = item if isinstance(item, bytes) else (
            repr(item).encode() if values.dtype.hasobject else np.asarray(item).tobytes())
        ctx.reject(error_type="InvalidUTF8", raw=raw[:RAW_CAP],
                   byte_offset=None if byte_offset is None else byte_offset + int(i) * row_bytes_,
                   message=f"{where} row {start + int(i)}: string value is not valid UTF-8")


def read_rows(fetch: Callable[[int, int], np.ndarray], info: ArrayInfo, schema: pa.Schema,
              a: int, b: int, ctx: ChunkContext, where: str,
              offset_of: Callable[[int], int | None] = lambda row: None,
              record_offsets: bool = False) -> Iterator[pa.Table]:
    """Rows ``a:b`` as tables; a block that fails is retried one storage chunk at a time.

    So one damaged chunk costs only its own rows: each chunk that still fails becomes one
    ``chunk`` row in ``_errors`` at its byte offset (when known).
    """
    try:
        values = fetch(a, b)
        table, bad = to_table(values, info, schema, a)
    except TRANSIENT:
        raise  # the runner retries the whole chunk after a backoff
    except Exception as exc:
        if b - a > info.grid_rows:
            for start in range(a, b, info.grid_rows):
                yield from read_rows(fetch, info, schema, start, min(start + info.grid_rows, b),
                                     ctx, where, offset_of, record_offsets)
            return
        ctx.reject(kind="chunk", error_type=type(exc).__name__, byte_offset=offset_of(a),
                   message=f"{where} rows {a}:{b}: {_first_line(exc)}")
        return
    if bad is not None:
        reject_rows(ctx, values, bad, a, where, offset_of(a) if record_offsets else None,
                    info.row_bytes)
    del values
    yield table


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


# --- HDF5 -------------------------------------------------------------------------------------


def _is_local(source: Source) -> bool:
    return source.url.startswith("file://")


@contextlib.contextmanager
def open_hdf5(source: Source) -> Iterator[h5py.File]:
    """The file opened read-only; local files by path (VDS sources resolve against its dir)."""
    handle = None
    try:
        if _is_local(source):
            f = h5py.File(source.path, "r", locking=False)
        else:
            handle = source.open()
            f = h5py.File(handle, "r")
    except OSError as exc:
        if handle is not None:
            handle.close()
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        what = "truncated HDF5 file" if "truncated" in text else "not a readable HDF5 file"
        raise HDF5FileError(f"{source.path}: {what} ({text})") from exc
    try:
        yield f
    finally:
        f.close()
        if handle is not None:
            handle.close()


def _attrs(obj: Any, limit: int = 256) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        names = list(obj.attrs)
    except Exception as exc:  # damaged attribute storage must not fail the whole file
        return {"...": f"<unreadable attributes: {exc}>"}
    for name in names[:limit]:
        try:
            size = obj.attrs.get_id(name).get_storage_size()
            out[name] = (f"<{size} bytes, not read>" if size > _ATTR_READ_LIMIT
                         else json_safe(obj.attrs[name]))
        except Exception as exc:
            out[name] = f"<unreadable: {_first_line(exc)}>"
    if len(names) > limit:
        out["..."] = f"{len(names) - limit} more attributes"
    return out


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


_LAYOUTS = {h5py.h5d.COMPACT: "compact", h5py.h5d.CONTIGUOUS: "contiguous",
            h5py.h5d.CHUNKED: "chunked", h5py.h5d.VIRTUAL: "virtual"}


def _filters(dcpl: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(filter pipeline, names of filters this h5py cannot decode)."""
    pipeline, missing = [], []
    for i in range(dcpl.get_nfilters()):
        code, _flags, values, name = dcpl.get_filter(i)
        label = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        pipeline.append({"id": int(code), "name": label, "options": [int(v) for v in values]})
        if not h5py.h5z.filter_avail(code):
            missing.append(f"{label or 'filter'} (id {code})")
    return pipeline, missing


def _virtual_problem(f: h5py.File, ds: h5py.Dataset, source: Source,
                     roots: Sequence[str]) -> tuple[str | None, int]:
    """(why a virtual dataset must be refused or None, bytes of its source files)."""
    if os.environ.get("HDF5_VDS_PREFIX"):
        return "HDF5_VDS_PREFIX is set: cannot tell where its sources resolve", 0
    checked: dict[tuple[str, str], None] = {}
    nbytes = 0
    for m in ds.virtual_sources():
        key = (m.file_name, m.dset_name)
        if key in checked:
            continue
        checked[key] = None
        if m.file_name == ".":
            if not isinstance(f.get(m.dset_name), h5py.Dataset):
                return f"virtual source {m.dset_name!r} is missing from this file", 0
            continue
        if not _is_local(source):
            return f"virtual source file {m.file_name!r} cannot be resolved for a remote file", 0
        if "%" in m.file_name:
            return f"virtual source pattern {m.file_name!r} is not supported", 0
        path = os.path.join(os.path.dirname(source.path), m.file_name)
        if not within(path, roots):
            return f"virtual source {m.file_name!r} lies outside the input directories", 0
        if not os.path.isfile(path):
            return f"virtual source file {m.file_name!r} is missing", 0
        try:
            with h5py.File(path, "r", locking=False) as sf:
                target = sf.get(m.dset_name)
                if not isinstance(target, h5py.Dataset):
                    return f"virtual source {m.file_name}:{m.dset_name} is missing", 0
                if target.is_virtual:
                    return f"virtual source {m.file_name}:{m.dset_name} is itself virtual", 0
        except OSError as exc:
            return f"virtual source {m.file_name!r} cannot be opened ({_first_line(exc)})", 0
        nbytes += os.path.getsize(path)
    return None, nbytes


class HDF5Reader(Reader):
    """HDF5 (and netCDF-4) files: one table per dataset, row blocks along axis 0."""

    name = "hdf5"
    suffixes = (".h5", ".hdf5", ".he5", ".nc")

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        # The superblock sits at 0 or after a user block of 512, 1024, 2048, ... bytes.
        offset = 0
        while offset + len(MAGIC) <= len(head):
            if head[offset:offset + len(MAGIC)] == MAGIC:
                return 90
            offset = 512 if offset == 0 else offset * 2
        if path.lower().endswith((".h5", ".hdf5", ".he5")):
            return 10  # no magic in the head: a bigger user block, or damage; h5py will say
        return 0

    # --- describe -------------------------------------------------------------------------------
    def describe(self, source: Source, options: Mapping[str, Any]) -> Description:
        roots = list(options.get("input_roots") or ()) or [os.path.dirname(source.path)]
        limit = int(opt(options, "max_objects"))
        meta: dict[str, Any] = {"datasets": {}, "scalars": {}, "groups": {}, "links": {},
                                "refused": {}}
        tables: dict[str, pa.Schema] = {}
        infos: dict[str, ArrayInfo] = {}
        with open_hdf5(source) as f:
            meta["userblock_size"] = int(f.userblock_size)
            meta["attributes"] = _attrs(f)
            links: list[tuple[str, Any]] = []

            def visit(name: str, link: Any) -> bool | None:
                links.append((name, link))
                return True if len(links) > limit else None

            try:
                f.visititems_links(visit)
            except Exception as exc:  # a damaged group structure: nothing can be trusted
                raise HDF5FileError(f"{source.path}: damaged HDF5 structure "
                                    f"({_first_line(exc)})") from exc
            if len(links) > limit:
                raise ValueError(f"{source.path}: more than {limit} objects; not supported")
            seen: set[Any] = set()
            taken: set[str] = set()
            for name, link in links:
                path = "/" + name
                if isinstance(link, h5py.SoftLink):
                    meta["links"][path] = {"soft": link.path}
                elif isinstance(link, h5py.ExternalLink):
                    self._external(source, path, link, roots, meta, infos)
                elif isinstance(link, h5py.HardLink):
                    try:
                        self._hard_link(f, source, path, roots, options, meta, tables, infos,
                                        seen, taken)
                    except Exception as exc:  # a damaged header refuses this object only
                        reason = f"cannot read its header: {_first_line(exc)}"
                        meta["refused"][path] = reason
                        infos[path] = ArrayInfo(path, "", "column", "row", 0, 1, 1,
                                                refused=reason)
        return Description(tables, meta, {"arrays": infos})

    def _hard_link(self, f: h5py.File, source: Source, path: str, roots: Sequence[str],
                   options: Mapping[str, Any], meta: dict[str, Any],
                   tables: dict[str, pa.Schema], infos: dict[str, ArrayInfo], seen: set[Any],
                   taken: set[str]) -> None:
        obj = f.get(path)
        key = self._object_key(obj)
        if key in seen:  # a second hard link to an object: read it once, under its first name
            meta["links"][path] = {"hard_link_to_object_seen_earlier": True}
            return
        seen.add(key)
        if isinstance(obj, h5py.Group):
            attrs = _attrs(obj)
            if attrs:
                meta["groups"][path] = attrs
        elif isinstance(obj, h5py.Dataset):
            self._dataset(f, source, path, obj, roots, options, meta, tables, infos, taken)

    @staticmethod
    def _object_key(obj: Any) -> Any:
        try:
            info = h5py.h5o.get_info(obj.id)
            return (info.fileno, info.addr)
        except Exception:  # never dedupe what we cannot identify
            return id(obj)

    @staticmethod
    def _external(source: Source, path: str, link: h5py.ExternalLink, roots: Sequence[str],
                  meta: dict[str, Any], infos: dict[str, ArrayInfo]) -> None:
        target = link.filename
        inside = _is_local(source) and within(
            os.path.join(os.path.dirname(source.path), target), roots)
        meta["links"][path] = {"external": target, "path": link.path, "followed": False,
                               "inside_input_roots": inside}
        if not inside:
            reason = (f"external link to {target}:{link.path} leaves the input directories; "
                      "not followed")
            meta["refused"][path] = reason
            infos[path] = ArrayInfo(path, "", "column", "row", 0, 1, 1, refused=reason)

    def _dataset(self, f: h5py.File, source: Source, path: str, ds: h5py.Dataset,
                 roots: Sequence[str], options: Mapping[str, Any], meta: dict[str, Any],
                 tables: dict[str, pa.Schema], infos: dict[str, ArrayInfo],
                 taken: set[str]) -> None:
        shape = ds.shape
        attrs = _attrs(ds)
        if shape is None or shape == () or str(attrs.get("NAME", "")).startswith(_NETCDF_DIM):
            meta["scalars"][path] = self._scalar(ds, attrs)
            return
        dcpl = ds.id.get_create_plist()
        layout = _LAYOUTS.get(dcpl.get_layout(), "unknown")
        pipeline, missing = _filters(dcpl)
        storage = int(ds.id.get_storage_size())
        entry: dict[str, Any] = {
            "shape": list(shape), "dtype": str(ds.dtype), "layout": layout,
            "chunks": list(ds.chunks) if ds.chunks else None, "compression": ds.compression,
            "compression_opts": json_safe(ds.compression_opts), "filters": pipeline,
            "storage_bytes": storage, "attributes": attrs,
        }
        enum = (ds.dtype.metadata or {}).get("enum")
        if enum:
            entry["enum"] = json_safe(enum)
        with contextlib.suppress(Exception):  # some types have no readable fill value
            entry["fillvalue"] = json_safe(ds.fillvalue)
        meta["datasets"][path] = entry
        nrows, per_row = int(shape[0]), row_bytes(ds.dtype, shape)
        grid = int(ds.chunks[0]) if ds.chunks else 1
        declared = nrows * per_row
        reason, stored = None, storage
        try:
            schema, kind, index, value_shape = array_layout(path, ds.dtype, shape)
        except Unsupported as exc:
            reason = str(exc)
        if reason is None and missing:
            reason = f"needs filter(s) this h5py cannot decode: {', '.join(missing)}"
        if reason is None and dcpl.get_external_count() > 0:
            reason = "data lives in external raw files; not supported"
        if reason is None and layout == "virtual":
            reason, stored = _virtual_problem(f, ds, source, roots)
        sparse = False
        if reason is None and is_absurd(declared, max(stored, source.size), options):
            if layout == "chunked":
                sparse = True
            else:
                reason = (f"declares {declared} bytes but holds {stored} ({layout}); "
                          "refused as absurd")
        if reason is None and layout == "contiguous" and storage:
            offset = ds.id.get_offset()
            if offset is not None and offset + storage > source.size:
                reason = (f"data at bytes {offset}..{offset + storage} lies beyond the end "
                          f"of the file ({source.size} bytes): truncated")
        if reason is not None:
            meta["refused"][path] = reason
            infos[path] = ArrayInfo(path, "", "column", "row", nrows, per_row, grid,
                                    refused=reason)
            return
        table = unique_table(table_name(path), taken)
        entry.update(table=table, columns=schema.names,
                     planning="sparse" if sparse else "dense")
        if value_shape and kind == "value":
            entry["value_shape"] = list(value_shape)
        tables[table] = schema
        infos[path] = ArrayInfo(path, table, kind, index, nrows, per_row, grid, sparse)

    @staticmethod
    def _scalar(ds: h5py.Dataset, attrs: dict[str, Any]) -> Any:
        entry: dict[str, Any] = {"dtype": str(ds.dtype),
                                 "shape": None if ds.shape is None else list(ds.shape)}
        if attrs:
            entry["attributes"] = attrs
        if ds.shape == () and ds.id.get_storage_size() <= _SCALAR_READ_LIMIT:
            try:
                entry["value"] = json_safe(ds[()])
            except Exception as exc:
                entry["value_error"] = _first_line(exc)
        return entry

    # --- plan -----------------------------------------------------------------------------------
    def plan(self, source: Source, description: Description,
             options: Mapping[str, Any]) -> list[ChunkSpec]:
        infos: dict[str, ArrayInfo] = description.state["arrays"]
        chunk_size = int(opt(options, "chunk_size"))
        limit = int(opt(options, "max_chunks_per_file"))
        specs: list[ChunkSpec] = []
        present: dict[str, list[int] | str] = {}
        sparse = [p for p, i in infos.items() if i.sparse and not i.refused]
        if sparse:
            with open_hdf5(source) as f:
                for path in sparse:
                    try:
                        present[path] = self._written_rows(f[path], infos[path], options)
                    except Exception as exc:  # a damaged chunk index refuses this dataset
                        present[path] = f"cannot list its chunks: {_first_line(exc)}"
        for path, info in infos.items():
            listed = present.get(path)
            reason = info.refused or (listed if isinstance(listed, str) else None)
            if reason:
                specs.append(ChunkSpec(source.file_id, len(specs), 0, 0, None,
                                       ("refuse", path, reason)))
                continue
            ratio = self._stored_ratio(description, path, info)
            for a, b in row_blocks(info.nrows, info.grid_rows, info.row_bytes, chunk_size,
                                   listed, limit - len(specs)):
                logical = (b - a) * info.row_bytes
                specs.append(ChunkSpec(source.file_id, len(specs), a,
                                       max(1, int(logical * ratio)), info.table,
                                       ("rows", path, a, b), logical))
        return specs

    @staticmethod
    def _stored_ratio(description: Description, path: str, info: ArrayInfo) -> float:
        declared = max(1, info.nrows * info.row_bytes)
        stored = description.metadata["datasets"].get(path, {}).get("storage_bytes") or 0
        return min(1.0, stored / declared) if stored else 1.0

    @staticmethod
    def _written_rows(ds: h5py.Dataset, info: ArrayInfo, options: Mapping[str, Any]
                      ) -> list[int] | str:
        """Grid rows (along axis 0) holding at least one written chunk, or why not listed."""
        cap = int(opt(options, "max_listed_chunks"))
        count = ds.id.get_num_chunks()
        if count > cap:
            return (f"absurd declared size and {count} written chunks (more than {cap} to "
                    "list); refused")
        rows: set[int] = set()
        ds.id.chunk_iter(lambda c: rows.add(c.chunk_offset[0] // info.grid_rows))
        return sorted(rows)

    # --- read -----------------------------------------------------------------------------------
    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: Mapping[str, Any], ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        if chunk.selector[0] == "refuse":
            _, path, reason = chunk.selector
            ctx.reject(kind="chunk", error_type="Refused",
                       message=f"{source.path}: dataset {path}: {reason}")
            return
        _, path, a, b = chunk.selector
        info: ArrayInfo = description.state["arrays"][path]
        schema = description.tables[info.table]
        where = f"{source.path}: dataset {path}"
        try:
            with open_hdf5(source) as f:
                ds = f[path]
                plain = ds.chunks is None and ds.compression is None
                pieces = read_rows(lambda lo, hi: self._rows(ds, lo, hi), info, schema, a, b,
                                   ctx, where, lambda row: self._byte_offset(ds, row, info),
                                   record_offsets=plain)
                for table in pieces:
                    yield info.table, table
        except TRANSIENT:
            raise
        except Exception as exc:  # the file itself broke (truncated since planning, ...)
            ctx.reject(kind="chunk", error_type=type(exc).__name__,
                       message=f"{where} rows {a}:{b}: {_first_line(exc)}")

    @staticmethod
    def _rows(ds: h5py.Dataset, a: int, b: int) -> np.ndarray:
        if ds.dtype.hasobject:  # variable-length data cannot go through read_direct
            return ds[a:b]
        out = np.empty((b - a, *ds.shape[1:]), dtype=ds.dtype.newbyteorder("="))
        if b > a:
            ds.read_direct(out, np.s_[a:b])
        return out

    @staticmethod
    def _byte_offset(ds: h5py.Dataset, row: int, info: ArrayInfo) -> int | None:
        """File offset of a row's storage (the chunk holding it when chunked), if known."""
        try:
            if ds.chunks is None:
                base = ds.id.get_offset()
                return None if base is None else base + row * info.row_bytes
            coord = (row - row % info.grid_rows,) + (0,) * (len(ds.shape) - 1)
            found = ds.id.get_chunk_info_by_coord(coord)
            return None if found.byte_offset is None else int(found.byte_offset)
        except Exception:  # unallocated storage has no offset
            return None


__all__ = ["HDF5Reader", "ArrayInfo", "array_layout", "arrow_type", "convert", "to_table",
           "row_blocks", "is_absurd", "table_name", "unique_table", "json_safe", "within",
           "reject_rows", "read_rows", "HDF5FileError", "Unsupported", "TRANSIENT"]

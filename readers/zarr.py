"""Zarr reader: a store (a directory, v2 or v3, local or any fsspec URL) is one input.

Every array of the hierarchy becomes a table named by its path, with the layout of
`readers.hdf5` (``row`` index, one column for 1-D, one per field for structured 1-D, a
fixed-size list ``value`` for N-D). A store whose root is an array makes one table named after
the store directory (``.zarr`` dropped). 0-d arrays go to the catalog metadata (``scalars``),
arrays with no values (a zero in their shape) to ``arrays`` with ``empty: true``: neither
makes a table.

Row blocks are whole storage objects along axis 0: shards when the array is sharded, chunks
otherwise, about ``chunk_size`` decoded bytes each. Zarr writers leave out chunks equal to the
fill value, and missing chunks read as that value, so arrays are planned densely; an array
declaring an absurd size (see `readers.hdf5.is_absurd`) is planned sparsely from a listing of its
stored keys (capped; ``nchunks_initialized`` is never used: it materialises the whole grid).
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from readers import _arrays as arrays
from readers._deferred import deferred
from readers.base import ChunkContext, ChunkSpec, Description, Reader, Source
from readers.errors import BadFile, ErrorCode, Unsupported, error_code, one_line

zarr = deferred("zarr")
zarr_sync = deferred("zarr.core.sync")

_SCALAR_READ_LIMIT = 64 << 10


class ZarrStoreError(BadFile):
    """The store's metadata cannot be read as Zarr (broken JSON, unknown codec, ...)."""


def open_store(source: Source) -> zarr.abc.store.Store:
    """A read-only store over the source directory (local path or fsspec URL)."""
    if source.local_path is not None:
        return zarr.storage.LocalStore(source.local_path, read_only=True)
    options = dict(source.storage_options) or None
    return zarr.storage.FsspecStore.from_url(source.url, storage_options=options,
                                             read_only=True)



def _grid_rows(arr: zarr.Array) -> int:
    """Rows per stored object along axis 0 (a shard when sharded)."""
    shards = getattr(arr, "shards", None)
    return int((shards or arr.chunks)[0])


def _key_parser(arr: zarr.Array) -> tuple[str, str]:
    """(prefix, separator) of the array's chunk keys (``c/0/1`` in v3, ``0.1`` in v2)."""
    meta = arr.metadata
    if meta.zarr_format == 2:
        return "", meta.dimension_separator or "."
    encoding = meta.chunk_key_encoding
    separator = getattr(encoding, "separator", "/")
    return ("c" + separator if encoding.name == "default" else ""), separator


async def _list_keys(store: Any, prefix: str, cap: int) -> list[str] | None:
    keys: list[str] = []
    async for key in store.list_prefix(prefix):
        keys.append(key)
        if len(keys) > cap:
            return None
    return keys


def written_rows(store: Any, arr: zarr.Array, cap: int) -> list[int] | None:
    """Grid rows along axis 0 holding a stored object; None when more than ``cap`` keys."""
    base = f"{arr.path}/" if arr.path else ""
    keys = zarr_sync.sync(_list_keys(store, base, cap))
    if keys is None:
        return None
    prefix, separator = _key_parser(arr)
    rows: set[int] = set()
    for key in keys:
        rel = key[len(base):]
        if not rel.startswith(prefix):
            continue
        parts = rel[len(prefix):].split(separator)
        if len(parts) == arr.ndim and all(p.isdigit() for p in parts):
            rows.add(int(parts[0]))
    return sorted(rows)


def _codecs(arr: zarr.Array) -> Any:
    meta = arr.metadata.to_dict()
    if arr.metadata.zarr_format == 2:
        return {"compressor": meta.get("compressor"), "filters": meta.get("filters")}
    return meta.get("codecs")


class ZarrReader(Reader):
    """Zarr v2 and v3 stores: one table per array, row blocks of whole chunks or shards."""

    name = "zarr"
    options_type = arrays.ArrayOptions
    suffixes = (".zarr",)
    directory_markers = ("zarr.json", ".zgroup", ".zarray")

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        return 0  # a store is a directory; discovery hands it over through directory_markers

    # --- describe -------------------------------------------------------------------------------
    def describe(self, source: Source, options: arrays.ArrayOptions) -> Description:
        try:
            node = zarr.open(store=open_store(source), mode="r")
        except arrays.TRANSIENT:
            raise  # network trouble: planning retries
        except Exception as exc:
            raise ZarrStoreError(f"{source.path}: not a readable Zarr store "
                                 f"({one_line(exc)})") from exc
        try:  # zarr parses every member's metadata while listing: one broken document stops it
            meta: dict[str, Any] = {"zarr_format": node.metadata.zarr_format,
                                    "attributes": arrays.json_safe(dict(node.attrs)), "arrays": {},
                                    "scalars": {}, "groups": {}, "refused": {}}
            if isinstance(node, zarr.Array):
                members: list[tuple[str, Any]] = [("", node)]
            else:
                members = list(node.members(max_depth=None))
        except arrays.TRANSIENT:
            raise
        except Exception as exc:
            raise ZarrStoreError(f"{source.path}: damaged Zarr hierarchy "
                                 f"({one_line(exc)})") from exc
        infos: dict[str, arrays.ArrayInfo] = {}
        tables: dict[str, pa.Schema] = {}
        limit = options.max_objects
        if len(members) > limit:
            raise Unsupported(f"{source.path}: {len(members)} arrays and groups (more than "
                             f"{limit}); not supported")
        taken: set[str] = set()
        for path, obj in sorted(members, key=lambda m: m[0]):
            try:
                if isinstance(obj, zarr.Group):
                    attrs = arrays.json_safe(dict(obj.attrs))
                    if attrs:
                        meta["groups"][path] = attrs
                else:
                    self._array(source, path, obj, options, meta, tables, infos, taken)
            except arrays.TRANSIENT:
                raise
            except Exception as exc:  # metadata zarr accepted but we cannot use: this one only
                reason = f"unusable metadata: {one_line(exc)}"
                meta["refused"][path or "/"] = reason
                infos[path] = arrays.ArrayInfo(path, "", "column", "row", 0, 1, 1, refused=reason)
        return Description(tables, meta, {"arrays": infos})

    def _array(self, source: Source, path: str, arr: zarr.Array, options: arrays.ArrayOptions,
               meta: dict[str, Any], tables: dict[str, pa.Schema],
               infos: dict[str, arrays.ArrayInfo], taken: set[str]) -> None:
        shape = tuple(int(n) for n in arr.shape)
        entry: dict[str, Any] = {
            "shape": list(shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
            "shards": list(arr.shards) if getattr(arr, "shards", None) else None,
            "fill_value": arrays.json_safe(arr.fill_value),
            "zarr_format": arr.metadata.zarr_format,
            "codecs": arrays.json_safe(_codecs(arr)),
            "attributes": arrays.json_safe(dict(arr.attrs)),
        }
        names = getattr(arr.metadata, "dimension_names", None)
        if names:
            entry["dimension_names"] = arrays.json_safe(list(names))
        if not shape:
            if arr.nbytes <= _SCALAR_READ_LIMIT:
                try:
                    entry["value"] = arrays.json_safe(arr[()])
                except Exception as exc:
                    entry["value_error"] = one_line(exc)
            meta["scalars"][path or "/"] = entry
            return
        meta["arrays"][path or "/"] = entry
        if math.prod(shape) == 0:  # no values: a table without rows would have no fragment
            entry["empty"] = True
            return
        if arrays.has_wide_float(arr.dtype):
            entry["cast"] = arrays.WIDE_FLOAT_NOTE
        nrows, per_row, grid = shape[0], arrays.row_bytes(arr.dtype, shape), _grid_rows(arr)
        name = arrays.table_name(path) if path else arrays.table_name(
            posixpath.basename(source.path.rstrip("/")).removesuffix(".zarr"))
        reason = None
        try:
            schema, kind, index, value_shape = arrays.array_layout(path or name, arr.dtype, shape)
        except Unsupported as exc:
            reason = str(exc)
        sparse = reason is None and arrays.is_absurd(nrows * per_row, source.size, options)
        if reason is not None:
            meta["refused"][path or "/"] = reason
            infos[path] = arrays.ArrayInfo(path, "", "column", "row", nrows, per_row, grid,
                                    refused=reason)
            return
        table = arrays.unique_table(name, taken)
        entry.update(table=table, columns=schema.names,
                     planning="sparse" if sparse else "dense")
        if kind == "value":
            entry["value_shape"] = list(value_shape)
        tables[table] = schema
        infos[path] = arrays.ArrayInfo(path, table, kind, index, nrows, per_row, grid, sparse)

    # --- plan -----------------------------------------------------------------------------------
    def plan(self, source: Source, description: Description,
             options: arrays.ArrayOptions) -> list[ChunkSpec]:
        infos: dict[str, arrays.ArrayInfo] = description.state["arrays"]
        chunk_size = options.chunk_size
        limit = options.max_chunks_per_file
        cap = options.max_listed_chunks
        store = open_store(source) if any(i.sparse for i in infos.values()) else None
        units: list[arrays.Unit] = []
        for path, info in infos.items():
            reason, present = info.refused, None
            if reason is None and info.sparse:
                arr = zarr.open_array(store=store, path=path, mode="r")
                present = written_rows(store, arr, cap)
                if present is None:
                    reason = (f"declares {info.nrows * info.row_bytes} bytes in a "
                              f"{source.size}-byte store and stores more than {cap} "
                              "objects to list; refused as absurd")
            if reason is not None:
                units.append(arrays.Unit(arrays.ArraySelector(path, refused=reason), None, 0, 0,
                                         True))
                continue
            blocks = arrays.row_blocks(info.nrows, info.grid_rows, info.row_bytes, chunk_size,
                                present, limit - len(units))
            whole = blocks == [(0, info.nrows)]
            for a, b in blocks:
                logical = (b - a) * info.row_bytes
                units.append(arrays.Unit(arrays.ArraySelector(path, a, b), info.table, logical,
                                         logical, whole))
        return arrays.number_chunks(source.file_id, units, options)

    def chunk_description(self, description: Description, chunk: ChunkSpec) -> Description:
        return arrays.chunk_description(description, chunk)

    # --- read -----------------------------------------------------------------------------------
    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: arrays.ArrayOptions, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        store = None
        for sel in arrays.selectors(chunk):
            path, a, b = sel.path, sel.start, sel.stop
            if sel.refused:
                ctx.reject(kind="chunk", error_type=ErrorCode.REFUSED,
                           message=f"{source.path}: array {path or '/'}: {sel.refused}")
                continue
            info: arrays.ArrayInfo = description.state["arrays"][path]
            where = f"{source.path}: array {path or '/'}"
            try:
                store = store or open_store(source)
                arr = zarr.open_array(store=store, path=path, mode="r")
            except arrays.TRANSIENT:
                raise
            except Exception as exc:  # the store changed or broke since planning
                ctx.reject(kind="chunk", error_type=error_code(exc),
                           message=f"{where} rows {a}:{b}: {one_line(exc)}")
                continue
            for table in arrays.read_rows(lambda lo, hi, arr=arr: np.asarray(arr[lo:hi]), info,
                                   description.tables[info.table], a, b, ctx, where):
                yield info.table, table


__all__ = ["ZarrReader", "open_store", "written_rows"]

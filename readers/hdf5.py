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
- Long doubles (float128, complex256) become float64 (the catalog's ``cast`` says so); a row
  holding a finite value beyond float64's range goes to ``_errors`` (``TypeMismatch``).
- 0-d (scalar) datasets go to the catalog metadata (``scalars``), datasets with no values
  (a zero in their shape) to ``datasets`` with ``empty: true``; neither makes a table.

Planning: row blocks along axis 0, a multiple of the storage chunk's rows, about ``chunk_size``
bytes of decoded data each (never less than one chunk row). A dataset declaring more than
``max_expansion`` times the file size and more than ``dense_limit`` bytes is *absurd*: when it is
chunked only row blocks holding a written chunk are planned (unwritten chunks hold the fill value
alone; the catalog says ``planning: sparse``); otherwise it is refused. Below that bound
unwritten chunks come out as fill values, which is what the array holds.

Refused with an ``_errors`` row (the rest of the file is still read): external links leaving
``input_roots`` (links are never followed; inside links are listed in ``links``), virtual datasets
whose sources are missing or outside ``input_roots``, datasets stored in external raw files,
datasets needing an unavailable filter that is not optional (chunks an optional one skipped
read fine; a chunk that did go through it is one ``_errors`` row), unsupported types
(references).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import pickle
import select
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from readers._arrays import (
    TRANSIENT,
    WIDE_FLOAT_NOTE,
    ArrayInfo,
    ArrayOptions,
    ArraySelector,
    Unit,
    array_layout,
    chunk_description,
    has_wide_float,
    is_absurd,
    json_safe,
    number_chunks,
    read_rows,
    row_blocks,
    row_bytes,
    selectors,
    table_name,
    unique_table,
    within,
)
from readers._deferred import deferred
from readers.base import ChunkContext, ChunkSpec, Description, Reader, Source
from readers.errors import BadFile, ErrorCode, Unsupported, error_code, one_line

h5py = deferred("h5py")

MAGIC = b"\x89HDF\r\n\x1a\n"

_SCALAR_READ_LIMIT = 64 << 10
_ATTR_READ_LIMIT = 1 << 20
_NETCDF_DIM = "This is a netCDF dimension but not a netCDF variable"


class HDF5FileError(BadFile):
    """The file cannot be opened as HDF5 (truncated, corrupt, not HDF5); names the file."""


# --- HDF5 -------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_hdf5(source: Source) -> Iterator[h5py.File]:
    """The file opened read-only; local files by path (VDS sources resolve against its dir)."""
    handle = None
    try:
        if source.local_path is not None:
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


def _attrs(obj: Any, limit: int = 256, guarded: GuardedReads | None = None) -> dict[str, Any]:
    """An object's attributes as JSON-safe values; variable-length ones are left to
    ``guarded`` (filled in later, see `GuardedReads`) when given."""
    out: dict[str, Any] = {}
    try:
        names = list(obj.attrs)
    except Exception as exc:  # damaged attribute storage must not fail the whole file
        return {"...": f"<unreadable attributes: {exc}>"}
    for name in names[:limit]:
        try:
            aid = obj.attrs.get_id(name)
            size = aid.get_storage_size()
            if size > _ATTR_READ_LIMIT:
                out[name] = f"<{size} bytes, not read>"
            elif guarded is not None and aid.dtype.hasobject:
                guarded.add(out, name, obj.name, name)
            else:
                out[name] = json_safe(obj.attrs[name])
        except Exception as exc:
            out[name] = f"<unreadable: {one_line(exc)}>"
    if len(names) > limit:
        out["..."] = f"{len(names) - limit} more attributes"
    return out



class GuardedReads:
    """Reads of variable-length values (attributes, scalar datasets), done together in a
    forked child that is killed past ``timeout`` seconds.

    Their bytes live in the file's global heap, and a damaged heap collection (an object
    whose size does not move the parser forward) makes the HDF5 library's own parse of it
    loop forever: a thread cannot be stopped inside it, a process can. One fork per file that
    has such values (none for the others); the child inherits the open file. Remote files
    (read through a Python file object, whose connections a fork cannot share) are read in
    place, unguarded.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[dict[str, Any], str, str, str | None]] = []

    def add(self, into: dict[str, Any], key: str, path: str, attr: str | None) -> None:
        """``into[key]`` will be attribute ``attr`` of object ``path``; with ``attr`` None,
        ``into`` gets the scalar dataset's ``value`` (or ``value_error``) instead."""
        if attr is not None:
            into[key] = None  # keeps the attributes' order
        self.jobs.append((into, key, path, attr))

    def run(self, f: h5py.File, where: str, timeout: float) -> None:
        if not self.jobs:
            return
        wanted = [(path, attr) for _, _, path, attr in self.jobs]
        limit = timeout + 0.01 * len(wanted)
        values = _in_child(lambda: _read_values(f, wanted), limit, where)
        for (into, key, _, attr), value in zip(self.jobs, values, strict=True):
            if attr is None:
                into.update(value)
            else:
                into[key] = value
        self.jobs.clear()


def _read_values(f: h5py.File, wanted: list[tuple[str, str | None]]) -> list[Any]:
    import h5py

    out: list[Any] = []
    for path, attr in wanted:
        try:
            obj = f if path == "/" else f[_name(path)]
            if attr is not None:
                out.append(json_safe(obj.attrs[attr]))
            elif isinstance(obj, h5py.Dataset):
                out.append({"value": json_safe(obj[()])})
            else:
                out.append({})
        except Exception as exc:
            out.append(f"<unreadable: {one_line(exc)}>" if attr is not None
                       else {"value_error": one_line(exc)})
    return out


def _in_child(work: Any, timeout: float, where: str) -> Any:
    """``work()`` run in a forked child; its pickled result, or `HDF5FileError` when the
    child runs past ``timeout`` seconds or dies."""
    import h5py

    r, w = os.pipe()
    # Forked while holding h5py's lock: no other thread is inside the HDF5 library, whose
    # state the child inherits (it would otherwise wait forever for a lock no one holds).
    # Python 3.12+ warns about forking a process with threads (a Dask worker has several):
    # the child touches no lock another thread may hold but h5py's, and leaves by _exit.
    with h5py._objects.phil, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* is multi-threaded",
                                DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        code = 0
        try:
            os.close(r)
            data = pickle.dumps(work(), protocol=5)
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        except BaseException:  # noqa: BLE001 - reported to the parent as a death
            code = 1
        os._exit(code)
    os.close(w)
    chunks, deadline, done = [], time.monotonic() + timeout, False
    try:
        while not done:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                break
            piece = os.read(r, 1 << 20)
            chunks.append(piece)
            done = not piece
    finally:
        os.close(r)
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if not done:
        raise HDF5FileError(f"{where}: reading its variable-length attributes/values did not "
                            f"finish in {timeout:.0f}s (a damaged global heap makes the HDF5 "
                            "library loop); file refused")
    if status != 0 or not chunks[:-1]:
        raise HDF5FileError(f"{where}: reading its variable-length attributes/values "
                            f"failed (exit status {status})")
    return pickle.loads(b"".join(chunks))


def _name(path: str) -> bytes:
    """An object's name as HDF5 stores it (names that are not UTF-8 survive the round trip)."""
    return path.encode("utf-8", "surrogateescape")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _layout_name(code: int) -> str:
    return _layout_names().get(code, "unknown")


@functools.cache
def _layout_names() -> dict[int, str]:
    d = h5py.h5d
    return {d.COMPACT: "compact", d.CONTIGUOUS: "contiguous", d.CHUNKED: "chunked",
            d.VIRTUAL: "virtual"}


@functools.cache
def _FILL_DEFAULT() -> int:  # noqa: N802 - a constant of the lazily imported h5py
    return h5py.h5d.FILL_VALUE_DEFAULT


def _filters(dcpl: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(filter pipeline, names of mandatory filters this h5py cannot decode).

    An *optional* filter that is unavailable is no reason to refuse: HDF5 stores a chunk
    unfiltered whenever an optional filter could not be applied (and marks it so in the
    chunk's filter mask), and such chunks read fine. Chunks that did go through it fail on
    their own, each as an ``_errors`` row.
    """
    pipeline, missing = [], []
    for i in range(dcpl.get_nfilters()):
        code, flags, values, name = dcpl.get_filter(i)
        label = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        optional = bool(flags & h5py.h5z.FLAG_OPTIONAL)
        entry = {"id": int(code), "name": label, "options": [int(v) for v in values],
                 "optional": optional}
        if not h5py.h5z.filter_avail(code):
            entry["available"] = False
            if not optional:
                missing.append(f"{label or 'filter'} (id {code})")
        pipeline.append(entry)
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
        if source.local_path is None:
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
            return f"virtual source {m.file_name!r} cannot be opened ({one_line(exc)})", 0
        nbytes += os.path.getsize(path)
    return None, nbytes


class HDF5Reader(Reader):
    """HDF5 (and netCDF-4) files: one table per dataset, row blocks along axis 0."""

    name = "hdf5"
    options_type = ArrayOptions
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
    def describe(self, source: Source, options: ArrayOptions) -> Description:
        roots = list(options.input_roots) or [os.path.dirname(source.path)]
        limit = options.max_objects
        meta: dict[str, Any] = {"datasets": {}, "scalars": {}, "groups": {}, "links": {},
                                "refused": {}}
        tables: dict[str, pa.Schema] = {}
        infos: dict[str, ArrayInfo] = {}
        guarded = GuardedReads() if source.local_path is not None else None
        with open_hdf5(source) as f:
            meta["userblock_size"] = int(f.userblock_size)
            meta["attributes"] = _attrs(f, guarded=guarded)
            links: list[tuple[bytes, int]] = []

            def visit(name: bytes, info: Any) -> int | None:
                links.append((name, info.type))
                return 1 if len(links) > limit else None

            try:  # low level: h5py's visititems_links builds a Python link object per name
                f.id.links.visit(visit, info=True)
            except Exception as exc:  # a damaged group structure: nothing can be trusted
                raise HDF5FileError(f"{source.path}: damaged HDF5 structure "
                                    f"({one_line(exc)})") from exc
            if len(links) > limit:
                raise Unsupported(f"{source.path}: more than {limit} objects; not supported")
            seen: set[Any] = set()
            taken: set[str] = set()
            h5l = h5py.h5l
            for raw, kind in links:
                path = "/" + raw.decode("utf-8", "surrogateescape")
                try:
                    if kind == h5l.TYPE_SOFT:
                        meta["links"][path] = {"soft": _text(f.id.links.get_val(raw))}
                    elif kind == h5l.TYPE_EXTERNAL:
                        target, inner = f.id.links.get_val(raw)
                        self._external(source, path, _text(target), _text(inner), roots, meta,
                                       infos)
                    elif kind == h5l.TYPE_HARD:
                        self._hard_link(f, source, path, roots, options, meta, tables, infos,
                                        seen, taken, guarded)
                    else:
                        meta["links"][path] = {"user_defined_link_type": int(kind)}
                except Exception as exc:  # a damaged header refuses this object only
                    reason = f"cannot read its header: {one_line(exc)}"
                    meta["refused"][path] = reason
                    infos[path] = ArrayInfo(path, "", "column", "row", 0, 1, 1, refused=reason)
            if guarded is not None:
                guarded.run(f, source.path, options.vlen_read_timeout)
        return Description(tables, meta, {"arrays": infos})

    def _hard_link(self, f: h5py.File, source: Source, path: str, roots: Sequence[str],
                   options: ArrayOptions, meta: dict[str, Any],
                   tables: dict[str, pa.Schema], infos: dict[str, ArrayInfo], seen: set[Any],
                   taken: set[str], guarded: GuardedReads | None = None) -> None:
        # Low-level handles: the high-level Group/Dataset objects cost several times the
        # HDF5 calls themselves, and a file may hold thousands of datasets. (The module
        # itself, not the deferred proxy, whose every attribute read is a call.)
        import h5py

        oid = h5py.h5o.open(f.id, _name(path))
        try:
            info = h5py.h5o.get_info(oid)
            key: Any = (info.fileno, info.addr)
            num_attrs, kind = info.num_attrs, info.type
        except Exception:  # never dedupe what we cannot identify
            key, num_attrs, kind = id(oid), 1, None
        if key in seen:  # a second hard link to an object: read it once, under its first name
            meta["links"][path] = {"hard_link_to_object_seen_earlier": True}
            return
        seen.add(key)
        if isinstance(oid, h5py.h5g.GroupID):
            attrs = _attrs(h5py.Group(oid), guarded=guarded) if num_attrs else {}
            if attrs:
                meta["groups"][path] = attrs
        elif isinstance(oid, h5py.h5d.DatasetID) or kind == h5py.h5o.TYPE_DATASET:
            self._dataset(f, source, path, oid, num_attrs, roots, options, meta, tables,
                          infos, taken, guarded)

    @staticmethod
    def _external(source: Source, path: str, target: str, inner: str, roots: Sequence[str],
                  meta: dict[str, Any], infos: dict[str, ArrayInfo]) -> None:
        inside = source.local_path is not None and within(
            os.path.join(os.path.dirname(source.path), target), roots)
        meta["links"][path] = {"external": target, "path": inner, "followed": False,
                               "inside_input_roots": inside}
        if not inside:
            reason = (f"external link to {target}:{inner} leaves the input directories; "
                      "not followed")
            meta["refused"][path] = reason
            infos[path] = ArrayInfo(path, "", "column", "row", 0, 1, 1, refused=reason)

    def _dataset(self, f: h5py.File, source: Source, path: str, dsid: Any, num_attrs: int,
                 roots: Sequence[str], options: ArrayOptions, meta: dict[str, Any],
                 tables: dict[str, pa.Schema], infos: dict[str, ArrayInfo],
                 taken: set[str], guarded: GuardedReads | None = None) -> None:
        import h5py  # the module, not the deferred proxy: this runs once per dataset

        shape, dtype = dsid.shape, dsid.dtype
        attrs = _attrs(h5py.Dataset(dsid), guarded=guarded) if num_attrs else {}
        if shape is None or shape == () or str(attrs.get("NAME", "")).startswith(_NETCDF_DIM):
            meta["scalars"][path] = self._scalar(h5py.Dataset(dsid), attrs, guarded)
            return
        dcpl = dsid.get_create_plist()
        layout = _layout_name(dcpl.get_layout())
        pipeline, missing = _filters(dcpl)
        storage = int(dsid.get_storage_size())
        chunks = tuple(dcpl.get_chunk()) if layout == "chunked" else None
        # h5py's own names and options of the filters, read again only where there are any
        known = h5py.filters.get_filters(dcpl) if pipeline else {}
        compression = next((c for c in ("gzip", "lzf", "szip") if c in known), None)
        entry: dict[str, Any] = {
            "shape": list(shape), "dtype": str(dtype), "layout": layout,
            "chunks": list(chunks) if chunks else None, "compression": compression,
            "compression_opts": json_safe(known.get(compression)), "filters": pipeline,
            "storage_bytes": storage, "attributes": attrs,
        }
        enum = (dtype.metadata or {}).get("enum")
        if enum:
            entry["enum"] = json_safe(enum)
        with contextlib.suppress(Exception):  # some types have no readable fill value
            fill = np.zeros((1,), dtype=dtype)
            # The library's default fill is all zero bytes: a plain number needs no call.
            if dtype.kind not in "biuf" or dcpl.fill_value_defined() != _FILL_DEFAULT():
                dcpl.get_fill_value(fill)
            entry["fillvalue"] = json_safe(fill[0])
        meta["datasets"][path] = entry
        if math.prod(shape) == 0:  # no values: a table without rows would have no fragment
            entry["empty"] = True
            return
        if has_wide_float(dtype):
            entry["cast"] = WIDE_FLOAT_NOTE
        nrows, per_row = int(shape[0]), row_bytes(dtype, shape)
        grid = int(chunks[0]) if chunks else 1
        declared = nrows * per_row
        reason, stored = None, storage
        try:
            schema, kind, index, value_shape = array_layout(path, dtype, shape)
        except Unsupported as exc:
            reason = str(exc)
        if reason is None and missing:
            reason = f"needs filter(s) this h5py cannot decode: {', '.join(missing)}"
        if reason is None and dcpl.get_external_count() > 0:
            reason = "data lives in external raw files; not supported"
        if reason is None and layout == "virtual":
            reason, stored = _virtual_problem(f, h5py.Dataset(dsid), source, roots)
        sparse = False
        if reason is None and is_absurd(declared, max(stored, source.size), options):
            if layout == "chunked":
                sparse = True
            else:
                reason = (f"declares {declared} bytes but holds {stored} ({layout}); "
                          "refused as absurd")
        if reason is None and layout == "contiguous" and storage:
            offset = dsid.get_offset()
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
    def _scalar(ds: h5py.Dataset, attrs: dict[str, Any],
                guarded: GuardedReads | None = None) -> Any:
        entry: dict[str, Any] = {"dtype": str(ds.dtype),
                                 "shape": None if ds.shape is None else list(ds.shape)}
        if attrs:
            entry["attributes"] = attrs
        if ds.shape == () and ds.id.get_storage_size() <= _SCALAR_READ_LIMIT:
            if guarded is not None and ds.dtype.hasobject:
                guarded.add(entry, "value", ds.name, None)
                return entry
            try:
                entry["value"] = json_safe(ds[()])
            except Exception as exc:
                entry["value_error"] = one_line(exc)
        return entry

    # --- plan -----------------------------------------------------------------------------------
    def plan(self, source: Source, description: Description,
             options: ArrayOptions) -> list[ChunkSpec]:
        infos: dict[str, ArrayInfo] = description.state["arrays"]
        chunk_size = options.chunk_size
        limit = options.max_chunks_per_file
        units: list[Unit] = []
        present: dict[str, list[int] | str] = {}
        sparse = [p for p, i in infos.items() if i.sparse and not i.refused]
        if sparse:
            with open_hdf5(source) as f:
                for path in sparse:
                    try:
                        present[path] = self._written_rows(f[_name(path)], infos[path], options)
                    except Exception as exc:  # a damaged chunk index refuses this dataset
                        present[path] = f"cannot list its chunks: {one_line(exc)}"
        for path, info in infos.items():
            listed = present.get(path)
            reason = info.refused or (listed if isinstance(listed, str) else None)
            if reason:
                units.append(Unit(ArraySelector(path, refused=reason), None, 0, 0, True))
                continue
            ratio = self._stored_ratio(description, path, info)
            blocks = row_blocks(info.nrows, info.grid_rows, info.row_bytes, chunk_size,
                                listed, limit - len(units))
            whole = blocks == [(0, info.nrows)]
            for a, b in blocks:
                logical = (b - a) * info.row_bytes
                units.append(Unit(ArraySelector(path, a, b), info.table,
                                  max(1, int(logical * ratio)), logical, whole))
        return number_chunks(source.file_id, units, options)

    def chunk_description(self, description: Description, chunk: ChunkSpec) -> Description:
        return chunk_description(description, chunk)

    @staticmethod
    def _stored_ratio(description: Description, path: str, info: ArrayInfo) -> float:
        declared = max(1, info.nrows * info.row_bytes)
        stored = description.metadata["datasets"].get(path, {}).get("storage_bytes") or 0
        return min(1.0, stored / declared) if stored else 1.0

    @staticmethod
    def _written_rows(ds: h5py.Dataset, info: ArrayInfo, options: ArrayOptions
                      ) -> list[int] | str:
        """Grid rows (along axis 0) holding at least one written chunk, or why not listed."""
        cap = options.max_listed_chunks
        count = ds.id.get_num_chunks()
        if count > cap:
            return (f"absurd declared size and {count} written chunks (more than {cap} to "
                    "list); refused")
        rows: set[int] = set()
        ds.id.chunk_iter(lambda c: rows.add(c.chunk_offset[0] // info.grid_rows))
        return sorted(rows)

    # --- read -----------------------------------------------------------------------------------
    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: ArrayOptions, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        parts = selectors(chunk)
        for sel in parts:
            if sel.refused:
                ctx.reject(kind="chunk", error_type=ErrorCode.REFUSED,
                           message=f"{source.path}: dataset {sel.path}: {sel.refused}")
        live = [sel for sel in parts if not sel.refused]
        if not live:
            return
        with contextlib.ExitStack() as stack:
            try:
                f = stack.enter_context(open_hdf5(source))
            except TRANSIENT:
                raise
            except Exception as exc:  # the file broke since planning (truncated, replaced)
                for sel in live:
                    self._reject_part(ctx, source, sel, exc)
                return
            for sel in live:
                yield from self._read_part(f, source, sel, description, ctx)

    def _read_part(self, f: h5py.File, source: Source, sel: ArraySelector,
                   description: Description, ctx: ChunkContext
                   ) -> Iterator[tuple[str, pa.Table]]:
        info: ArrayInfo = description.state["arrays"][sel.path]
        schema = description.tables[info.table]
        where = f"{source.path}: dataset {sel.path}"
        try:
            # Low level: the high-level ``f[name]`` asks the object's type and file first, and
            # a chunk may read hundreds of tiny datasets. Filters need chunked storage, so an
            # unchunked dataset is plain (no ``ds.compression``, which decodes the pipeline).
            import h5py

            ds = h5py.Dataset(h5py.h5d.open(f.id, _name(sel.path)))
            plain = ds.chunks is None
            pieces = read_rows(lambda lo, hi: self._rows(ds, lo, hi), info, schema, sel.start,
                               sel.stop, ctx, where,
                               lambda row: self._byte_offset(ds, row, info),
                               record_offsets=plain)
            for table in pieces:
                yield info.table, table
        except TRANSIENT:
            raise
        except Exception as exc:  # the dataset's header broke since planning
            self._reject_part(ctx, source, sel, exc)

    @staticmethod
    def _reject_part(ctx: ChunkContext, source: Source, sel: ArraySelector,
                     exc: BaseException) -> None:
        ctx.reject(kind="chunk", error_type=error_code(exc),
                   message=f"{source.path}: dataset {sel.path} rows {sel.start}:{sel.stop}: "
                           f"{one_line(exc)}")

    @staticmethod
    def _rows(ds: h5py.Dataset, a: int, b: int) -> np.ndarray:
        # Variable-length data cannot be read into a numpy buffer, nor can array-typed
        # elements (no conversion from H5T_ARRAY to the flat buffer numpy makes of them).
        dtype, shape = ds.dtype, ds.shape
        if dtype.hasobject or dtype.subdtype is not None:
            return ds[a:b]
        out = np.empty((b - a, *shape[1:]), dtype=dtype.newbyteorder("="))
        if b > a:
            # What ``read_direct(out, np.s_[a:b])`` does, without its selection machinery.
            import h5py

            space = ds.id.get_space()
            space.select_hyperslab((a,) + (0,) * (len(shape) - 1), out.shape)
            ds.id.read(h5py.h5s.create_simple(out.shape), space, out)
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


__all__ = ["HDF5Reader", "HDF5FileError"]

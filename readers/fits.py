"""FITS reader: header cards to the catalog, tables and images to rows, without astropy.

Layouts (one table per HDU; the name is the EXTNAME lower-cased with anything outside
``[a-z0-9_]`` turned into ``_``, or ``hdu<N>`` without one; a name taken twice in one file gets
``_<EXTVER>`` or ``_hdu<N>`` appended):

- BINTABLE / ASCII TABLE: one row per table row, one column per field (TTYPE, made unique).
  TFORM types: L->bool (0 byte -> null), X->fixed_size_list<bool>, B->uint8, I->int16,
  J->int32, K->int64, E->float32, D->float64, C/M->fixed_size_list<float, 2> (re, im),
  A->string (trailing spaces/NULs trimmed); repeat > 1 -> fixed_size_list. TZERO 2^15/2^31/2^63
  (and -128 for B) with TSCAL 1 -> uint16/uint32/uint64 (int8); other TSCAL/TZERO -> float64.
  Integer TNULL values -> null. P/Q (variable-length) columns -> list<T> read from the heap
  after bounds checks (X/C/M elements are left out and listed in the catalog ``notes``).
  TDIMn is not applied: multi-dimensional cells stay flat (TDIM is in the catalog cards).
  ASCII tables: A->string, I->int64, F/E/D->float64 (implied decimals honoured), blank or TNULL
  fields -> null, a cell that does not parse rejects its row into ``_errors``.
- IMAGE (primary with NAXIS > 0, IMAGE extensions): one row per image line, ``row`` (index
  along NAXIS2), ``plane`` (flattened index over NAXIS3.., only when NAXIS >= 3) and ``value``
  (list of NAXIS1 pixels). BSCALE/BZERO applied as astropy does (float32 for BITPIX 8/16/-32,
  float64 otherwise; BZERO 2^(n-1) -> unsigned); integer BLANK pixels -> null.

Catalog metadata: ``hdus`` (per HDU: index, type, extname, bitpix, naxis, offsets, sizes and
up to 300 cards; ``table``, ``rows`` and ``columns`` for HDUs that feed a table),
``hdu_count``, ``errors`` and ``notes``. A header that cannot be parsed, or a data unit the file
is too short for, becomes an ``_errors`` row naming the HDU and byte offset and that HDU is not
read (the HDUs before it are); a broken primary header fails the file. A P/Q descriptor outside
the heap (or the file) rejects its row into ``_errors`` with the row's raw bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from readers._fits_cards import (
    BIN_CODES,
    Column,
    FITSError,
    Part,
    make_part,
    table_name,
    walk,
)
from readers.base import ChunkContext, ChunkSpec, Description, Reader, Source
from readers.errors import ErrorCode, Unsupported
from readers.options import ReaderOptions

#: HDUs whose header cards go into the catalog (later ones keep only their geometry).
CATALOG_HDUS = 100


@dataclass(frozen=True, slots=True)
class FITSSelector:
    """Which rows of which table or image part a chunk reads (`ChunkSpec.selector`)."""

    part: int = 0
    first: int = 0
    rows: int = 0
    problems: bool = False
    """The chunk only reports the header problems found while describing."""
_UNSIGNED = {"B": (-128.0, "i1", 0x80), "I": (32768.0, "u2", 0x8000),
             "J": (2.0**31, "u4", 0x80000000), "K": (2.0**63, "u8", 1 << 63)}


@dataclass(slots=True)
class FITSState:
    parts: list[Part] = field(default_factory=list)
    problems: list[tuple[str, str, int | None]] = field(default_factory=list)
    """(error type, message, byte offset) turned into ``_errors`` rows by one extra chunk."""


# --- decoding ----------------------------------------------------------------------------------
def _numbers(raw: np.ndarray, col: Column, code: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Big-endian field bytes -> native values with TSCAL/TZERO applied, plus a null mask."""
    vals = raw.view(BIN_CODES[code][0]) if raw.dtype == np.uint8 else raw
    mask = None
    if code in _UNSIGNED and col.null is not None and isinstance(col.null, int):
        mask = vals == col.null
    if code in _UNSIGNED and col.scale == 1.0 and col.zero == _UNSIGNED[code][0]:
        signed, bit = _UNSIGNED[code][1], _UNSIGNED[code][2]
        unsigned = vals.astype(vals.dtype.newbyteorder("=")).view(f"u{vals.itemsize}")
        return (unsigned ^ np.array(bit, unsigned.dtype)).view(signed), mask
    if col.scale != 1.0 or col.zero != 0.0:
        return vals.astype(np.float64) * col.scale + col.zero, mask
    return vals.astype(vals.dtype.newbyteorder("=")), mask


def _strings(raw: np.ndarray, width: int, strip: str = " \x00") -> pa.Array:
    import pyarrow.compute as pc  # here, not at import: see readers/_compute.py
    arr = pa.array(np.ascontiguousarray(raw).view(f"S{max(width, 1)}").ravel(), pa.binary())
    try:
        text = arr.cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8: keep every byte readable rather than fail the chunk
        text = pa.array([None if v is None else v.decode("latin-1") for v in arr.to_pylist()],
                        pa.string())
    return pc.utf8_rtrim(text, characters=strip)


def _fixed(flat: pa.Array, repeat: int) -> pa.Array:
    return flat if repeat == 1 else pa.FixedSizeListArray.from_arrays(flat, repeat)


def bin_column(col: Column, raw: np.ndarray, heap: Callable[[np.ndarray, np.ndarray], bytes]
               | None = None) -> pa.Array:
    """One BINTABLE field of ``n`` rows (``raw`` is n x width bytes) as an Arrow array."""
    n, code, r = raw.shape[0], col.code, col.repeat
    if code == "A":
        return _strings(raw, r)
    if code == "L":
        return _fixed(pa.array(raw.ravel() == ord("T"), mask=raw.ravel() == 0), r)
    if code == "X":
        bits = np.unpackbits(raw, axis=1)[:, :r].astype(bool)
        return _fixed(pa.array(bits.ravel()), r)
    if code in "CM":
        vals = raw.view(BIN_CODES[code][0]).astype(np.float64 if code == "M" else np.float32)
        return _fixed(pa.FixedSizeListArray.from_arrays(pa.array(vals.ravel()), 2), r)
    if code in "PQ":
        return _varlen(col, raw.view(BIN_CODES[code][0]).reshape(n, 2), heap)
    vals, mask = _numbers(raw, col, code)
    return _fixed(pa.array(vals.ravel(), mask=None if mask is None else mask.ravel()), r)


def _varlen(col: Column, desc: np.ndarray, heap: Callable | None) -> pa.Array:
    """P/Q column: (count, offset) descriptors -> list<T>; bad rows are zeroed beforehand."""
    import pyarrow.compute as pc
    size = BIN_CODES[col.element][1]
    counts = desc[:, 0].astype(np.int64)
    data = heap(desc[:, 1].astype(np.int64), counts * size) if heap is not None and len(desc) \
        else b""
    flat = np.frombuffer(data, np.uint8)
    if col.element == "A":
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        raw = pa.BinaryArray.from_buffers(pa.binary(), len(counts), [
            None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(flat.tobytes())])
        try:
            text = raw.cast(pa.string())
        except pa.ArrowInvalid:
            text = pa.array([v.decode("latin-1") for v in raw.to_pylist()], pa.string())
        return pc.utf8_rtrim(text, characters=" \x00")
    inner = Column(col.name, col.element, 1, 0, size, None, col.scale, col.zero, col.null)
    values = bin_column(inner, flat.reshape(-1, size))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def _ascii_column(col: Column, raw: np.ndarray) -> tuple[pa.Array, np.ndarray | None]:
    """One ASCII-table field -> Arrow, plus a mask of rows whose value does not parse."""
    import pyarrow.compute as pc
    text = _strings(raw, col.width, " ")
    if col.code == "A":
        return text, None
    text = pc.utf8_trim_whitespace(text)
    empty = pc.or_(pc.equal(text, ""), pc.equal(text, col.null or "\x00"))
    text = pc.if_else(empty, pa.scalar(None, pa.string()), text)
    if col.code != "I":
        text = pc.replace_substring(pc.replace_substring(text, "D", "E"), "d", "e")
    target = pa.int64() if col.code == "I" else pa.float64()
    bad = None
    try:
        vals = text.cast(target)
    except (pa.ArrowInvalid, ValueError):
        py = [_parse_ascii(v, target) for v in text.to_pylist()]
        bad = np.array([v is ValueError for v in py])
        vals = pa.array([None if v is ValueError else v for v in py], target)
    if col.code != "I" and col.decimals:  # no decimal point: the format implies the decimals
        implied = pc.invert(pc.fill_null(pc.match_substring(text, "."), True))
        vals = pc.if_else(implied, pc.divide(vals, 10.0 ** col.decimals), vals)
    if col.scale != 1.0 or col.zero != 0.0:
        vals = pc.add(pc.multiply(vals.cast(pa.float64()), col.scale), col.zero)
    return vals, bad


def _parse_ascii(value: str | None, target: pa.DataType) -> Any:
    if value is None:
        return None
    try:
        return int(value) if pa.types.is_integer(target) else float(value)
    except ValueError:
        return ValueError


def image_rows(part: Part, first: int, data: bytes, max_elements: int = 1 << 31) -> pa.Table:
    """Image lines ``first..`` from their raw bytes: row, [plane], value (list of pixels)."""
    pix = part.image
    width = part.row_bytes // BIN_CODES[pix.code][1]
    n = len(data) // part.row_bytes
    if n * width >= max_elements:
        raise Unsupported(f"{n} image lines of {width} pixels overflow one list array")
    raw = np.frombuffer(data, BIN_CODES[pix.code][0], n * width)
    vals, mask = _numbers(raw, pix, pix.code)
    if pix.code in "BIJK" and (pix.scale != 1.0 or pix.zero != 0.0) and vals.dtype.kind == "f":
        vals = vals.astype(np.float32 if pix.code in "BI" else np.float64)
    if pix.code == "E" and vals.dtype != np.float32:
        vals = vals.astype(np.float32)
    lines = np.arange(first, first + n, dtype=np.int64)
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int64).astype(np.int32))
    value = pa.ListArray.from_arrays(offsets, pa.array(vals, mask=mask))
    cols: dict[str, pa.Array] = {}
    if part.plane_rows:
        cols["row"] = pa.array(lines % part.plane_rows)
        cols["plane"] = pa.array(lines // part.plane_rows)
    else:
        cols["row"] = pa.array(lines)
    cols["value"] = value
    return pa.table(cols)


# --- structure ---------------------------------------------------------------------------------
class FITSReader(Reader):
    """Flexible Image Transport System files (astronomy): tables and images per HDU."""

    name = "fits"
    suffixes = (".fits", ".fit", ".fts")

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        if head.startswith(b"SIMPLE  ="):
            return 95
        return 10 if path.lower().endswith(cls.suffixes) else 0

    def describe(self, source: Source, options: ReaderOptions) -> Description:
        with source.open() as f:
            def read(a: int, b: int) -> bytes:
                f.seek(a)
                return f.read(b - a)

            hdus, problems, notes = walk(read, source.size, source.path)
        state = FITSState(problems=problems)
        limit = max(options.max_record_bytes, options.chunk_size)
        tables: dict[str, pa.Schema] = {}
        used: set[str] = set()
        catalog = []
        for hdu in hdus:
            entry = hdu.catalog()
            try:
                part = make_part(hdu, table_name(hdu, used), source.size, limit, notes)
            except FITSError as exc:
                state.problems.append(("BadHeader", f"HDU {hdu.index}: {exc}", exc.offset))
                part = None
            if part is not None:
                tables[part.table] = _empty(part).schema
                state.parts.append(part)
                entry["table"] = part.table
                entry["rows"] = part.rows
                if part.columns:
                    entry["columns"] = [{"name": n, "tform": c.tform, "unit": c.unit}
                                        for n, c in zip(part.names, part.columns, strict=True)]
            if hdu.index >= CATALOG_HDUS:
                entry.pop("cards")
            catalog.append(entry)
        metadata = {"hdu_count": len(hdus), "hdus": catalog, "notes": notes,
                    "errors": [f"{m} (byte {o})" for _, m, o in state.problems]}
        return Description(tables, metadata, state)

    def plan(self, source: Source, description: Description,
             options: ReaderOptions) -> list[ChunkSpec]:
        state: FITSState = description.state
        chunk_size = options.chunk_size
        specs: list[ChunkSpec] = []
        for pos, part in enumerate(state.parts):
            per_row = part.row_bytes + part.heap_per_row
            step = max(1, chunk_size // max(per_row, 1))
            for first in range(0, part.rows, step):
                n = min(step, part.rows - first)
                specs.append(ChunkSpec(source.file_id, len(specs), part.data_offset +
                                       first * part.row_bytes, n * part.row_bytes, part.table,
                                       FITSSelector(pos, first, n), n * per_row))
        if state.problems:
            specs.append(ChunkSpec(source.file_id, len(specs), state.problems[0][2] or 0, 0,
                                   None, FITSSelector(problems=True)))
        return specs

    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: ReaderOptions, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        state: FITSState = description.state
        selector: FITSSelector = chunk.selector
        if selector.problems:
            for error_type, message, offset in state.problems:
                ctx.reject(kind="chunk", error_type=error_type, byte_offset=offset,
                           message=f"{source.path}: {message}")
            return
        pos, first, n = selector.part, selector.first, selector.rows
        part = state.parts[pos]
        data = source.read_range(chunk.offset, chunk.offset + n * part.row_bytes)
        if len(data) != n * part.row_bytes:
            raise FITSError(f"HDU {part.hdu}: expected {n * part.row_bytes} bytes at byte "
                            f"{chunk.offset}, got {len(data)} (file changed?)", chunk.offset)
        if part.kind == "image":
            yield part.table, image_rows(part, first, data)
            return
        yield part.table, self._table(source, part, chunk, data, options, ctx)

    def _table(self, source: Source, part: Part, chunk: ChunkSpec, data: bytes,
               options: ReaderOptions, ctx: ChunkContext) -> pa.Table:
        n = len(data) // part.row_bytes
        block = np.frombuffer(data, np.uint8).reshape(n, part.row_bytes)
        bad = np.zeros(n, bool)
        reasons: dict[int, str] = {}
        limit = options.max_record_bytes
        if part.kind == "bintable":
            block = _check_descriptors(part, block, source.size, limit, bad, reasons)
        arrays = []
        with _HeapReader(source, part) as heap:
            for col in part.columns:
                raw = np.ascontiguousarray(block[:, col.offset: col.offset + col.width])
                if part.kind == "bintable":
                    arrays.append(bin_column(col, raw, heap))
                    continue
                arr, col_bad = _ascii_column(col, raw)
                if col_bad is not None:
                    for i in np.flatnonzero(col_bad & ~bad):
                        reasons[int(i)] = f"column {col.name}: not a number"
                    bad |= col_bad
                arrays.append(arr)
        table = pa.Table.from_arrays(arrays, names=list(part.names))
        for i in np.flatnonzero(bad):
            at = chunk.offset + int(i) * part.row_bytes
            raw = data[at - chunk.offset:][:part.row_bytes]
            ctx.reject(error_type=ErrorCode.BAD_RECORD, byte_offset=at, raw=raw,
                       message=f"{source.path}: HDU {part.hdu} row "
                               f"{chunk.selector.first + int(i)}: "
                               f"{reasons.get(int(i), 'bad value')}")
        return table.filter(pa.array(~bad)) if bad.any() else table


def _check_descriptors(part: Part, block: np.ndarray, file_size: int, limit: int,
                       bad: np.ndarray, reasons: dict[int, str]) -> np.ndarray:
    """Mark rows whose P/Q descriptors point outside the heap; zero them so decoding is safe."""
    varlen = [c for c in part.columns if c.code in "PQ"]
    if not varlen:
        return block
    block = block.copy()
    for col in varlen:
        raw = np.ascontiguousarray(block[:, col.offset: col.offset + col.width])
        desc = raw.view(BIN_CODES[col.code][0]).astype(np.int64).reshape(-1, 2)
        count, off = desc[:, 0], desc[:, 1]
        # Bound both numbers before any arithmetic: Q descriptors could overflow int64.
        ok = (count >= 0) & (count <= limit) & (off >= 0) & (off <= part.heap_size)
        nbytes = np.where(ok, count, 0) * BIN_CODES[col.element][1]
        ok &= (nbytes <= limit) & (off + nbytes <= part.heap_size)
        ok &= part.heap_offset + off + nbytes <= file_size
        ok |= count == 0  # an empty array reads nothing, wherever it points
        block[count == 0, col.offset: col.offset + col.width] = 0
        for i in np.flatnonzero(~ok & ~bad):
            reasons[int(i)] = (f"column {col.name}: descriptor ({count[i]} elements at heap "
                               f"offset {off[i]}) lies outside the heap of {part.heap_size} "
                               f"bytes or the file, or exceeds {limit} bytes")
        bad |= ~ok
        block[~ok, col.offset: col.offset + col.width] = 0
    return block


class _HeapReader:
    """Reads heap bytes for descriptors, in windows of bounded size, through one open file."""

    WINDOW = 16 << 20

    def __init__(self, source: Source, part: Part) -> None:
        self.source, self.part, self.file = source, part, None

    def __enter__(self) -> _HeapReader:
        if any(c.code in "PQ" for c in self.part.columns):
            self.file = self.source.open()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()

    def __call__(self, offsets: np.ndarray, nbytes: np.ndarray) -> bytes:
        total = int(nbytes.sum())
        if total >= 1 << 31:
            raise Unsupported(f"{total} heap bytes in one chunk overflow a list array")
        nonempty = np.flatnonzero(nbytes > 0)
        if not len(nonempty):
            return b""
        start, size = offsets[nonempty], nbytes[nonempty]
        if np.array_equal(start[1:], start[:-1] + size[:-1]):  # written in row order: one read
            self.file.seek(self.part.heap_offset + int(start[0]))
            return self.file.read(total)
        out = np.empty(total, np.uint8)
        dest = np.concatenate([[0], np.cumsum(nbytes)])
        order = nonempty[np.argsort(offsets[nonempty], kind="stable")]
        i = 0
        while i < len(order):  # group descriptors whose span fits one read window
            lo = int(offsets[order[i]])
            j = i
            while j < len(order) and int(offsets[order[j]] + nbytes[order[j]]) - lo <= max(
                    self.WINDOW, int(nbytes[order[j]])):
                j += 1
            j = max(j, i + 1)
            hi = int(max(offsets[order[k]] + nbytes[order[k]] for k in range(i, j)))
            self.file.seek(self.part.heap_offset + lo)
            window = np.frombuffer(self.file.read(hi - lo), np.uint8)
            for k in order[i:j]:
                a = int(offsets[k]) - lo
                out[dest[k]: dest[k + 1]] = window[a: a + int(nbytes[k])]
            i = j
        return out.tobytes()


def _empty(part: Part) -> pa.Table:
    """Zero rows of the part's table: its schema comes from the same code as its data."""
    if part.kind == "image":
        return image_rows(part, 0, b"")
    if part.kind == "bintable":
        arrays = [bin_column(c, np.zeros((0, c.width), np.uint8)) for c in part.columns]
    else:
        arrays = [_ascii_column(c, np.zeros((0, c.width), np.uint8))[0] for c in part.columns]
    return pa.Table.from_arrays(arrays, names=list(part.names))

"""Derived columns (``--derive NAME=FUNC(COL)``): partition keys computed from a column.

``date``, ``year``, ``month``, ``day`` and ``hour`` of a timestamp or date column (in the
column's own time zone, so UTC for ``timestamptz``; ``hour`` of a date is 0), and
``bucket(COL, N)``: Apache Iceberg's bucket transform, ``(murmur3_x86_32(v) & 0x7FFFFFFF) %
N`` with seed 0 over the value's Iceberg byte form (integers of any width and dates as an
8-byte little-endian long, timestamps as microseconds since the epoch in the same form,
strings as UTF-8, binary as is). It is a published, fixed function: the same value lands in
the same bucket on every run, machine and Python version, and in the same bucket as Iceberg,
Spark's and Trino's Iceberg connectors, and Polars' ``mm3_hash`` would put it. NULL stays
NULL. The hash runs vectorised in numpy over the Arrow buffers (pyarrow.compute has no stable
hash of its own).

Spec parsing runs on the client at plan time; `compute` runs in the worker (`execution.hook`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.errors import UsageError

FUNCTIONS = ("date", "year", "month", "day", "hour", "bucket")
_SPEC = re.compile(r"^\s*([^=\s][^=]*?)\s*=\s*([A-Za-z_]+)\s*\((.*)\)\s*$")


@dataclass(frozen=True, slots=True)
class Derivation:
    """One derived column: ``name = func(column[, buckets])``."""

    name: str
    func: str
    column: str
    buckets: int = 0
    """``bucket`` only: how many buckets."""

    @property
    def spec(self) -> str:
        arg = f"{self.column}, {self.buckets}" if self.func == "bucket" else self.column
        return f"{self.name}={self.func}({arg})"

    def output_type(self, source: pa.DataType) -> pa.DataType:
        """The derived column's type; a usage error when ``func`` cannot take ``source``."""
        temporal = pa.types.is_timestamp(source) or pa.types.is_date(source)
        if self.func == "bucket":
            if not (pa.types.is_integer(source) or temporal or _is_text(source)
                    or _is_bytes(source)):
                raise UsageError(f"--derive {self.spec}: bucket() takes an integer, date, "
                                 f"timestamp, string or binary column; {self.column} is "
                                 f"{source}")
            return pa.int32()
        if not temporal:
            hint = (f" (declare its type: --schema {self.column}=timestamp)"
                    if _is_text(source) else "")
            raise UsageError(f"--derive {self.spec}: {self.func}() takes a timestamp or date "
                             f"column; {self.column} is {source}{hint}")
        return pa.date32() if self.func == "date" else pa.int64()

    def compute(self, column: pa.ChunkedArray | pa.Array) -> pa.Array:
        """The derived values for one batch (vectorised)."""
        import pyarrow.compute as pc  # here, not at import: see readers/_compute.py
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if self.func == "bucket":
            return bucket(column, self.buckets)
        if self.func == "date":
            return column if pa.types.is_date(column.type) else pc.cast(column, pa.date32())
        if self.func == "hour":
            if pa.types.is_date(column.type):
                return pc.if_else(pc.is_null(column), pa.scalar(None, pa.int64()),
                                  pa.scalar(0, pa.int64()))
            return pc.hour(column)
        return getattr(pc, self.func)(column)


def parse_derive(specs: str | Iterable[str] | None) -> tuple[Derivation, ...]:
    """``["day=date(ts)", "b=bucket(id, 64)"]`` (or one string of them, ``;``-separated)."""
    if specs is None:
        return ()
    if isinstance(specs, str):
        specs = [specs]
    out: list[Derivation] = []
    for item in specs:
        if isinstance(item, Derivation):
            out.append(item)
            continue
        for text in (p for p in str(item).split(";") if p.strip()):
            out.append(_parse_one(text))
    names = [d.name for d in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"--derive: {', '.join(dupes)} is derived more than once")
    return tuple(out)


def _parse_one(text: str) -> Derivation:
    match = _SPEC.match(text)
    usage = ("expected NAME=FUNC(COL) with FUNC one of date, year, month, day, hour, or "
             "NAME=bucket(COL, N)")
    if not match:
        raise UsageError(f"--derive {text.strip()!r}: {usage}")
    name, func, args = match.group(1), match.group(2).lower(), match.group(3)
    if func not in FUNCTIONS:
        raise UsageError(f"--derive {text.strip()!r}: unknown function {func!r}; {usage}")
    if func == "bucket":
        column, _, count = args.rpartition(",")
        try:
            buckets = int(count)
        except ValueError:
            raise UsageError(f"--derive {text.strip()!r}: bucket(COL, N) needs a number of "
                             "buckets N") from None
        if not column.strip() or buckets < 1:
            raise UsageError(f"--derive {text.strip()!r}: bucket(COL, N) needs a column and "
                             "N >= 1")
        return Derivation(name, func, column.strip(), buckets)
    if not args.strip() or "," in args:
        raise UsageError(f"--derive {text.strip()!r}: {func}() takes one column")
    return Derivation(name, func, args.strip())


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


# --- Iceberg's bucket transform, vectorised ------------------------------------------------------
_C1 = np.uint32(0xCC9E2D51)
_C2 = np.uint32(0x1B873593)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _mix_block(h: np.ndarray, k: np.ndarray) -> np.ndarray:
    k = _rotl(k * _C1, 15) * _C2
    h = _rotl(h ^ k, 13)
    return h * np.uint32(5) + np.uint32(0xE6546B64)


def _fmix(h: np.ndarray, length: np.ndarray) -> np.ndarray:
    h = h ^ length.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def murmur3_longs(values: np.ndarray) -> np.ndarray:
    """murmur3_x86_32 (seed 0) of each int64 as 8 little-endian bytes (Iceberg ``hashLong``)."""
    words = np.ascontiguousarray(values, dtype="<i8").view("<u4").reshape(-1, 2)
    h = np.zeros(len(values), dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = _mix_block(h, words[:, 0].astype(np.uint32))
        h = _mix_block(h, words[:, 1].astype(np.uint32))
        return _fmix(h, np.full(len(values), 8, dtype=np.uint32))


def murmur3_bytes(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """murmur3_x86_32 (seed 0) of each byte string ``data[offsets[i]:offsets[i+1]]``.

    One numpy pass per 4-byte block position, over the values still that long.
    """
    starts = offsets[:-1].astype(np.int64)
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    padded = np.concatenate([data, np.zeros(4, dtype=np.uint8)]).astype(np.uint32)
    h = np.zeros(len(lengths), dtype=np.uint32)
    with np.errstate(over="ignore"):
        blocks = lengths // 4
        rows = np.flatnonzero(blocks > 0)
        j = 0
        while rows.size:
            at = starts[rows] + 4 * j
            k = (padded[at] | (padded[at + 1] << np.uint32(8)) | (padded[at + 2] << np.uint32(16))
                 | (padded[at + 3] << np.uint32(24)))
            h[rows] = _mix_block(h[rows], k)
            j += 1
            rows = rows[blocks[rows] > j]
        tail = lengths % 4
        rows = np.flatnonzero(tail)
        if rows.size:
            at = starts[rows] + 4 * blocks[rows]
            k = np.zeros(rows.size, dtype=np.uint32)
            for b in range(3):
                has = tail[rows] > b
                k[has] |= padded[at[has] + b] << np.uint32(8 * b)
            k = _rotl(k * _C1, 15) * _C2
            h[rows] ^= k
        return _fmix(h, lengths)


def iceberg_hash(values: pa.Array) -> np.ndarray:
    """Iceberg's 32-bit hash of each value (nulls get an arbitrary hash: mask them)."""
    import pyarrow.compute as pc
    t = values.type
    if pa.types.is_integer(t) or pa.types.is_date(t):
        longs = pc.cast(values, pa.int64() if pa.types.is_integer(t) else pa.int32(),
                        safe=False)
        longs = pc.cast(longs, pa.int64()).fill_null(0)
        return murmur3_longs(longs.to_numpy(zero_copy_only=False))
    if pa.types.is_timestamp(t):
        micros = _to_micros(values)
        return murmur3_longs(micros)
    if _is_text(t) or _is_bytes(t):
        raw = values.cast(pa.large_binary())
        _, offsets_buf, data_buf = raw.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[raw.offset:raw.offset + len(raw) + 1]
        data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
                else np.zeros(0, dtype=np.uint8))
        return murmur3_bytes(data, offsets)
    raise TypeError(f"bucket() cannot hash {t}")


def _to_micros(values: pa.Array) -> np.ndarray:
    """Microseconds since the epoch (UTC instant for zoned timestamps; ns are floored)."""
    import pyarrow.compute as pc
    unit = values.type.unit
    raw = pc.cast(values.cast(pa.timestamp(unit)), pa.int64()).fill_null(0)
    arr = raw.to_numpy(zero_copy_only=False).astype(np.int64)
    if unit == "s":
        return arr * 1_000_000
    if unit == "ms":
        return arr * 1_000
    if unit == "ns":
        return np.floor_divide(arr, 1_000)
    return arr


def bucket(values: pa.Array, n: int) -> pa.Array:
    """Iceberg ``bucket[n]`` of each value, as int32; NULL stays NULL."""
    hashed = iceberg_hash(values)
    buckets = ((hashed & np.uint32(0x7FFFFFFF)) % np.uint32(n)).astype(np.int32)
    mask = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
    return pa.array(buckets, type=pa.int32(), mask=mask)


__all__ = ["Derivation", "FUNCTIONS", "parse_derive", "bucket", "iceberg_hash",
           "murmur3_longs", "murmur3_bytes"]

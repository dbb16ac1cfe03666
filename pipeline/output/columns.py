"""Arrow arrays from Python values, built from buffers.

``pa.array`` and ``Table.from_pydict`` on Python objects import pandas inside pyarrow (half a
second and 40 MiB in a worker that otherwise never needs it), so the few small tables a
worker builds from Python values (``_errors`` rows, the ``_file_id`` column) are assembled
from numpy-backed buffers instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_MAX_OFFSET = 2**31 - 1


def _validity(present: np.ndarray) -> tuple[pa.Buffer | None, int]:
    nulls = int(present.size - np.count_nonzero(present))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(present, bitorder="little")), nulls


def text_array(values: Sequence[str | bytes | None], type_: pa.DataType | None = None
               ) -> pa.Array:
    """A string (default) or binary array; str values that cannot be UTF-8 (lone
    surrogates) get replacement characters."""
    type_ = pa.string() if type_ is None else type_
    encoded = [v.encode("utf-8", "replace") if isinstance(v, str) else v for v in values]
    present = np.fromiter((v is not None for v in encoded), dtype=bool, count=len(encoded))
    lengths = np.fromiter((len(v) if v is not None else 0 for v in encoded), dtype=np.int64,
                          count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _MAX_OFFSET:
        raise ValueError(f"{offsets[-1]} bytes do not fit one {type_} array")
    validity, nulls = _validity(present)
    data = b"".join(v for v in encoded if v is not None)
    return pa.Array.from_buffers(type_, len(encoded), [
        validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)], null_count=nulls)


def int64_array(values: Sequence[int | None]) -> pa.Array:
    present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    data = np.fromiter((v if v is not None else 0 for v in values), dtype=np.int64,
                       count=len(values))
    validity, nulls = _validity(present)
    return pa.Array.from_buffers(pa.int64(), len(values), [validity, pa.py_buffer(data)],
                                 null_count=nulls)


def timestamp_array(seconds: Sequence[float | None]) -> pa.Array:
    """UTC timestamps in microseconds from POSIX seconds, rounded half to even to the
    microsecond, as ``datetime.fromtimestamp`` rounds them (one datetime per value cost
    a tenth of a second at the end of a run over 10,000 files)."""
    present = np.fromiter((v is not None for v in seconds), dtype=bool, count=len(seconds))
    data = np.fromiter((v if v is not None else 0.0 for v in seconds), dtype=np.float64,
                       count=len(seconds))
    # The fraction alone is scaled, as datetime does: scaling the whole value would round
    # one in twelve of them the other way.
    frac, whole = np.modf(data)
    micros = whole.astype(np.int64) * 1_000_000 + np.rint(frac * 1e6).astype(np.int64)
    validity, nulls = _validity(present)
    return pa.Array.from_buffers(pa.timestamp("us", tz="UTC"), len(seconds),
                                 [validity, pa.py_buffer(micros)], null_count=nulls)


def int64_from_numpy(values: np.ndarray) -> pa.Array:
    data = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def repeated_text(value: str, count: int) -> pa.Array:
    """``count`` copies of one string, built as buffers: ``pa.repeat`` appends them one at a
    time, which shows in the profile of every chunk."""
    data = value.encode("utf-8", "replace")
    if len(data) * count > _MAX_OFFSET:
        raise ValueError(f"{count} copies of {len(data)} bytes do not fit one string array")
    offsets = np.arange(count + 1, dtype=np.int32) * np.int32(len(data))
    return pa.Array.from_buffers(pa.string(), count, [
        None, pa.py_buffer(offsets), pa.py_buffer(data * count)])


def repeated_id(value: str, count: int) -> pa.DictionaryArray:
    """``count`` copies of one string as a dictionary array of one value: what a Parquet
    writer can store as dictionary pages without hashing every row (see
    `pipeline.output.writer.FragmentWriter`)."""
    # All from buffers: pa.array() of a list imports pandas, which a text worker must not.
    return pa.DictionaryArray.from_buffers(
        pa.dictionary(pa.int32(), pa.string()), count,
        [None, pa.py_buffer(np.zeros(count, dtype=np.int32))], repeated_text(value, 1))

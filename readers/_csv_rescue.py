"""Finding the values of a CSV column that do not convert, without re-parsing the chunk per row.

When a value does not convert to its column's type, pyarrow fails the whole parse. The chunk is
then parsed once more with the failing columns as text (so every row comes back), and only
those columns' values go through pyarrow's CSV converter again, as a one-column CSV: the same
converter, so exactly the same values are rejected as a parse of each record alone would
reject (``" 35 "`` converts to an int, ``"3.5"`` does not). pyarrow names the first value that
fails (``invalid value '3.5'``): every equal value fails too, so one more conversion per
*distinct* bad value finds them all; a message without a value falls back to bisecting the
column's values (in memory, no re-tokenising of the chunk).
"""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

_FAILED = re.compile(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to ")
_ROW = re.compile(r"^.*?(?:Row #\d+: )?(?=CSV conversion error)")
_VALUE = re.compile(r"CSV conversion error to [^:]+: invalid value '(.*)'\Z", re.S)
#: Conversions tried with pyarrow's named value before bisecting what is left.
MAX_NAMED = 32


def failing_column(exc: BaseException, names: list[str]) -> str | None:
    """The column a conversion error names (None: not a conversion error)."""
    m = _FAILED.search(str(exc))
    if m is None or int(m.group(1)) >= len(names):
        return None
    return names[int(m.group(1))]


def as_text(kind: pa.DataType) -> pa.DataType:
    """The type a failing column is parsed as so that every row comes back."""
    return pa.binary() if pa.types.is_string(kind) or pa.types.is_large_string(kind) \
        else pa.string()


def convert(values: pa.ChunkedArray | pa.Array, kind: pa.DataType,
            options: pacsv.ConvertOptions) -> tuple[np.ndarray, pa.Array, list[str]]:
    """(bad mask, the good values converted, why each bad value failed) of one column's text.

    ``options``: the chunk's convert options (null handling); their column types are ignored.
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_binary(arr.type):
        return _utf8(arr, kind)
    bad = np.zeros(len(arr), bool)
    why: dict[int, str] = {}
    for _ in range(MAX_NAMED):
        keep = np.flatnonzero(~bad)
        rest = arr.take(pa.array(keep)) if bad.any() else arr
        try:
            return bad, _one_column(rest, kind, options), [why[i] for i in np.flatnonzero(bad)]
        except pa.ArrowInvalid as exc:
            m = _VALUE.search(str(exc).splitlines()[0])
            if m is None:
                break
            hit = pc.fill_null(pc.equal(arr, pa.scalar(m.group(1), arr.type)), False)
            new = hit.to_numpy(zero_copy_only=False) & ~bad
            if not new.any():  # pyarrow showed the value otherwise than written: bisect
                break
            message = f"CSV conversion error to {kind}: invalid value {m.group(1)!r}"
            for i in np.flatnonzero(new):
                why[int(i)] = message
            bad |= new
    # Bisect the values that are left (each test is a conversion of a slice, no re-parse).
    keep = np.flatnonzero(~bad)
    stack = [(0, len(keep))]
    while stack:
        lo, hi = stack.pop()
        if lo >= hi:
            continue
        try:
            _one_column(arr.take(pa.array(keep[lo:hi])), kind, options)
        except pa.ArrowInvalid as exc:
            if hi - lo == 1:
                bad[keep[lo]] = True
                why[int(keep[lo])] = _ROW.sub("", str(exc).splitlines()[0], count=1)
                continue
            mid = (lo + hi) // 2
            stack += [(mid, hi), (lo, mid)]
    rest = arr.take(pa.array(np.flatnonzero(~bad)))
    return bad, _one_column(rest, kind, options), [why[i] for i in np.flatnonzero(bad)]


def _one_column(values: pa.Array, kind: pa.DataType, options: pacsv.ConvertOptions
                ) -> pa.Array:
    """``values`` (text) through pyarrow's CSV converter to ``kind``, as the chunk's parse
    would convert them (a null is an empty line, read as NULL; text is quoted)."""
    if not len(values):
        return pa.array([], kind)
    buf = io.BytesIO()
    pacsv.write_csv(pa.table({"v": values}), buf, pacsv.WriteOptions(include_header=False))
    convert_options = pacsv.ConvertOptions(
        column_types={"v": kind}, null_values=options.null_values,
        strings_can_be_null=options.strings_can_be_null,
        quoted_strings_can_be_null=options.quoted_strings_can_be_null,
        true_values=options.true_values, false_values=options.false_values,
        timestamp_parsers=options.timestamp_parsers)
    table = pacsv.read_csv(
        pa.py_buffer(buf.getvalue()),
        read_options=pacsv.ReadOptions(column_names=["v"], use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False),
        convert_options=convert_options)
    got = table.column(0).combine_chunks()
    if len(got) != len(values):
        raise ValueError(f"{len(got)} values came back of {len(values)}")
    return got


def _utf8(arr: pa.Array, kind: pa.DataType) -> tuple[np.ndarray, pa.Array, list[str]]:
    """A text column's bytes: the values that are not UTF-8 are bad (bisected in memory)."""
    bad = np.zeros(len(arr), bool)
    stack = [(0, len(arr))]
    while stack:
        lo, hi = stack.pop()
        if lo >= hi:
            continue
        try:
            arr.slice(lo, hi - lo).cast(kind)
        except pa.ArrowInvalid:
            if hi - lo == 1:
                bad[lo] = True
                continue
            mid = (lo + hi) // 2
            stack += [(mid, hi), (lo, mid)]
    good = arr.filter(pa.array(~bad)).cast(kind)
    return bad, good, [f"CSV conversion error to {kind}: invalid UTF8 data"] * int(bad.sum())


__all__ = ["failing_column", "as_text", "convert", "MAX_NAMED"]

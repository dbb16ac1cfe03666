"""Finding the values of a CSV column that do not convert, without re-parsing the chunk per row.

When a value does not convert to its column's type, pyarrow fails the whole parse. The chunk is
then parsed once more with the failing columns as text (so every row comes back), and only
those columns' values go through pyarrow's CSV converter again, as a one-column CSV: the same
converter, so exactly the same values are rejected as a parse of each record alone would
reject (``" 35 "`` converts to an int, ``"3.5"`` does not). pyarrow names the first value that
fails (``invalid value '3.5'``): every equal value fails too, so one more conversion per
*distinct* bad value finds them all; a message without a value falls back to bisecting the
column's values (in memory, no re-tokenising of the chunk).

A streaming chunk does this piece by piece (`LooseColumns`): only the piece that failed is
parsed again, and the column stays text for the rest of the chunk, where its values are
checked with the values already known to be bad set aside first (a value converts or not on
its own, whatever its neighbours), then an Arrow cast for numbers (the same parser the CSV
converter runs after trimming spaces, so a cast that succeeds is what the converter gives)
and the converter itself for anything else.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
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
    import pyarrow.compute as pc  # here, not at import: see readers/_compute.py
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_binary(arr.type):
        return _utf8(arr, kind)
    bad = np.zeros(len(arr), bool)
    why: dict[int, str] = {}
    for _ in range(MAX_NAMED):
        keep = np.flatnonzero(~bad)
        rest = arr.take(_index(keep)) if bad.any() else arr
        try:
            return bad, _one_column(rest, kind, options), [why[i] for i in np.flatnonzero(bad)]
        except pa.ArrowInvalid as exc:
            m = _VALUE.search(str(exc).splitlines()[0])
            if m is None:
                break
            new = _bits(pc.is_in(arr, value_set=_texts([m.group(1)], arr.type))) & ~bad
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
            _one_column(arr.take(_index(keep[lo:hi])), kind, options)
        except pa.ArrowInvalid as exc:
            if hi - lo == 1:
                bad[keep[lo]] = True
                why[int(keep[lo])] = _ROW.sub("", str(exc).splitlines()[0], count=1)
                continue
            mid = (lo + hi) // 2
            stack += [(mid, hi), (lo, mid)]
    rest = arr.take(_index(np.flatnonzero(~bad)))
    return bad, _one_column(rest, kind, options), [why[i] for i in np.flatnonzero(bad)]


def convert_known(values: pa.ChunkedArray | pa.Array, kind: pa.DataType,
                  options: pacsv.ConvertOptions, known: dict[Any, str]
                  ) -> tuple[np.ndarray, pa.Array, list[str]]:
    """`convert`, with ``known`` (bad value -> why) set aside first and added to.

    The values that are not known to be bad go through a cast when that is exact for
    ``kind`` (`_cast`), through `convert` otherwise or when the cast fails.
    """
    import pyarrow.compute as pc
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    bad = np.zeros(len(arr), bool)
    if known:
        values = _texts(list(known), arr.type)
        # (equal is several times faster than is_in, which hashes every value)
        bad = _bits(pc.equal(arr, values[0]) if len(values) == 1
                    else pc.is_in(arr, value_set=values))
    rest = arr.filter(_mask(~bad)) if bad.any() else arr
    good = _cast(rest, kind)
    why = [known[v] for v in arr.filter(_mask(bad)).to_pylist()] if bad.any() else []
    if good is None:
        mask, good, reasons = convert(rest, kind, options)
        if mask.any():
            for value, reason in zip(rest.filter(_mask(mask)).to_pylist(), reasons,
                                     strict=True):
                known.setdefault(value, reason)
            new = np.flatnonzero(~bad)[mask]
            bad[new] = True
            why = [known[v] for v in arr.filter(_mask(bad)).to_pylist()]
    return bad, good, why


def _cast(values: pa.Array, kind: pa.DataType) -> pa.Array | None:
    """``values`` cast to ``kind`` when that gives what pyarrow's CSV converter gives, else None.

    Numbers: the converter trims spaces, then runs the parser the cast runs; a value with
    spaces fails the cast, so a cast that succeeds converted every value as the converter
    would. Text from bytes: both check UTF-8. Other types (booleans, timestamps, decimals, ...)
    have converter options of their own: None.
    """
    exact = ((pa.types.is_string(values.type)
              and (pa.types.is_integer(kind) or pa.types.is_floating(kind)))
             or (pa.types.is_binary(values.type) and pa.types.is_string(kind)))
    if not exact:
        return None
    try:
        return values.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


class LooseColumns:
    """The columns of a chunk read as text since one of their values did not convert.

    ``types``: the columns' real types (they never change: a value that does not convert is
    rejected, not the column widened); ``options``: how the text is converted, ``convert_options``
    of the types: the text parse already read the file's null values as NULL, which the
    one-column CSV writes as an empty field, so that is its only null value.
    """

    def __init__(self, names: list[str], types: Mapping[str, pa.DataType],
                 options: pacsv.ConvertOptions) -> None:
        self.names = names
        self.types = dict(types)
        self.options = options
        self.known: dict[str, dict[Any, str]] = {}
        """Per loose column, the values known not to convert and why."""
        self.parse_types = dict(types)
        """The types to parse with: the loose columns as text."""

    def __bool__(self) -> bool:
        return bool(self.known)

    def widen(self, exc: BaseException) -> bool:
        """Read the column a conversion error names as text from now on; False when the error
        names none, or one that is text already (then this cannot help)."""
        column = failing_column(exc, self.names)
        if column is None or column in self.known or column not in self.types:
            return False
        self.known[column] = {}
        self.parse_types[column] = as_text(self.types[column])
        return True

    def check(self, table: pa.Table) -> tuple[np.ndarray, dict[int, str], dict[str, Any]]:
        """(rows to reject, why each is rejected, the loose columns converted) of ``table``,
        parsed with `parse_types`. A row bad in several columns is rejected for the first
        (as a parse of the record alone would say)."""
        reject = np.zeros(table.num_rows, bool)
        why: dict[int, str] = {}
        converted: dict[str, tuple[np.ndarray, pa.Array]] = {}
        for column in sorted(self.known, key=self.names.index):
            kind = self.types[column]
            mask, good, reasons = convert_known(table.column(column), kind, self.options,
                                                self.known[column])
            converted[column] = (mask, good)
            for i, reason in zip(np.flatnonzero(mask), reasons, strict=True):
                why.setdefault(int(i), f"In CSV column #{self.names.index(column)}: {reason}")
            reject |= mask
        return reject, why, converted

    def keep(self, table: pa.Table, reject: np.ndarray, converted: dict[str, Any]
             ) -> pa.Table:
        """``table`` without the rejected rows, its loose columns converted."""
        out = table
        if reject.any():
            # Slices of the parsed rows instead of a filtered copy: the bad rows are few.
            cuts = np.flatnonzero(reject)
            bounds = zip(np.concatenate(([0], cuts + 1)), np.concatenate((cuts, [len(reject)])),
                         strict=True)
            out = pa.concat_tables([table.slice(int(a), int(b - a)) for a, b in bounds
                                    if b > a] or [table.slice(0, 0)])
        keep = ~reject
        for column, (mask, good) in converted.items():
            values = good.filter(_mask(keep[~mask])) if reject.any() else good
            i = out.schema.get_field_index(column)
            out = out.set_column(i, pa.field(column, self.types[column]), values)
        return out


# Arrow arrays from numpy and back without ``pa.array``/``to_numpy``/``pa.scalar``: those
# import pandas on first use, which a worker would otherwise pay for its first bad value.

def _mask(bits: np.ndarray) -> pa.BooleanArray:
    """A numpy bool array as an Arrow one."""
    packed = np.packbits(bits, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(bits), [None, pa.py_buffer(packed)])


def _index(positions: np.ndarray) -> pa.Array:
    """Numpy positions as an Arrow int64 array (for ``take``)."""
    positions = np.ascontiguousarray(positions, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(positions), [None, pa.py_buffer(positions)])


def _bits(flags: pa.Array) -> np.ndarray:
    """An Arrow bool array as numpy (null: False)."""
    import pyarrow.compute as pc
    out = np.zeros(len(flags), bool)
    hits = pc.indices_nonzero(flags)
    if len(hits):
        out[np.frombuffer(hits.buffers()[1], np.uint64, len(hits), hits.offset * 8)] = True
    return out


def _texts(values: list[str] | list[bytes], kind: pa.DataType) -> pa.Array:
    """Python strings or bytes as an Arrow string or binary array of type ``kind``."""
    raw = [v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v for v in values]
    offsets = np.zeros(len(raw) + 1, np.int32)
    offsets[1:] = np.cumsum([len(r) for r in raw])
    return pa.Array.from_buffers(kind, len(raw), [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(b"".join(raw))])


def _one_column(values: pa.Array, kind: pa.DataType, options: pacsv.ConvertOptions
                ) -> pa.Array:
    """``values`` (text) through pyarrow's CSV converter to ``kind``, as the chunk's parse
    would convert them (a null is an empty line, read as NULL; text is quoted)."""
    if not len(values):
        return pa.nulls(0, kind)
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
    good = arr.filter(_mask(~bad)).cast(kind)
    return bad, good, [f"CSV conversion error to {kind}: invalid UTF8 data"] * int(bad.sum())


__all__ = ["failing_column", "as_text", "convert", "convert_known", "LooseColumns", "MAX_NAMED"]

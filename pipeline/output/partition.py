"""Hive partitioning: split a table by column values into ``col=value`` directories, safely.

Escaping: ASCII letters, digits, ``-``, ``_`` and ``.`` are written as they are, and so are
letters, marks and digits of other scripts (``é``, ``中``: DuckDB, pyarrow and Spark read
UTF-8 names); every other character (``/``, ``%``, ``=``, ``~``, spaces, controls, NUL,
symbols) is percent-encoded byte by byte (``%2F``), as is a leading dot. So no value can add a
path separator, climb with ``..`` or hide a file, and DuckDB, pyarrow and Spark decode the
names back to the value.

NULL is ``__HIVE_DEFAULT_PARTITION__`` and the empty string an empty segment (``col=``), which
is how DuckDB and pyarrow read them back. The string ``"__HIVE_DEFAULT_PARTITION__"`` itself
is written escaped (``%5F%5FHIVE_DEFAULT_PARTITION__``): DuckDB reads it back as that string;
pyarrow (and Spark) decode before they look for the marker, and read it as NULL.

Long values: a file name holds at most 255 bytes, so a ``col=value`` segment whose escaped
form would be longer is cut, on a character boundary, and ends in ``~`` and a 16-digit hash
of the whole value (a ``~`` in a value is always escaped, so a cut value never equals a
written one). With a short column name that keeps values up to about 250 bytes of letters and
digits (80 Chinese characters) exactly, or about 80 characters that all need escaping.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from pipeline.output.columns import int64_from_numpy
from readers._compute import DictionaryEncodeOptions, call

NULL_VALUE = "__HIVE_DEFAULT_PARTITION__"
MAX_NAME_BYTES = 255
"""Longest file name most filesystems allow (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)."""
MAX_COLUMN_BYTES = 128
"""Longest escaped column name in a segment: the value keeps at least the rest."""
_HASH = 16
_ASCII_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def _escape_char(c: str) -> str:
    if c in _ASCII_SAFE or (c > "\x7f" and unicodedata.category(c)[0] in "LMN"):
        return c
    return "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))


def _escaped(text: str, limit: int) -> str:
    """``text`` escaped, cut to ``limit`` UTF-8 bytes (with a hash of ``text``) if longer."""
    pieces = [_escape_char(c) for c in text]
    if pieces and pieces[0] == ".":
        pieces[0] = "%2E"
    if text == NULL_VALUE:
        pieces[:2] = ["%5F", "%5F"]
    sizes = [len(p) if p.isascii() else len(p.encode("utf-8")) for p in pieces]
    if sum(sizes) <= limit:
        return "".join(pieces)
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                             digest_size=_HASH // 2).hexdigest()
    budget, kept = limit - 1 - _HASH, 0
    for size in sizes:
        if budget < size:
            break
        budget -= size
        kept += 1
    return "".join(pieces[:kept]) + "~" + digest


def escape_value(value: object, column: str = "") -> str:
    """The directory-safe text of one partition value (in the segment of ``column``)."""
    if value is None:
        return NULL_VALUE
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    room = MAX_NAME_BYTES - 1 - len(escape_column(column).encode("utf-8"))
    return _escaped(text, room)


def split(table: pa.Table, columns: Sequence[str]) -> Iterator[tuple[str, pa.Table]]:
    """``(relative dir, rows without the partition columns)`` for each distinct value combo."""
    for rel, _, rows in split_values(table, columns):
        yield rel, rows


def split_values(table: pa.Table, columns: Sequence[str]
                 ) -> Iterator[tuple[str, tuple[object, ...], pa.Table]]:
    """`split`, with each combo's values as Python objects (None for NULL): a directory name
    may be cut, its values never are."""
    if not columns:
        yield "", (), table
        return
    if not table.num_rows:
        return  # no rows, no partition to name
    codes = np.zeros(table.num_rows, dtype=np.int64)
    uniques = []
    for name in columns:
        # NULL becomes a dictionary value of its own, so the indices have no nulls.
        encoded = call("dictionary_encode", table.column(name),
                       options=DictionaryEncodeOptions("encode")).combine_chunks()
        dictionary = encoded.dictionary.to_pylist()
        codes = codes * len(dictionary) + _as_numpy(encoded.indices)
        uniques.append(dictionary)
    if codes.size and codes.max() < 1 << 15:
        codes = codes.astype(np.int16)  # numpy sorts 16-bit ints stably by radix
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(order)]))
    # One gather into partition order, then zero-copy slices: a take per partition cost
    # about as much again.
    data = table.drop_columns(list(columns)).take(int64_from_numpy(order))
    for start, end in zip(starts, ends, strict=True):
        code = int(sorted_codes[start])
        parts = []
        for dictionary in reversed(uniques):
            code, idx = divmod(code, len(dictionary))
            parts.append(dictionary[idx])
        parts.reverse()
        rel = "/".join(f"{escape_column(c)}={escape_value(v, c)}"
                       for c, v in zip(columns, parts, strict=True))
        yield rel, tuple(parts), data.slice(int(start), int(end - start))


def _as_numpy(indices: pa.Array) -> np.ndarray:
    """Dictionary indices (integers, no nulls) as a numpy view of their buffer.

    Not ``to_numpy()``: in pyarrow it imports pandas, half a second of every worker's start.
    """
    dtype = np.dtype(f"int{indices.type.bit_width}")
    if not len(indices):
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(indices.buffers()[1], dtype=dtype, count=len(indices),
                         offset=indices.offset * dtype.itemsize)


def escape_column(name: str) -> str:
    return _escaped(name, MAX_COLUMN_BYTES)

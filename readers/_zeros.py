"""Numbers written with a leading zero (``007``, ``01420``) are identifiers, not numbers.

Inference keeps such a column as text, as DuckDB's sniffer does (``0``, ``-0`` and ``0.5``
stay numbers). A chunk read after inference, in a column typed as a number, rejects a value
with a leading zero into ``_errors`` like any value that does not convert, instead of
silently writing ``1420``; a type the user declares (``--schema zip=int64``) converts it.

pyarrow's CSV converter drops the zeros before we could see them, so a cheap byte scan of
each block decides whether its numeric columns are parsed as text and checked (rare), or
parsed straight into numbers (the rest).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

PATTERN = r"^[+-]?0[0-9]"
_SCAN = 1 << 20


def is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _table(delimiter: str, quote: str | None) -> bytes:
    """Translation table: field starts -> ``,``, digits 1-9 -> ``1``, ``+`` -> ``-``."""
    table = bytearray(range(256))
    for c in (delimiter, "\n", "\r", quote or "\n"):
        table[ord(c)] = ord(",")
    for d in b"123456789":
        table[d] = ord("1")
    table[ord("+")] = ord("-")
    if delimiter != ",":
        table[ord(",")] = ord(".")  # a comma inside a field starts nothing
    return bytes(table)


def may_have_leading_zeros(data: Any, delimiter: str, quote: str | None) -> bool:
    """Whether some field of ``data`` (which starts at a field start) may begin with a
    leading zero. No false negatives; false positives only cost the exact check."""
    table = _table(delimiter, quote)
    view = memoryview(data)
    size = len(view)
    patterns = (b",00", b",01", b",-00", b",-01")
    for at in range(0, size, _SCAN):
        piece = b"," + bytes(view[max(0, at - 3):min(size, at + _SCAN)]).translate(table)
        if any(p in piece for p in patterns):
            return True
    return False


def leading_zero_columns(table: pa.Table, columns: list[str]) -> list[str]:
    """The ``columns`` (text) of ``table`` holding a value with a leading zero."""
    return [c for c in columns
            if pc.any(pc.match_substring_regex(table.column(c), PATTERN)).as_py()]


def first_leading_zero(table: pa.Table, column: str) -> str:
    hits = table.filter(pc.match_substring_regex(table.column(column), PATTERN))
    return str(hits.column(column)[0])

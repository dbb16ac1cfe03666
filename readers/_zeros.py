"""Numbers written with a leading zero (``007``, ``01420``) are identifiers, not numbers.

Inference keeps such a column as text, as DuckDB's sniffer does (``0``, ``-0`` and ``0.5``
stay numbers): the head's numeric columns are parsed once more as text and checked, which costs
a describe, never a chunk. As in DuckDB, the types come from the head: a later value with a
leading zero in a column typed there as a number converts (``0042`` -> 42). ``--schema
zip=varchar`` keeps every value of such a column as text. (A check of every parse block costs
more than its worth: a byte scan of a numeric block alone costs a quarter of its parse.)
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa

from readers._compute import call, match_substring_regex

PATTERN = r"^[+-]?0[0-9]"


def is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def may_have_leading_zeros(data: Any, delimiter: str, quote: str | None) -> bool:
    """Whether some field of ``data`` (which starts at a field start) may begin with a
    leading zero. No false negatives; false positives (a ``\\n007`` inside a quoted text,
    say) only cost the exact check. One RE2 pass (a DFA: no backtracking) over the bytes,
    without copying them."""
    starts = "".join(re.escape(c) for c in {delimiter, "\n", "\r", quote or "\n"})
    buf = pa.py_buffer(data)
    offsets = pa.py_buffer(np.array([0, buf.size], np.int64).tobytes())
    whole = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, buf])
    return bool(match_substring_regex(whole, f"(?:^|[{starts}])[+-]?0[0-9]")[0].as_py())


def leading_zero_columns(table: pa.Table, columns: list[str]) -> list[str]:
    """The ``columns`` (text) of ``table`` holding a value with a leading zero."""
    return [c for c in columns
            if call("any", match_substring_regex(table.column(c), PATTERN)).as_py()]

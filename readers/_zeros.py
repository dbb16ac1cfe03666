"""Numbers written with a leading zero (``007``, ``01420``) are identifiers, not numbers.

Inference keeps such a column as text, as DuckDB's sniffer does (``0``, ``-0`` and ``0.5``
stay numbers). A chunk read after inference, in a column typed as a number, rejects a value
with a leading zero into ``_errors`` like any value that does not convert, instead of
silently writing ``1420``; a type the user declares (``--schema zip=int64``) converts it.

pyarrow's CSV converter drops the zeros before we could see them, so a byte scan of each block
(RE2) decides whether its numeric columns are parsed as text and checked (rare), or parsed
straight into numbers (the rest).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    return bool(pc.match_substring_regex(whole, f"(?:^|[{starts}])[+-]?0[0-9]")[0].as_py())


def leading_zero_columns(table: pa.Table, columns: list[str]) -> list[str]:
    """The ``columns`` (text) of ``table`` holding a value with a leading zero."""
    return [c for c in columns
            if pc.any(pc.match_substring_regex(table.column(c), PATTERN)).as_py()]


def leading_zero_mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Which of the text ``values`` start with a leading zero."""
    hits = pc.fill_null(pc.match_substring_regex(values, PATTERN), False)
    return np.asarray(hits.to_numpy(zero_copy_only=False), bool)

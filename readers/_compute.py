"""pyarrow compute kernels called by name, without importing ``pyarrow.compute``.

Importing ``pyarrow.compute`` builds a Python wrapper, with its docstring, for each of the
hundreds of kernels pyarrow registers: 55 ms, an eighth of a small job's start-up (1 MB of CSV
end to end), on the main thread before the first chunk. The kernels themselves are in
``pyarrow._compute``, which ``pyarrow.compute`` re-exports; the few that every run calls (the
leading-zero screen of inference, the writer's choice of encodings) are called from there.
Everything else imports ``pyarrow.compute`` where it is used. tests/test_compute.py holds each
call here equal to its ``pyarrow.compute`` twin.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

try:
    from pyarrow._compute import DictionaryEncodeOptions, MatchSubstringOptions, call_function
except ImportError:  # a pyarrow that moved them: the public, slower way
    from pyarrow.compute import DictionaryEncodeOptions, MatchSubstringOptions, call_function


def call(name: str, *args: Any, options: Any = None) -> Any:
    """``pyarrow.compute.<name>(*args)``, with the kernel's default options unless given."""
    return call_function(name, list(args), options)


def match_substring_regex(values: Any, pattern: str) -> pa.Array | pa.ChunkedArray:
    """``pyarrow.compute.match_substring_regex(values, pattern)`` (RE2)."""
    return call("match_substring_regex", values, options=MatchSubstringOptions(pattern))


__all__ = ["DictionaryEncodeOptions", "call", "match_substring_regex"]

"""readers._compute calls pyarrow's kernels by name without importing pyarrow.compute: each
call a run makes through it equals its pyarrow.compute twin, default options included."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from readers._compute import DictionaryEncodeOptions, call, match_substring_regex

_INTS = pa.chunked_array([[1, 2, 3, None, 3], [5, 6]])
_TEXT = pa.chunked_array([["007", "x", None, "-01", "0"], ["b"]])


@pytest.mark.parametrize(("name", "values"), [
    ("unique", _TEXT), ("dictionary_encode", _TEXT), ("count_distinct", _INTS),
    ("count_distinct", _TEXT), ("min_max", _INTS), ("pairwise_diff", _INTS.combine_chunks()),
    ("any", pa.array([False, None, True])), ("all", pa.array([True, None, False])),
    ("any", pa.array([None, None], pa.bool_())), ("all", pa.array([], pa.bool_())),
])
def test_calls_equal_pyarrow_compute(name, values) -> None:
    assert call(name, values).equals(getattr(pc, name)(values))


def test_options_equal_pyarrow_compute() -> None:
    assert match_substring_regex(_TEXT, "^[+-]?0[0-9]").equals(
        pc.match_substring_regex(_TEXT, "^[+-]?0[0-9]"))
    assert call("dictionary_encode", _TEXT, options=DictionaryEncodeOptions("encode")).equals(
        pc.dictionary_encode(_TEXT, null_encoding="encode"))

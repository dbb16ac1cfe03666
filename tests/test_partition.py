"""Hive partition split: every row lands once, in the directory named by its own values."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.output.partition import escape_value, split

values = st.one_of(st.none(), st.sampled_from(["a", "b", "", "x/y", ".."]))


@given(rows=st.lists(st.tuples(values, st.one_of(st.none(), st.integers(-2, 2))), max_size=60),
       start=st.integers(0, 5))
@settings(max_examples=150, deadline=None)
def test_split_puts_each_row_once_under_its_values(rows, start) -> None:
    table = pa.table({"k": pa.array([r[0] for r in rows], pa.string()),
                      "n": pa.array([r[1] for r in rows], pa.int64()),
                      "i": pa.array(range(len(rows)), pa.int64())}).slice(start)
    seen = []
    for rel, part in split(table, ["k", "n"]):
        assert part.column_names == ["i"]
        k, n = (segment.split("=", 1)[1] for segment in rel.split("/"))
        for i in part["i"].to_pylist():
            want_k, want_n = rows[i]
            assert (k, n) == (escape_value(want_k), escape_value(want_n))
            seen.append(i)
    assert sorted(seen) == list(range(start, len(rows)))

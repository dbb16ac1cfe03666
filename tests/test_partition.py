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


LONG_VALUES = ["中文字符测试一二三四五六七八九", "é" * 100, "ü" * 125, "x" * 240, "a b/c" * 10,
               "__HIVE_DEFAULT_PARTITION__", "~1bf03f88b60718e0", "", "naïve €", None]
CUT_VALUES = ["中" * 200, "é" * 300, "%" * 100, "x" * 10_000]


def test_values_come_back_unchanged_up_to_the_name_limit(tmp_path) -> None:
    """Non-ASCII letters are not escaped, so 45 or 200 bytes of them fit one directory name
    and read back as they were, with DuckDB and pyarrow; longer values are cut on a
    character boundary and stay distinct."""
    import json
    import os

    import duckdb
    import pyarrow.dataset as pads

    import pipeline

    values = LONG_VALUES + CUT_VALUES
    lines = [json.dumps({"id": i, "part": v}) for i, v in enumerate(values)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    report = pipeline.ingest([str(tmp_path / "in.jsonl")], out=str(out), partition_by=["part"],
                             progress=False)
    assert report.ok and report.rows == len(values)
    for _root, dirs, files in os.walk(out):
        assert all(len(name.encode()) <= 255 for name in dirs + files)
    duck = dict(duckdb.sql(f"select id, part from read_parquet('{out}/in/**/*.parquet', "
                           "hive_partitioning=true)").fetchall())
    arrow = {r["id"]: r["part"] for r in pads.dataset(out / "in", partitioning="hive")
             .to_table().to_pylist()}
    for i, value in enumerate(LONG_VALUES):
        assert duck[i] == value, (value, duck[i])
        if value == "__HIVE_DEFAULT_PARTITION__":
            assert arrow[i] is None  # pyarrow takes the decoded marker for NULL (documented)
        else:
            assert arrow[i] == value, (value, arrow[i])
    cut = [duck[len(LONG_VALUES) + i] for i in range(len(CUT_VALUES))]
    for value, back in zip(CUT_VALUES, cut, strict=True):
        prefix, _, digest = back.rpartition("~")
        assert value.startswith(prefix) and len(prefix) >= 70 and len(digest) == 16, back
    assert len(set(cut)) == len(CUT_VALUES)

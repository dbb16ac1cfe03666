"""Rare bad values (issue 16, item 9): a chunk whose values do not all convert is parsed once
more with the failing columns as text, and the converter rejects exactly the rows that
bisecting the records would (the slow path kept as the reference)."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from readers.csv import CSVReader
from readers.testing import read_file, source_of

INT = st.sampled_from(["1", "-7", " 35 ", "", '""', '"12"', "3.5", "x", "1e3"])
FLOAT = st.sampled_from(["1.5", "2", "", "nan", "inf", "x", '"4.25"', "1,5"])
BOOL = st.sampled_from(["true", "False", "1", "0", "", "maybe", "yes"])
TEXT = st.sampled_from(["a", '"b,c"', '"l1\nl2"', '"q""q"', "", "\xe9t\xe9", "z"])
GOOD = {"i": "1", "f": "1.5", "b": "true", "s": "a"}


def _lines(draw_rows: list[tuple[str, str, str, str]], extra: list[int]) -> bytes:
    out = ["i,f,b,s"]
    # The first rows are good, so inference gives int64, double, bool, string.
    out += [",".join(GOOD.values())] * 30
    for n, row in enumerate(draw_rows):
        out.append(",".join(row))
        if n in extra:
            out.append("" if n % 2 else "1,2")  # an empty line, a field-count reject
    return ("\n".join(out) + "\n").encode()


def _read(reader: CSVReader, path) -> tuple[pa.Table, list[tuple]]:
    _, pieces, rejected, _ = read_file(reader, source_of(path), {"chunk_size": 400})
    rows = pa.concat_tables([t for _, t in pieces])
    return rows, [(r.error_type, r.byte_offset, r.raw) for r in rejected]


class _Counting(CSVReader):
    fallbacks = 0

    def _rescue_by_column(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        got = super()._rescue_by_column(*args, **kwargs)
        _Counting.fallbacks += got is None
        return got


class _Bisecting(CSVReader):
    def _rescue_by_column(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return None


@settings(deadline=None, max_examples=25)
@given(st.lists(st.tuples(INT, FLOAT, BOOL, TEXT), min_size=1, max_size=40),
       st.lists(st.integers(0, 40), max_size=4))
def test_column_rescue_rejects_what_bisecting_rejects(tmp_path_factory, rows, extra) -> None:
    path = tmp_path_factory.mktemp("r") / "f.csv"
    path.write_bytes(_lines(rows, extra))
    _Counting.fallbacks = 0
    fast, fast_bad = _read(_Counting(), path)
    assert _Counting.fallbacks == 0
    slow, slow_bad = _read(_Bisecting(), path)
    assert fast.schema == slow.schema
    assert repr(fast.to_pylist()) == repr(slow.to_pylist())  # (NaN equals NaN here)
    assert sorted(fast_bad, key=str) == sorted(slow_bad, key=str)


def test_one_bad_value_costs_one_more_parse(tmp_path, monkeypatch) -> None:
    """The slow path parsed O(bad x log rows) pieces; now: the failed parse, one parse with
    the column as text, and a conversion per distinct bad value."""
    path = tmp_path / "f.csv"
    body = [f"{i},{i * 2}" for i in range(5000)]
    for i in range(1000, 5000, 400):
        body[i] = f"{i},3.5"
    path.write_text("a,b\n" + "\n".join(body) + "\n")
    calls = []
    real = CSVReader._stream

    def counting(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CSVReader, "_stream", counting)
    _, pieces, rejected, _ = read_file(CSVReader(), source_of(path), {"infer_bytes": 4096})
    assert sum(t.num_rows for _, t in pieces) == 4990
    assert [(r.error_type, r.raw) for r in rejected][:1] == [("TypeMismatch", b"1000,3.5\n")]
    assert len(rejected) == 10
    assert len(calls) <= 3

"""Rare bad values (issue 16, item 9): a piece of a chunk whose values do not all convert is
parsed once more with the failing columns as text, and the converter rejects exactly the rows
that bisecting the records would (the slow path kept as the reference)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from readers import _csv_rescue as rescue
from readers.csv import CSVReader, convert_options
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


def _read(reader: CSVReader, path, **settings) -> tuple[pa.Table, list[tuple]]:
    # Types from the good rows only (from the whole file, they would fit every value).
    _, pieces, rejected, _ = read_file(reader, source_of(path),
                                       {"chunk_size": 400, "infer_bytes": 128, **settings})
    rows = pa.concat_tables([t for _, t in pieces])
    return rows, [(r.error_type, r.byte_offset, r.raw) for r in rejected]


class _Counting(CSVReader):
    """Counts the reads of a whole chunk after a bad value (the streaming path needs none)."""

    fallbacks = 0

    def _rescue_by_column(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        _Counting.fallbacks += 1
        return super()._rescue_by_column(*args, **kwargs)


class _Bisecting(CSVReader):
    """The reference: record by record (read with ``streaming=False``)."""

    def _rescue_by_column(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return None


@settings(deadline=None, max_examples=25)
@given(st.lists(st.tuples(INT, FLOAT, BOOL, TEXT), min_size=1, max_size=40),
       st.lists(st.integers(0, 40), max_size=4), st.sampled_from([40, 120, 1 << 22]))
def test_column_rescue_rejects_what_bisecting_rejects(tmp_path_factory, rows, extra,
                                                     block) -> None:
    """Piece by piece (several pieces per chunk with the small ``block``s), the whole chunk by
    column, and record by record: the same rows, and the same rejects in the same order."""
    path = tmp_path_factory.mktemp("r") / "f.csv"
    path.write_bytes(_lines(rows, extra))
    _Counting.fallbacks = 0
    fast, fast_bad = _read(_Counting(), path, parse_block_bytes=block)
    assert _Counting.fallbacks == 0
    whole, whole_bad = _read(CSVReader(), path, streaming=False)
    slow, slow_bad = _read(_Bisecting(), path, streaming=False)
    assert fast.schema == whole.schema == slow.schema
    assert repr(fast.to_pylist()) == repr(whole.to_pylist()) == repr(slow.to_pylist())  # NaN
    assert fast_bad == whole_bad == slow_bad


def test_only_the_piece_with_a_bad_value_is_parsed_again(tmp_path, monkeypatch) -> None:
    """One chunk of many pieces: the piece holding ``3.5`` is parsed twice, every other piece
    once (after it, the column is read as text and checked; it stays int64)."""
    path = tmp_path / "f.csv"
    body = [f"{i},{i * 2}" for i in range(20_000)]
    body[12_345] = "12345,3.5"
    path.write_text("a,b\n" + "\n".join(body) + "\n")
    parsed = []
    real = CSVReader._stream

    def counting(self, data, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        parsed.append(len(data))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(CSVReader, "_stream", counting)
    block = 8 << 10
    _, pieces, rejected, chunks = read_file(CSVReader(), source_of(path),
                                            {"infer_bytes": 4096, "parse_block_bytes": block})
    assert chunks == 1
    rows = pa.concat_tables([t for _, t in pieces])
    assert rows.schema.field("b").type == pa.int64()
    assert rows.num_rows == 19_999 and 12_345 not in rows.column("a").to_pylist()
    assert [(r.error_type, r.raw) for r in rejected] == [("TypeMismatch", b"12345,3.5\n")]
    assert rejected[0].byte_offset == path.read_bytes().index(b"\n12345,3.5\n") + 1
    assert path.stat().st_size > 20 * block
    assert sum(parsed) <= path.stat().st_size + block


NUMBERS = st.lists(st.one_of(st.none(), st.text("0123456789+-.eExXnaifINF _,", max_size=8),
                             st.integers(-2**70, 2**70).map(str)), max_size=30)


@settings(deadline=None, max_examples=150)
@given(NUMBERS, st.sampled_from([pa.int8(), pa.int32(), pa.int64(), pa.uint16(), pa.uint64(),
                                 pa.float32(), pa.float64()]))
def test_a_cast_that_succeeds_converts_as_the_csv_converter(values, kind) -> None:
    """The fast path for numbers: when the cast works, pyarrow's CSV converter gives the same
    values; when the converter refuses a value, the cast fails too (then the converter runs)."""
    arr = pa.chunked_array([values], pa.string()).combine_chunks()
    cast = rescue._cast(arr, kind)
    try:
        converted = rescue._one_column(arr, kind, convert_options())
    except pa.ArrowInvalid:
        assert cast is None
        return
    if cast is not None:
        assert repr(cast.to_pylist()) == repr(converted.to_pylist())


def test_bad_values_do_not_import_pandas(tmp_path) -> None:
    """``pa.array``/``to_numpy``/``pa.scalar`` import pandas on first use: a worker process
    would pay that import for its first bad value."""
    path = tmp_path / "f.csv"
    path.write_text("a,b,c\n" + "".join(f"{i},{i}.5,x\n" for i in range(300))
                    + "7,x,\xe9\n8,1,\n\"9\",2.5,1,2\n")
    code = textwrap.dedent(f"""
        import sys
        from readers.csv import CSVReader
        from readers.testing import read_file, source_of
        _, pieces, rejected, _ = read_file(CSVReader(), source_of({str(path)!r}),
                                           {{"infer_bytes": 64}})
        assert [r.error_type for r in rejected] == ["TypeMismatch", "FieldCountMismatch"]
        print("pandas" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("kind", [pa.int64(), pa.float64(), pa.bool_(), pa.timestamp("s")])
def test_known_bad_values_are_set_aside(kind) -> None:
    """A value already found bad in an earlier piece is rejected with the same reason."""
    text = {"int64": ["1", "x", None, "2"], "double": ["1.5", "x", None, "2"],
            "bool": ["true", "x", None, "0"],
            "timestamp[s]": ["2020-01-01 00:00:00", "x", None, "2020-01-02"]}[str(kind)]
    arr = pa.chunked_array([text], pa.string())
    options = convert_options()
    known: dict = {}
    first = rescue.convert_known(arr, kind, options, known)
    assert list(known) == ["x"] and list(first[0]) == [False, True, False, False]
    again = rescue.convert_known(arr, kind, options, known)
    assert list(again[0]) == list(first[0]) and again[2] == first[2]
    assert again[1].equals(first[1])
    plain = rescue.convert(arr, kind, options)
    assert plain[2] == first[2] and plain[1].equals(first[1])


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


def test_a_record_longer_than_a_parse_block_is_read(tmp_path) -> None:
    """It used to fail pyarrow's parse ("straddling object straddles two block boundaries")
    and was rejected as a TypeMismatch."""
    path = tmp_path / "f.csv"
    path.write_text("a,b\n1,x\n2," + "y" * 300 + "\n3,z\n")
    _, pieces, rejected, _ = read_file(CSVReader(), source_of(path), {"parse_block_bytes": 64})
    assert not rejected
    assert pa.concat_tables([t for _, t in pieces]).column("b").to_pylist() == [
        "x", "y" * 300, "z"]


@settings(deadline=None, max_examples=100)
@given(st.lists(st.text("ab1,. ", min_size=1, max_size=6), min_size=1, max_size=60),
       st.booleans(), st.data())
def test_line_spans_find_the_records_every_record_start_finds(lines, final, data) -> None:
    """The quick row-to-record mapping (one line per row) agrees with the general one."""
    from readers._dialect import Dialect
    from readers.csv import _LINE_WINDOW, _line_spans

    text = ("\n".join(lines) + ("\n" if final else "")).encode()
    rows = sorted(data.draw(st.sets(st.integers(0, len(lines) - 1), min_size=1)))
    grammar = Dialect().grammar()
    starts, records = CSVReader()._row_records(text, [], grammar)
    expected = [(int(starts[records[i]]), int(starts[records[i] + 1])) for i in rows]
    assert _line_spans(memoryview(text), rows, len(lines), grammar) == expected
    assert _line_spans(text, rows, len(lines) + 1, grammar) is None  # an empty line somewhere
    if not final:
        return
    copies = 2 * _LINE_WINDOW // len(text) + 1  # several windows
    big, many = text * copies, len(lines) * copies
    starts, records = CSVReader()._row_records(big, [], grammar)
    far = [r + many - len(lines) for r in rows]
    assert _line_spans(big, far, many, grammar) == [
        (int(starts[records[i]]), int(starts[records[i] + 1])) for i in far]

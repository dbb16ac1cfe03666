"""Fuzzing the JSON lines reader: generated files end as rows or `_errors` rows, nothing else.

Generated inputs mix valid records (type changes across lines, nested lists and structs, empty
objects, timestamps with and without zones, long values) with hostile lines: top-level values
that are not objects, nesting around and far past the depth limit, invalid UTF-8, lone
surrogate escapes, several values on one line, bare CRs, garbage bytes, CRLF and blank lines.
For every file, at chunk sizes from a few bytes up:

- the reader neither crashes the process nor hangs (pytest-timeout), and its Arrow memory
  stays bounded;
- every non-blank line is exactly one row or one record-level `_errors` row whose offset and
  raw bytes are that line's (rows + rejected == non-blank lines);
- lines that must be rejected are, and valid records are rows;
- the rows are valid Arrow that Parquet stores and DuckDB reads back.

A small end-to-end property runs the same inputs through `pipeline.ingest` and reads every
table, the catalog and `_errors` back with DuckDB.

Budget: about 15 s in the normal suite. More examples on demand::

    CHUNKMILL_FUZZ_EXAMPLES=2000 python3 -m pytest -q tests/fuzz/test_fuzz_json.py

(the end-to-end property runs a twentieth as many).
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_reader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline
from readers._encoding import NotUTF8, is_utf8
from readers._jsonlines import MAX_DEPTH

EXAMPLES = int(os.environ.get("CHUNKMILL_FUZZ_EXAMPLES", "60"))
#: The suite replays the same examples every run (a CI result must not depend on luck); a
#: budget given on demand (or a seed) explores new ones.
EXPLORE = "CHUNKMILL_FUZZ_EXAMPLES" in os.environ or "CHUNKMILL_FUZZ_SEED" in os.environ
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not EXPLORE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
END_TO_END = settings(FUZZ, max_examples=max(2, EXAMPLES // 20))
WHITESPACE = b" \t\r\n"
_POOLS: list[pa.MemoryPool] = []


@dataclass(frozen=True)
class Line:
    """One generated line and what must become of it."""

    data: bytes
    fate: str
    """"row": a valid record; "error": must be rejected; "either": no promise (garbage)."""


# --- valid records -----------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "ts", "é"])
TIMES = st.sampled_from(["2020-01-01T00:00:00Z", "2021-06-01T12:30:00+02:00", "2020-01-01",
                         "2020-01-01T00:00:00", "2020-01-01 00:00:00.25", "2020-01-01T00:00Z",
                         "2020-01-01T00:00:00.123456-03:30"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
                    TIMES, st.integers(0, 5000).map(lambda n: "x" * n))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)), max_leaves=8)


@st.composite
def records(draw: st.DrawFn) -> Line:
    obj = draw(st.dictionaries(KEYS, VALUES, max_size=4))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    pad = draw(st.sampled_from(["", " ", "\t", "  "]))
    return Line((pad + text + draw(st.sampled_from(["", " "]))).encode(), "row")


def nested(depth: int, kind: str) -> bytes:
    """A record ``depth`` levels deep (its own object included)."""
    inner = depth - 1
    if kind == "list":
        return b'{"d":' + b"[" * inner + b"1" + b"]" * inner + b"}"
    return b'{"d":' + b'{"d":' * inner + b"1" + b"}" * inner + b"}"


@st.composite
def deep(draw: st.DrawFn) -> Line:
    depth = draw(st.sampled_from([2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 300, 20_000]))
    data = nested(depth, draw(st.sampled_from(["list", "object"])))
    if draw(st.booleans()) and depth > MAX_DEPTH:
        data = data[: len(data) // 2 + 1]  # malformed: cut inside the nesting
    return Line(data, "row" if depth <= MAX_DEPTH else "error")


# --- hostile lines -----------------------------------------------------------------------------

NON_OBJECTS = st.sampled_from([b"null", b" null", b"1", b"-2.5e3", b'"x"', b"[1, {}]", b"[]",
                               b"true", b"false", b"null\r"]).map(lambda b: Line(b, "error"))
NOT_UTF8 = st.binary(min_size=1, max_size=4).filter(
    lambda b: not _utf8(b) and not set(b) & set(b'"\\\n'))
BAD_UTF8 = st.builds(lambda key, raw: Line(b'{"' + key + b'": "v' + raw + b'"}', "error"),
                     st.sampled_from([b"a", b"b"]), NOT_UTF8)
BAD_KEY = NOT_UTF8.map(lambda raw: Line(b'{"k' + raw + b'": 1}', "error"))
SURROGATES = st.sampled_from([b'{"a": "\\ud800"}', b'{"a": "x\\udfff"}', b'{"b": ["\\ud83d"]}',
                              b'{"c": {"a": "\\uDC00\\uD800"}}']).map(lambda b: Line(b, "error"))
SEVERAL = st.tuples(records(), st.sampled_from([b"", b" ", b"\r"]), records()).map(
    lambda t: Line(t[0].data + t[1] + t[2].data, "error"))
TRAILING_NULL = records().map(lambda r: Line(r.data + b" null", "error"))
GARBAGE = st.binary(max_size=24).map(lambda b: Line(b.replace(b"\n", b""), "either"))
BLANK = st.sampled_from([b"", b"  ", b"\t", b"\r"]).map(lambda b: Line(b, "blank"))
EMPTY = st.sampled_from([b"{}", b" {} ", b"{ }"]).map(lambda b: Line(b, "row"))

LINES = st.one_of(records(), records(), records(), EMPTY, deep(), NON_OBJECTS, BAD_UTF8, BAD_KEY,
                  SURROGATES, SEVERAL, TRAILING_NULL, GARBAGE, BLANK)


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True)
class JSONFile:
    data: bytes
    lines: list[tuple[int, Line]]
    """Every line with the offset it starts at."""

    def content(self) -> list[tuple[int, Line]]:
        return [(at, line) for at, line in self.lines if line.data.strip(WHITESPACE)]


@st.composite
def json_files(draw: st.DrawFn, max_lines: int = 30) -> JSONFile:
    lines = draw(st.lists(LINES, max_size=max_lines))
    bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
    out, placed, at = bytearray(bom), [], len(bom)
    for i, line in enumerate(lines):
        placed.append((at, line))
        out += line.data
        last = i == len(lines) - 1
        if not last or draw(st.booleans()):
            out += draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))
        at = len(out)
    return JSONFile(bytes(out), placed)


# --- the properties ----------------------------------------------------------------------------

def check_rejected(file: JSONFile, rejected: list, rows: int, all_inferred: bool = True) -> None:
    """Each rejected record is one whole non-blank line; with the rows they cover every line.

    With ``all_inferred`` (types inferred from the whole file) every valid record is a row.
    """
    content = file.content()
    starts = {at: line for at, line in content}
    offsets = [r.byte_offset for r in rejected]
    assert all(r.kind == "record" for r in rejected), rejected
    assert len(set(offsets)) == len(offsets), offsets
    for r in rejected:
        line = starts.get(r.byte_offset)
        assert line is not None, (r, content)
        assert r.raw.rstrip(b"\r\n") == line.data[:len(r.raw.rstrip(b"\r\n"))], (r, line)
        assert line.fate != "row" or not all_inferred, (r, line)
    for at, line in content:
        if line.fate == "error":
            assert at in offsets, (line, rejected)
    assert rows + len(rejected) == len(content), (rows, rejected, content)


@pytest.mark.timeout(600)
@FUZZ
# infer=150: types from the first lines only, so most lines meet a schema that did not see them
@given(file=json_files(), chunk=st.sampled_from([3, 40, 1 << 20]),
       infer=st.sampled_from([1 << 20, 1 << 20, 150]))
def test_reader_keeps_every_line_as_a_row_or_an_error(file: JSONFile, chunk: int,
                                                      infer: int) -> None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(before)
    _POOLS.append(pool)  # buffers outliving the example free into it later: keep it alive
    pa.set_memory_pool(pool)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "f.jsonl")
            with open(path, "wb") as f:
                f.write(file.data)
            # tiny chunks, but at most ~40 per file: chunk tasks cost milliseconds each
            chunk = max(chunk, len(file.data) // 40)
            try:
                table, rejected, _ = run_reader(path, "jsonl", chunk_size=chunk,
                                                infer_bytes=infer)
            except NotUTF8:
                # the whole file fails only when its lines are not UTF-8 (NUL: UTF-16/32)
                assert b"\x00" in file.data or not is_utf8(file.data), file
                return
            rows = 0 if table is None else table.num_rows
            check_rejected(file, rejected, rows, all_inferred=infer >= len(file.data))
            if table is not None and table.num_columns:
                table.validate(full=True)
                pq.write_table(table, os.path.join(tmp, "t.parquet"))
                got = duckdb.sql(f"select count(*) from '{tmp}/t.parquet'").fetchall()
                assert got == [(rows,)]
    finally:
        pa.set_memory_pool(before)
    # Arrow memory: bounded by the input, not by nesting or by what the lines claim
    assert pool.max_memory() < (64 << 20) + 64 * len(file.data), pool.max_memory()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert grown_kib < 512 << 10, f"peak RSS grew by {grown_kib} KiB"


@pytest.mark.timeout(900)
@END_TO_END
@given(files=st.lists(json_files(max_lines=8), min_size=1, max_size=3),
       chunk=st.sampled_from([512, 1 << 20]))  # several chunks a file, or bundles
def test_ingest_output_reads_back(files: list[JSONFile], chunk: int, shared_scheduler: str
                                  ) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, file in enumerate(files):
            paths.append(os.path.join(tmp, "in", f"f{i}.jsonl"))
            os.makedirs(os.path.dirname(paths[-1]), exist_ok=True)
            with open(paths[-1], "wb") as f:
                f.write(file.data)
        out = os.path.join(tmp, "out")
        report = pipeline.ingest([os.path.join(tmp, "in")], out=out, scheduler=shared_scheduler,
                                 progress=False, chunk_size=chunk)
        expected = sum(len(f.content()) for f in files)
        assert report.rows + report.errors == expected, report
        catalog = duckdb.sql(f"select sum(rows), sum(error_count) from '{out}/_catalog/*.parquet'"
                             ).fetchall()
        assert catalog == [(report.rows, report.errors)]
        tables = [d for d in os.listdir(out) if not d.startswith("_")]
        written = sum(duckdb.sql(f"select count(*) from read_parquet('{out}/{t}/**/*.parquet', "
                                 "union_by_name=true)").fetchall()[0][0] for t in tables)
        assert written == report.rows
        if report.errors:
            errors = duckdb.sql(f"select kind, count(*) from '{out}/_errors/*.parquet' group by 1"
                                ).fetchall()
            assert errors == [("record", report.errors)]

"""Fuzzing harness for the delimited-text readers (CSV, TSV): generated files, every promise.

Hypothesis generates files from the pieces that broke chunkmill before: dialects (comma, tab;
``;`` and ``|`` with ``"`` or ``'`` quotes and a backslash escape, given as options),
quoted fields with doubled quotes and embedded LF/CR/CRLF, stray quotes (``a"b``, text after a
closing quote, a quote never closed), invalid UTF-8, LF/CRLF/lone-CR line ends mixed in one
file, empty lines, a BOM, no final line end, records longer than ``max_record_bytes``, files
with and without a header, and gzip streams (whole, or cut short). Each file is read in-process
exactly as the runner reads it (`conftest.run_reader`: plan, read, reconcile) and must:

- **not hang**: every example runs under a deadline (`EXAMPLE_SECONDS`);
- **not crash**: a reader may refuse a file at describe time with a message, nothing else raises;
- **stay bounded in memory**: the process's peak RSS grows by less than `EXAMPLE_MEMORY` in any
  one example (inputs are a few KB) and by less than `RSS_GROWTH` over the whole run
  (not tracemalloc: stopping it while pyarrow's threads attach crashes CPython 3.11, gh-128679);
- **account for every record**: each non-empty record of the file (found by an independent
  byte-by-byte model of pyarrow's grammar) is a row or an ``_errors`` row that starts at that
  record and holds its bytes; a record too long or a file cut short is a chunk-level row;
- **not depend on the chunk size**: at every chunk size tried, the rows and the ``_errors`` rows
  (kind, type, offset, raw bytes) are those of one chunk; a gzip stream parsed in small blocks
  gives those of the uncompressed file.

The normal suite runs a small budget (a few seconds). Run longer on demand::

    CHUNKMILL_FUZZ_EXAMPLES=2000 python3 -m pytest -q tests/fuzz/test_fuzz_text.py

(``CHUNKMILL_FUZZ_SEED=N`` replays one seed; failures print the file to reproduce with.)
"""

from __future__ import annotations

import contextlib
import gzip
import os
import resource
import signal
from collections.abc import Iterator

import pyarrow as pa
import pytest
from conftest import run_reader
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("CHUNKMILL_FUZZ_EXAMPLES", "25"))
#: The suite replays the same examples every run (a CI result must not depend on luck); a
#: budget given on demand (or a seed) explores new ones.
EXPLORE = "CHUNKMILL_FUZZ_EXAMPLES" in os.environ or "CHUNKMILL_FUZZ_SEED" in os.environ
EXAMPLE_SECONDS = 60
EXAMPLE_MEMORY = 256 << 20
RSS_GROWTH = 1 << 30
MAX_RECORD = 160  # records longer than this are "too long" in the examples that ask for it

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not EXPLORE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
if "CHUNKMILL_FUZZ_SEED" in os.environ:
    FUZZ = seed(int(os.environ["CHUNKMILL_FUZZ_SEED"]))(FUZZ)  # type: ignore[assignment]

LINE_ENDS = [b"\n", b"\r\n", b"\r"]


# --- generated files ------------------------------------------------------------------------
def _field(delimiter: bytes, quote: bytes = b'"', escape: bytes | None = None
           ) -> st.SearchStrategy[bytes]:
    text = st.text(alphabet="ab1 -é€", max_size=6).map(str.encode)
    pieces = [b"x", b"1", b" ", quote + quote, b"\n", b"\r", b"\r\n", delimiter, b"\xc3\xa9"]
    escaped = [escape + c for c in (quote, delimiter, b"\n", escape)] if escape else []
    inner = st.lists(st.sampled_from(pieces + escaped), max_size=6).map(b"".join)
    stray = [v.replace(b'"', quote) for v in (b'a"b', b'"ab"cd', b'x"', b'"', b'""x', b'"a""')]
    return st.one_of(
        text,                                                 # plain
        inner.map(lambda v: quote + v + quote),               # quoted (RFC 4180)
        st.sampled_from(stray),                               # stray quotes
        st.sampled_from([b"\xff", b"a\xc3", b"\xc3", b"\xe2\x82", b"\x00"]),  # invalid UTF-8
        st.sampled_from(escaped or [b""]),                    # escapes outside quotes
        st.just(b""),
    )


@st.composite
def text_files(draw: st.DrawFn) -> tuple[bytes, str, dict]:
    """(file bytes, reader, options) of one generated delimited-text file."""
    reader = draw(st.sampled_from(["csv", "tsv"]))
    delimiter = b"," if reader == "csv" else b"\t"
    dialect: dict = {}
    if reader == "csv" and draw(st.booleans()):  # another dialect, given explicitly
        delimiter = draw(st.sampled_from([b",", b";", b"|"]))
        dialect = {"delimiter": delimiter.decode(),
                   "quote": draw(st.sampled_from(['"', "'"])),
                   "escape": draw(st.sampled_from([None, "\\"]))}
    quote = dialect.get("quote", '"').encode()
    escape = dialect["escape"].encode() if dialect.get("escape") else None
    field = _field(delimiter, quote, escape)
    ncols = draw(st.integers(1, 4))
    one_ending = draw(st.booleans())
    ending = st.just(draw(st.sampled_from(LINE_ENDS))) if one_ending else st.sampled_from(
        LINE_ENDS)
    long_records = draw(st.integers(0, 5)) == 0

    def record(cols: int) -> bytes:
        if long_records and draw(st.integers(0, 4)) == 0:
            return b"L" * draw(st.integers(MAX_RECORD + 1, 3 * MAX_RECORD))
        return delimiter.join(draw(field) for _ in range(cols))

    header = draw(st.booleans())
    parts = [b"\xef\xbb\xbf"] if draw(st.integers(0, 4)) == 0 else []
    if draw(st.integers(0, 5)) == 0:
        parts.append(draw(ending))  # an empty line before the first record
    first = (delimiter.join(b"c%d" % i for i in range(ncols)) if header and draw(st.booleans())
             else record(ncols))
    parts.append(first)
    for _ in range(draw(st.integers(0, 10))):
        parts.append(draw(ending))
        if draw(st.integers(0, 6)) == 0:
            parts.append(draw(ending))  # an empty line
        cols = ncols if draw(st.integers(0, 5)) else draw(st.integers(1, 5))
        parts.append(record(cols))
    if draw(st.booleans()):
        parts.append(draw(ending))
    options: dict = {"header": header, **{k: v for k, v in dialect.items() if v}}
    if long_records:
        options["max_record_bytes"] = MAX_RECORD
    return b"".join(parts), reader, options


# --- an independent model of what the file holds ------------------------------------------------
def grammar_records(data: bytes, delimiter: int, quote: int = 0x22,
                    escape: int | None = None) -> list[tuple[int, int]]:
    """(start, end without the line end) of every record, by pyarrow's grammar byte by byte."""
    records, start, mode, i = [], 0, "start", 0
    while i < len(data):
        c = data[i]
        if c == escape and i + 1 < len(data):  # the next byte is literal, in quotes or out
            mode = "quoted" if mode == "quoted" else "field"
            i += 2
            continue
        if mode == "quoted":
            if c == quote and i + 1 < len(data) and data[i + 1] == quote:
                i += 2
                continue
            if c == quote:
                mode = "field"
        elif c == quote and mode == "start":
            mode = "quoted"
        elif c == delimiter:
            mode = "start"
        elif c in (0x0A, 0x0D):
            stop = i
            if c == 0x0D and i + 1 < len(data) and data[i + 1] == 0x0A:
                i += 1
            records.append((start, stop))
            start, mode = i + 1, "start"
        else:
            mode = "field"
        i += 1
    if start < len(data):
        records.append((start, len(data)))
    return records


def data_records(data: bytes, delimiter: int, header: bool, quote: int = 0x22,
                 escape: int | None = None) -> list[tuple[int, int]]:
    """The non-empty records after the BOM and the header (empty lines are skipped)."""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    records = [(bom + a, bom + b) for a, b in grammar_records(data[bom:], delimiter, quote, escape)
               if b > a]
    return records[1:] if header else records


# --- running one file --------------------------------------------------------------------------
@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail an example that runs longer than ``seconds`` (a hang), even when the alarm went
    off inside a chunk read, which turns any exception into an ``_errors`` row."""
    expired: list[bool] = []

    def expire(_signum: int, _frame: object) -> None:
        expired.append(True)
        raise TimeoutError(f"an example ran longer than {seconds} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if expired:
        raise TimeoutError(f"an example ran longer than {seconds} s (a hang?)")


def outcome(path: str, reader: str, options: dict, chunk_size: int) -> tuple:
    """(rows, [(kind, type, offset, raw)]) of one read, or ("refused", exception type)."""
    try:
        table, rejected, _ = run_reader(path, reader, chunk_size=chunk_size,
                                        string_columns=True, **options)
    except TimeoutError:
        raise
    except Exception as exc:  # refused at describe time: it must say why
        assert str(exc), f"{type(exc).__name__} without a message"
        return ("refused", type(exc).__name__)
    rows = [] if table is None else table.to_pylist()
    for r in rejected:
        assert r.message and (r.byte_offset is None or r.byte_offset >= 0), r
    return rows, [(r.kind, str(r.error_type), r.byte_offset, r.raw) for r in rejected]


def check_accounting(data: bytes, reader: str, options: dict, result: tuple) -> None:
    """Every non-empty record is a row or an _errors row starting at it, holding its bytes."""
    if result[0] == "refused":
        return
    rows, errors = result
    delimiter = ord(options.get("delimiter", "," if reader == "csv" else "\t"))
    quote = ord(options.get("quote", '"'))
    escape = ord(options["escape"]) if "escape" in options else None
    records = data_records(data, delimiter, options["header"], quote, escape)
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    model = grammar_records(data[bom:], delimiter, quote, escape)
    boundaries = {bom + a for a, _ in model} | {len(data)} | {bom + b + 1 for _, b in model}
    for kind, _type, offset, raw in errors:
        if kind == "record":
            assert offset in {a for a, _ in records}, (_type, offset, records)
        else:  # a chunk-level row starts at a record boundary too
            assert offset in boundaries, (_type, offset, sorted(boundaries))
        assert raw is None or data[offset:].startswith(raw), (offset, raw)
    if not any(kind == "chunk" for kind, *_ in errors):
        assert len(rows) + len(errors) == len(records), (rows, errors, records)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_RSS_AT_START = _peak_rss()


@FUZZ
@given(case=text_files(), chunks=st.lists(st.integers(1, 64), min_size=1, max_size=3),
       block=st.sampled_from([16, 64, 1 << 20]))
def test_fuzz_delimited_text(tmp_path, case: tuple[bytes, str, dict], chunks: list[int],
                             block: int) -> None:
    data, reader, options = case
    path = tmp_path / ("f.csv" if reader == "csv" else "f.tsv")
    path.write_bytes(data)
    rss_before = _peak_rss()
    with deadline(EXAMPLE_SECONDS):
        whole = outcome(str(path), reader, options, 1 << 20)
        check_accounting(data, reader, options, whole)
        long_records = "max_record_bytes" in options
        for chunk in chunks:
            chunk = max(chunk, len(data) // 40)  # at most ~40 chunks: keeps examples quick
            got = outcome(str(path), reader, options, chunk)
            check_accounting(data, reader, options, got)
            if not long_records:  # the record limit is a limit on seeking a chunk's end
                assert got == whole, f"chunk size {chunk}: {data!r}"
        gz = tmp_path / (path.name + ".gz")
        gz.write_bytes(gzip.compress(data))
        streamed = outcome(str(gz), reader, {**options, "stream_block_bytes": block}, 1 << 20)
        check_accounting(data, reader, options, streamed)
        if not long_records and whole[0] != "refused":
            assert streamed == whole, f"gzip in {block}-byte blocks: {data!r}"
        if len(data) > 20 and whole[0] != "refused":  # a stream cut short: rows and a reason
            gz.write_bytes(gzip.compress(data)[:-12])
            cut = outcome(str(gz), reader, {**options, "stream_block_bytes": block}, 1 << 20)
            if cut[0] != "refused":
                assert any(kind == "chunk" for kind, *_ in cut[1]), cut
                assert len(cut[0]) <= len(whole[0])
    # The process's peak RSS only rises when an example needed more than any before it.
    assert _peak_rss() - rss_before < EXAMPLE_MEMORY, f"{len(data)} bytes of input"
    assert _peak_rss() - _RSS_AT_START < RSS_GROWTH


def test_model_agrees_with_pyarrow_on_plain_files() -> None:
    """The harness's own model of records, checked once against pyarrow itself."""
    import pyarrow.csv as pacsv

    data = b'h1,h2\r1,"a\r\nb"\n\n2,x"y\r\n"3",4\r'
    table = pacsv.read_csv(pa.py_buffer(data), parse_options=pacsv.ParseOptions(
        newlines_in_values=True))
    assert len(data_records(data, 0x2C, True)) == table.num_rows == 3


@pytest.mark.parametrize("data", [b"a,b\r1,2\r3,4\r", b'a"b,c\n1,2\n', b"a\n" + b"\xff\n" * 3])
def test_fuzz_regressions(tmp_path, data: bytes) -> None:
    """Inputs that once broke an invariant, kept as plain examples."""
    path = tmp_path / "r.csv"
    path.write_bytes(data)
    whole = outcome(str(path), "csv", {"header": True}, 1 << 20)
    check_accounting(data, "csv", {"header": True}, whole)
    for chunk in range(1, len(data) + 1):
        assert outcome(str(path), "csv", {"header": True}, chunk) == whole

"""Chunked CSV/TSV/JSONL reads give exactly the rows of a whole-file parse, at any chunk size."""

from __future__ import annotations

import gc
import json
import mmap
import random
import sys

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from conftest import run_reader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from readers._boundaries import (
    OUT,
    Grammar,
    Transfer,
    count_byte,
    first_record_end,
    guess_parity,
    last_record_end,
    record_ends,
    record_starts_csv,
    transfer,
)
from readers._text import READ_BUFFERS, TextSelector
from readers.csv import convert_options

CHUNK_SIZES = [1, 2, 3, 5, 8, 13, 31, 64, 200, 4096]

field_text = st.text(alphabet=st.sampled_from(list('ab,"\n\r xé€\t;')), max_size=12)


def _quote(value: str, always: bool) -> str:
    if always or any(c in value for c in ',"\n\r') or value == "":
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def csv_files(draw: st.DrawFn, delimiter: str = ",") -> bytes:
    ncols = draw(st.integers(1, 4))
    nrows = draw(st.integers(0, 12))
    # Line ends: Unix, Windows, classic Mac (a lone CR, issue 20 item 20), or a mix of them.
    newline = st.sampled_from(["\n", "\r\n", "\r"])
    if draw(st.booleans()):
        newline = st.just(draw(newline))
    header = delimiter.join(f"c{i}" for i in range(ncols))
    lines = [header]
    for _ in range(nrows):
        cells = [_quote(draw(field_text).replace(delimiter, "") if delimiter != "," else
                        draw(field_text), draw(st.booleans())) for _ in range(ncols)]
        lines.append(delimiter.join(cells))
        if draw(st.integers(0, 6)) == 0:
            lines.append("")  # an empty line between records
    text = lines[0]
    for line in lines[1:]:
        text += draw(newline) + line
    if draw(st.booleans()):
        text += draw(newline)
    data = text.encode()
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data


def _whole_file(path: str, ncols_from: pa.Table | None, delimiter: str = ",") -> pa.Table:
    try:
        names = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True)).column_names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):  # a header without a newline: no rows at all
            return pa.table({})
        raise
    return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(
        delimiter=delimiter, newlines_in_values=True),
        convert_options=convert_options({n: pa.string() for n in names}))


_POISON = {size: (b'"\n"\r\n,"' * size)[:size] for size in (1 << 20, 2 << 20)}
"""The stale bytes, made once: building them took half of every example's poisoning."""


def _poison_read_buffers() -> None:
    """Chunks reuse read buffers holding stale bytes: make them quotes and newlines, so a
    read that looks past what it read is caught."""
    READ_BUFFERS.clear()
    for size, stale in _POISON.items():
        buf = mmap.mmap(-1, size)
        buf[:] = stale
        READ_BUFFERS.give(buf)


def _rows(table: pa.Table | None) -> list[dict]:
    return [] if table is None else table.to_pylist()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=csv_files(), chunk=st.sampled_from(CHUNK_SIZES))
def test_csv_chunked_equals_whole_file(tmp_path, data: bytes, chunk: int) -> None:
    _poison_read_buffers()
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    expected = _whole_file(str(path), None)
    got, rejected, info = run_reader(str(path), "csv", chunk_size=chunk, string_columns=True)
    assert not rejected
    assert _rows(got) == expected.to_pylist()
    assert info["serial"] is None  # RFC 4180 files never fall back to one stream


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=csv_files(delimiter="\t"), chunk=st.sampled_from(CHUNK_SIZES))
def test_tsv_chunked_equals_whole_file(tmp_path, data: bytes, chunk: int) -> None:
    _poison_read_buffers()
    path = tmp_path / "f.tsv"
    path.write_bytes(data)
    expected = _whole_file(str(path), None, "\t")
    got, rejected, _ = run_reader(str(path), "tsv", chunk_size=chunk, string_columns=True)
    assert not rejected
    assert _rows(got) == expected.to_pylist()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=csv_files(), chunk=st.sampled_from(CHUNK_SIZES), seed=st.integers(0, 1000))
def test_stray_quotes_stay_exact_and_parallel(tmp_path, data: bytes, chunk: int,
                                              seed: int) -> None:
    """Quotes inside unquoted fields (``a"b``) follow pyarrow's grammar: no serial re-read."""
    rnd = random.Random(seed)
    body = bytearray(data)
    header_end = body.find(b"\n") + 1  # generated headers hold no quotes
    if header_end == 0:
        return
    for _ in range(rnd.randint(1, 3)):
        body.insert(rnd.randint(header_end, len(body)), ord("x"))
        body.insert(rnd.randint(header_end, len(body)), ord('"'))
    path = tmp_path / "f.csv"
    path.write_bytes(bytes(body))
    try:
        expected = _whole_file(str(path), None)
    except pa.ArrowInvalid:
        return  # pyarrow itself cannot read it (e.g. the header broke): nothing to compare
    # encoding="utf-8": a quote put inside a character is a bad record, not another encoding
    got, rejected, info = run_reader(str(path), "csv", chunk_size=chunk, string_columns=True,
                                     encoding="utf-8")
    rows = expected.to_pylist()
    if arrow_grammar(bytes(body))[1][-1]:  # ends inside a quote: its last record is an error
        assert [str(r.error_type) for r in rejected][-1:] == ["UnterminatedQuote"]
        rows = rows[:-1]
    assert _rows(got) == rows
    assert info["serial"] is None


@st.composite
def dialect_files(draw: st.DrawFn) -> tuple[bytes, dict]:
    """CSV in another dialect: ``;``/``|``/tab delimiters, ``'`` quotes, a backslash escape
    (escaped quotes, delimiters, line ends and escapes, inside quotes and out)."""
    delimiter = draw(st.sampled_from([",", ";", "|", "\t"]))
    quote = draw(st.sampled_from(['"', "'"]))
    escape = draw(st.sampled_from([None, "\\"]))
    specials = [delimiter, quote, "\n", "\r\n", "x", " ", "\\" if escape is None else "y"]
    tokens = ["a", "1", "é", *specials]
    if escape:
        tokens += [escape + c for c in (delimiter, quote, "\n", escape, "z")]
    ncols = draw(st.integers(1, 4))
    lines = [delimiter.join(f"c{i}" for i in range(ncols))]
    for _ in range(draw(st.integers(0, 10))):
        cells = []
        for _ in range(ncols):
            parts = draw(st.lists(st.sampled_from(tokens), max_size=5))
            if draw(st.booleans()):  # quoted: quotes doubled or escaped
                doubled = quote + quote if not escape or draw(st.booleans()) else escape + quote
                cells.append(quote + "".join(doubled if p == quote else p for p in parts)
                             + quote)
            else:  # unquoted: only escaped specials
                cells.append("".join(p for p in parts if p not in specials or p in "x "))
        lines.append(delimiter.join(cells))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(lines) + (newline if draw(st.booleans()) else "")
    return text.encode(), {"delimiter": delimiter, "quote": quote, "escape": escape}


def _whole_dialect(path: str, d: dict) -> pa.Table:
    parse = pacsv.ParseOptions(delimiter=d["delimiter"], quote_char=d["quote"],
                               escape_char=d["escape"] or False, newlines_in_values=True)
    try:
        names = pacsv.read_csv(path, parse_options=parse).column_names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):  # a header without a newline: no rows at all
            return pa.table({})
        raise
    return pacsv.read_csv(path, parse_options=parse,
                          convert_options=convert_options({n: pa.string() for n in names}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(case=dialect_files(), chunk=st.sampled_from(CHUNK_SIZES))
def test_explicit_dialects_chunked_equal_whole_file(tmp_path, case, chunk: int) -> None:
    """Issue 16 item 3: exact parallel boundaries hold for every given dialect."""
    _poison_read_buffers()
    data, dialect = case
    path = tmp_path / "d.csv"
    path.write_bytes(data)
    expected = _whole_dialect(str(path), dialect)
    got, rejected, info = run_reader(str(path), "csv", chunk_size=chunk, string_columns=True,
                                     **{k: v for k, v in dialect.items() if v})
    assert not rejected
    assert _rows(got) == expected.to_pylist()
    assert info["serial"] is None  # exact without falling back to one stream


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(case=st.one_of(dialect_files(), csv_files().map(lambda data: (data, {}))),
       block=st.sampled_from([1, 16, 64, 200]), chunk=st.sampled_from([500, 1 << 20]))
def test_parse_pieces_give_the_rows_of_one_parse(tmp_path, case, block: int, chunk: int) -> None:
    """A chunk is parsed in pieces of about ``parse_block_bytes`` cut at record ends (a
    record longer than that is a piece alone): the rows of pyarrow's whole-file parse, for
    every dialect."""
    _poison_read_buffers()
    data, dialect = case
    path = tmp_path / "p.csv"
    path.write_bytes(data)
    expected = _whole_dialect(str(path), dialect) if dialect else _whole_file(str(path), None)
    got, rejected, info = run_reader(str(path), "csv", chunk_size=chunk, string_columns=True,
                                     parse_block_bytes=block,
                                     **{k: v for k, v in dialect.items() if v})
    assert not rejected
    assert _rows(got) == expected.to_pylist()
    assert info["serial"] is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(case=dialect_files().filter(lambda c: c[1]["quote"] == '"' and not c[1]["escape"]),
       chunk=st.sampled_from(CHUNK_SIZES))
def test_sniffed_dialects_chunked_equal_one_chunk(tmp_path, case, chunk: int) -> None:
    """Whatever delimiter the sniffer picks, every chunk size gives the rows and errors of
    one chunk (and, when it picks the file's own, pyarrow's whole-file parse)."""
    _poison_read_buffers()
    data, dialect = case
    path = tmp_path / "s.csv"
    path.write_bytes(data)
    whole = _outcome(run_reader(str(path), "csv", chunk_size=1 << 20, string_columns=True))
    got = run_reader(str(path), "csv", chunk_size=chunk, string_columns=True)
    assert _outcome(got) == whole and got[2]["serial"] is None
    if data.count(dialect["delimiter"].encode()) > 2 * data.count(b"\n") and not whole[1]:
        assert whole[0] == _whole_dialect(str(path), dialect).to_pylist()


messy_text = st.lists(st.sampled_from([b"a", b"1", b",", b'"', b'""', b"\n", b"\r", b"\r\n",
                                        b"\xff", b"\xc3", b"\xc3\xa9", b" "]),
                      max_size=30).map(b"".join)


def _outcome(result: tuple) -> tuple[list[dict], list[tuple]]:
    table, rejected, _ = result
    return _rows(table), [(r.kind, str(r.error_type), r.byte_offset, r.raw) for r in rejected]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from([b"h1,h2\n", b"h1,h2\r", b'h"1,h2\r\n', b"h\n", b'"h1",h2\n']),
       body=messy_text)
def test_messy_text_gives_the_same_rows_and_errors_at_every_chunk_size(tmp_path, header: bytes,
                                                                       body: bytes) -> None:
    """Issue 20 item 26: stray quotes, invalid UTF-8 and CR/LF/CRLF line ends together. Each
    chunk size from 1 byte to the whole file gives exactly the rows *and* the ``_errors``
    rows (kind, type, offset, raw bytes) of one chunk; without errors, those of pyarrow."""
    _poison_read_buffers()
    data = header + body
    path = tmp_path / "m.csv"
    path.write_bytes(data)
    # encoding="utf-8" says the file is UTF-8: invalid bytes are bad records (without it, a
    # head that is not UTF-8 fails the file, asking for --encoding)
    whole = _outcome(run_reader(str(path), "csv", chunk_size=1 << 20, string_columns=True,
                                encoding="utf-8"))
    for chunk in range(1, len(data) + 1):
        assert _outcome(run_reader(str(path), "csv", chunk_size=chunk, string_columns=True,
                                   encoding="utf-8")) == whole, chunk
    if not whole[1]:
        assert whole[0] == _whole_file(str(path), None).to_pylist()


def test_quoted_newlines_stay_parallel(tmp_path) -> None:
    rows = [f'{i},"line one\nline ""two"", {i}",x' for i in range(2000)]
    path = tmp_path / "q.csv"
    path.write_text("id,text,tag\n" + "\n".join(rows) + "\n")
    got, _, info = run_reader(str(path), "csv", chunk_size=4096)
    assert info["chunks"] > 10 and info["serial"] is None
    assert got.num_rows == 2000
    assert got.column("text").to_pylist()[5] == 'line one\nline "two", 5'
    # the in-task guess is right for nearly every chunk: few re-runs
    assert info["reruns"] <= info["chunks"] // 10


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]),
                                        st.one_of(st.integers(-5, 5), st.text(max_size=5)),
                                        min_size=3, max_size=3), max_size=15),
       chunk=st.sampled_from(CHUNK_SIZES), trailing=st.booleans(), blank=st.booleans())
def test_jsonl_chunked_equals_whole_file(tmp_path, records, chunk, trailing, blank) -> None:
    _poison_read_buffers()
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if blank and lines:
        lines.insert(len(lines) // 2, "")
    text = "\n".join(lines) + ("\n" if trailing else "")
    path = tmp_path / "f.jsonl"
    path.write_text(text)
    got, rejected, _ = run_reader(str(path), "jsonl", chunk_size=chunk)
    assert not rejected
    assert len(_rows(got)) == len(records)
    if records:
        # documented rule: a value in a column widened to string keeps its JSON text
        def coerce(name: str, value: object) -> object:
            if pa.types.is_string(got.schema.field(name).type) and not isinstance(value, str):
                return json.dumps(value)
            return value
        expected = [{k: coerce(k, v) for k, v in r.items()} for r in records]
        assert got.to_pylist() == pa.Table.from_pylist(expected, got.schema).to_pylist()


@pytest.mark.parametrize("buf,start,parity,expected", [
    (b'a\nb', 0, 0, 1), (b'"a\nb"\nc', 0, 0, 5), (b'a\nb"\nc', 0, 1, 4), (b"abc", 0, 0, -1),
])
def test_first_record_end(buf, start, parity, expected) -> None:
    assert first_record_end(buf, start, parity) == expected


@given(data=st.binary(max_size=64), repeat=st.sampled_from([1, 3, 40_000]),
       start=st.integers(-1, 3_000_000), end=st.one_of(st.none(), st.integers(0, 3_000_000)),
       kind=st.sampled_from([bytes, bytearray, memoryview]))
@settings(max_examples=200, deadline=None)
def test_count_byte_matches_bytes_count(data: bytes, repeat: int, start: int, end: int | None,
                                        kind: type) -> None:
    buf = data * repeat  # up to 2.5 MiB: spans several of count_byte's numpy slices
    start = max(0, min(start, len(buf)))
    expected = buf.count(b'"', start, len(buf) if end is None else end)
    assert count_byte(kind(buf), b'"', start, end) == expected


def test_last_record_end_and_guess() -> None:
    assert last_record_end(b'a\n"b\nc"\n') == 7
    assert guess_parity(b'x,"open\nfield"') == 0
    assert guess_parity(b'inside", next\n') == 1


def arrow_grammar(data: bytes, delimiter: int = 0x2C, quote: int = 0x22,
                  escape: int | None = None) -> tuple[list[int], list[int]]:
    """pyarrow's CSV grammar, byte by byte: the reference the vectorised scans must match.

    Returns (record ends: the index of each record's last line-end byte, the quote state
    before every byte plus the state at the end). A quote opens a field only at a field
    start; inside, a doubled quote is one quote and a single one closes the field; text after
    a closing quote, or a quote in the middle of a field, is literal (``a"b``). An ``escape``
    byte makes the next byte literal, inside quotes and outside.
    """
    ends: list[int] = []
    states = [0] * (len(data) + 1)
    mode = "start"  # field start | in an unquoted field | inside quotes
    i = 0
    while i < len(data):
        c = data[i]
        states[i] = 1 if mode == "quoted" else 0
        if c == escape and i + 1 < len(data):
            states[i + 1] = states[i]
            mode = "quoted" if mode == "quoted" else "field"
            i += 2
            continue
        if mode == "quoted":
            if c == quote and i + 1 < len(data) and data[i + 1] == quote:
                states[i + 1] = 1
                i += 2
                continue
            if c == quote:
                mode = "field"
        elif c == quote and mode == "start":
            mode = "quoted"
        elif c == delimiter:
            mode = "start"
        elif c in (0x0A, 0x0D):
            if c == 0x0D and i + 1 < len(data) and data[i + 1] == 0x0A:
                i += 1
                states[i] = 0
            ends.append(i)
            mode = "start"
        else:
            mode = "field"
        i += 1
    states[len(data)] = 1 if mode == "quoted" else 0
    return ends, states


grammar_bytes = st.lists(st.sampled_from([b"a", b",", b"\t", b'"', b'""', b"\n", b"\r",
                                          b"\r\n", b" "]), max_size=50).map(b"".join)


def _splits_compose(data: bytes, grammar: Grammar, ends: list[int], states: list[int]
                    ) -> list[Transfer]:
    """At every split of ``data``, the two halves' transfers compose into the whole's and
    their record ends add up to ``ends``; returns the transfer of each prefix."""
    whole = transfer(data, 0, len(data), grammar, None, True)
    assert whole.apply(OUT) == states[-1]
    prefixes = []
    for k in range(len(data) + 1):
        left = transfer(data, 0, k, grammar, None, True)
        right = transfer(data, k, len(data), grammar, None, True)
        assert [left.then(right).apply(s) for s in (0, 1)] == [whole.apply(s) for s in (0, 1)]
        first, state = record_ends(data, 0, k, OUT, grammar, None, True)
        rest, _ = record_ends(data, k, len(data), state, grammar, None, True)
        assert list(first) + list(rest) == ends
        prefixes.append(left)
    return prefixes


@settings(max_examples=300, deadline=None)
@given(data=grammar_bytes, delimiter=st.sampled_from([",", "\t"]))
def test_boundary_scans_follow_the_parser_grammar(data: bytes, delimiter: str) -> None:
    """Record ends, quote-state transfers and their composition match pyarrow's grammar
    everywhere: stray quotes (``a"b``), text after a closing quote, lone CRs."""
    grammar = Grammar(delimiter=ord(delimiter))
    ends, states = arrow_grammar(data, ord(delimiter))
    got, after = record_ends(data, 0, len(data), OUT, grammar, None, True)
    assert list(got) == ends and after == states[-1]
    assert last_record_end(data, grammar, None, True) == (ends[-1] if ends else -1)
    assert first_record_end(data, 0, OUT, grammar, None, True) == (ends[0] if ends else -1)
    assert list(record_starts_csv(data, grammar)) == sorted(
        {0, *[e + 1 for e in ends if e + 1 < len(data)], len(data)})
    for k, left in enumerate(_splits_compose(data, grammar, ends, states)):
        if k and data[k - 1:k + 1] == b'""':
            continue  # inside a run of quotes: no state of its own
        assert left.apply(OUT) == states[k]
        expected = next((e for e in ends if e >= k), -1)
        assert first_record_end(data, k, states[k], grammar, None, True) == expected
    # Not the end of the file: a CR as the last byte may be the first half of CRLF.
    if data.endswith(b"\r"):
        known = [e for e in ends if e != len(data) - 1]
        assert last_record_end(data, grammar, None, False) == (known[-1] if known else -1)


escape_bytes = st.lists(st.sampled_from([b"a", b";", b"|", b"'", b"''", b"\\", b"\\\\", b"\n",
                                         b"\r", b"\r\n"]), max_size=50).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=escape_bytes, delimiter=st.sampled_from([";", "|"]),
       escape=st.sampled_from([None, "\\"]))
def test_boundary_scans_follow_the_parser_grammar_in_other_dialects(
        data: bytes, delimiter: str, escape: str | None) -> None:
    """Another quote character, other delimiters and an escape character: record ends and
    composed transfers still match the parser's grammar (``\\`` escapes line ends too)."""
    esc = ord(escape) if escape else None
    grammar = Grammar(quote=ord("'"), delimiter=ord(delimiter), escape=esc)
    ends, states = arrow_grammar(data, ord(delimiter), ord("'"), esc)
    if esc is not None and (len(data) - len(data.rstrip(b"\\"))) % 2:
        return  # a dangling escape at the end of the file: the parser's business
    got, after = record_ends(data, 0, len(data), OUT, grammar, None, True)
    assert list(got) == ends and after == states[-1]
    assert last_record_end(data, grammar, None, True) == (ends[-1] if ends else -1)
    assert first_record_end(data, 0, OUT, grammar, None, True) == (ends[0] if ends else -1)
    _splits_compose(data, grammar, ends, states)


@settings(max_examples=25, deadline=None)
@given(data=grammar_bytes.filter(lambda d: b'"' in d), copies=st.integers(2000, 6000))
def test_boundary_scans_across_windows(data: bytes, copies: int) -> None:
    """Buffers longer than the scan windows (backward transfers, growing windows)."""
    big = data * copies
    ends, states = arrow_grammar(big)
    assert transfer(big, 0, len(big), end=None, final=True).apply(OUT) == states[-1]
    assert last_record_end(big, end=None, final=True) == (ends[-1] if ends else -1)
    got, _ = record_ends(big, 0, len(big), OUT, end=None, final=True)
    assert list(got) == ends
    middle = len(big) // 2
    if big[middle - 1:middle + 1] != b'""':
        assert first_record_end(big, middle, states[middle]) == next(
            (e for e in ends if e >= middle), -1)


def test_reconcile_checks_chunks_after_a_failed_one() -> None:
    """A failed chunk must not stop the parity check of the chunks after it."""
    from readers._text import TextFacts, TextState
    from readers.base import ChunkOutcome, ChunkSpec, Description, Source
    from readers.csv import CSVReader

    source = Source("file:///x.csv", 400, None, "f", "fp", "t")
    desc = Description({"t": None}, {}, TextState(data_start=0, column_names=("a",)))
    chunks = [ChunkSpec("f", i, i * 100, 100) for i in range(4)]
    outcomes = [
        ChunkOutcome(TextFacts(flips=1, parity=0, start=0, end=120)),
        # died (record too long) after counting its quotes
        ChunkOutcome(TextFacts(flips=0, parity=1), failed=True),
        ChunkOutcome(TextFacts(flips=0, parity=0, start=230, end=330)),  # guessed 0, truth 1
        ChunkOutcome(TextFacts(flips=1, parity=1, start=330, end=400, last=True)),
    ]
    rec = CSVReader().reconcile(source, desc, chunks, outcomes)
    assert [c.index for c in rec.rerun] == [2] and rec.rerun[0].selector == TextSelector(parity=1)
    outcomes[2].facts.parity = 1  # after the re-run: parities right, the failed chunk is a gap
    assert CSVReader().reconcile(source, desc, chunks, outcomes).rerun == []
    assert CSVReader().reconcile(source, desc, chunks, outcomes).replace_plan is None
    outcomes[1] = ChunkOutcome(None, failed=True)  # lost before counting: parities unknowable
    assert CSVReader().reconcile(source, desc, chunks, outcomes).replace_plan is not None


def test_bad_row_with_invalid_utf8_is_rejected_not_fatal(tmp_path) -> None:
    """pyarrow cannot pass such a row to its invalid-row hook: the rescue path must cope.

    pyarrow reports the row it could not decode as an "unraisable" UnicodeDecodeError; they
    are collected here, so that pytest's own unraisable-exception handling stays out of it.
    """
    data = b'c0,c1,c2\n' + b'1,a,b\n2,"\xc3x\xa9",x,extra\n3,c,d\n' * 3
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    unraisable: list[type[BaseException]] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda args: unraisable.append(args.exc_type)
    try:
        for chunk in (1, 7, 1 << 20):
            got, rejected, _ = run_reader(str(path), "csv", chunk_size=chunk,
                                          string_columns=True, encoding="utf-8")
            assert got.column("c0").to_pylist() == ["1", "3"] * 3
            assert len(rejected) == 3 and all(r.raw.startswith(b"2,") for r in rejected)
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert set(unraisable) <= {UnicodeDecodeError}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), start=st.integers(0, 400), length=st.integers(0, 400))
def test_local_reads_match_fsspec_reads(tmp_path, data: bytes, start: int, length: int) -> None:
    """Local files skip fsspec (builtin ``open``): the bytes are those fsspec reads."""
    import fsspec

    from readers._text import read_into
    from readers.base import Source

    (tmp_path / "f.bin").write_bytes(data)
    fsspec.filesystem("memory").pipe("/readcheck/f.bin", data)
    local = Source(f"file://{tmp_path / 'f.bin'}", len(data), None, "l", "", "t")
    remote = Source("memory:///readcheck/f.bin", len(data), None, "r", "", "t")
    assert local.local_path == str(tmp_path / "f.bin") and remote.local_path is None
    assert local.read_range(start, start + length) == remote.read_range(start, start + length)
    assert local.read_range(start, start + length) == data[start:start + length]
    got = []
    for source in (local, remote):
        buf, n = read_into(source, start, length)
        got.append(bytes(buf[:n]))
        READ_BUFFERS.give(buf)
    assert got[0] == got[1] == data[start:start + length]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_stream_outlives_parser_views(tmp_path, monkeypatch, fmt: str) -> None:
    """pyarrow's background reader can let go of its view of a parsed buffer only after the
    parse returns (seen under load: ``BufferError`` on resizing the stream's carry buffer,
    reported as a failed chunk). Views kept past the parse must not break the stream."""
    import gzip

    from readers._text import TextReader

    kept: list[memoryview] = []
    collect = TextReader._collect

    def keeps_view(self, block, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        kept.append(block)  # as a late release by the parser's IO thread would
        return collect(self, block, *args, **kwargs)

    monkeypatch.setattr(TextReader, "_collect", keeps_view)
    if fmt == "csv":
        text = "a,b\n" + "".join(f'{i},"x\n{i}"\n' for i in range(3000))
    else:
        text = "".join(json.dumps({"a": i, "b": f"x{i}"}) + "\n" for i in range(3000))
    path = tmp_path / f"f.{fmt}.gz"
    path.write_bytes(gzip.compress(text.encode()))
    got, rejected, _ = run_reader(str(path), fmt, stream_block_bytes=4096)
    assert not rejected, rejected[0].message
    assert got.num_rows == 3000 and kept
    assert got.column("a").to_pylist() == list(range(3000))

"""CSV reader: RFC 4180 quoting, quoted newlines, CRLF, BOM, header row; parsed by pyarrow.csv."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from readers import _csv_rescue as rescue
from readers._boundaries import (
    CR,
    NEWLINE,
    OUT,
    Grammar,
    first_record_end,
    has_byte,
    last_record_end,
    record_starts_csv,
    transfer,
)
from readers._dialect import (
    Dialect,
    blank_comments,
    check_char,
    skip_blank_and_comments,
    skip_lines,
    sniff_delimiter,
)
from readers._text import TextOptions, TextReader, TextState, bisect_records, sentinel_text
from readers._zeros import is_numeric, leading_zero_columns, may_have_leading_zeros
from readers.base import ChunkContext, Description, RestartChunk
from readers.errors import BadFile, ErrorCode, RecordTooLong
from readers.widening import no_nulls

#: Bytes of the head (after skipped lines) the delimiter is sniffed from.
SNIFF_BYTES = 64 << 10

_TEXTISH_SUFFIXES = (".csv", ".txt", ".log", ".dat")
_ASCII = bytes(range(128)) + b"x" * 128
"""Translation table: every byte over 0x7F becomes ``x``."""


def convert_options(types: dict[str, pa.DataType] | None = None,
                    null_values: tuple[str, ...] = ("",),
                    include: list[str] | None = None) -> pacsv.ConvertOptions:
    """How text becomes values: an unquoted empty field is NULL, a quoted ``""`` is ``''``.

    Like DuckDB, Polars and Spark (pyarrow's default keeps empty strings and turns ``NA``,
    ``null``, ... into NULL, which would silently erase real text values). Other
    ``null_values`` replace the empty one, as DuckDB's ``nullstr`` does. ``include``: only
    these columns are converted (``--columns``; None: all).
    """
    return pacsv.ConvertOptions(column_types=types or {}, null_values=list(null_values),
                                strings_can_be_null=True, quoted_strings_can_be_null=False,
                                include_columns=include or [])


def _unique_names(names: list[str]) -> tuple[str, ...]:
    """Header names made unique and non-empty (Parquet and SQL engines need that)."""
    seen: dict[str, int] = {}
    out = []
    for i, name in enumerate(names):
        base = name.strip() or f"column_{i}"
        candidate = base
        while candidate in seen:
            seen[base] += 1
            candidate = f"{base}_{seen[base]}"
        seen.setdefault(candidate, 0)
        out.append(candidate)
    return tuple(out)


def _looks_like_text(head: bytes) -> bool:
    sample = head[:4096]
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte char cut at the sample end is still text
        return exc.start >= len(sample) - 3
    return True


def _quiet_undecodable_rows() -> None:
    """Keep pyarrow's complaint about a non-UTF-8 bad row off the user's terminal.

    pyarrow decodes a bad row's text before it calls ``invalid_row_handler``; when the row is
    not UTF-8, the decode fails inside pyarrow's callback, which prints "Exception ignored
    in ..." and a traceback, then fails the parse as if the handler had said "error". The
    rescue path re-parses that block record by record and rejects the row into ``_errors``
    with its offset and raw bytes, so the print says nothing the user needs. Other
    unraisable exceptions go to the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "chunkmill_csv", False):
        return

    def hook(unraisable: Any) -> None:
        if (isinstance(unraisable.exc_value, UnicodeDecodeError)
                and getattr(unraisable.object, "__module__", None) == __name__):
            return
        previous(unraisable)

    hook.chunkmill_csv = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _parsed_schema(names: list[str], types: dict[str, pa.DataType]) -> pa.Schema:
    """What `CSVReader._parse` returns: every column, or only the ``--columns`` ones."""
    if len(types) != len(names):
        return pa.schema(list(types.items()))
    return pa.schema([(n, types.get(n, pa.string())) for n in names])


def _find_record(data: bytes, raw: bytes, cursor: int, starts: Any) -> int:
    """Offset of the first record at or after ``cursor`` whose text (without its line end)
    is ``raw``, -1 if none. ``starts``: every record start of ``data``, then its length."""
    at = data.find(raw, cursor)
    while at >= 0:
        i = int(np.searchsorted(starts, at))
        if i < len(starts) - 1 and starts[i] == at:
            after = data[at + len(raw):int(starts[i + 1])]
            if after in (b"", b"\n", b"\r", b"\r\n"):
                return at
        at = data.find(raw, at + 1)
    return -1


def _piece_ends(data: Any, grammar: Grammar, size: int) -> Iterator[int]:
    """Where the pieces of a chunk end: the last record end within a piece's size of its start,
    and the end of ``data`` (a record longer than that is a piece alone).

    Pieces start at ``size / 4`` and double up to ``size``: a column with bad values is
    found on a smaller piece, and only that piece is parsed twice before the column is read
    as text. Each piece starts at a record start, outside quotes, as the parse of the whole
    chunk would be there: the pieces give the rows that parse gives.
    """
    start, total = 0, len(data)
    step = max(1, size >> 2)
    while total - start > step:
        end = last_record_end(data, grammar, start + step, False, start)
        if end < 0:
            end = first_record_end(data, start, OUT, grammar, total, True)
            if end < 0:
                break
        yield end + 1
        start, step = end + 1, min(size, step * 2)
    if start < total:
        yield total


_LINE_WINDOW = 1 << 16


def _line_spans(data: Any, rows: np.ndarray, num_rows: int, grammar: Grammar
                ) -> list[tuple[int, int]] | None:
    """The byte spans of the records of ``rows`` (row indexes of ``data``'s parse) when each
    line of ``data`` is one row: no quote, escape or CR byte, and as many lines as rows (no
    empty line, no rejected record); None otherwise.

    Counts the line ends per window and looks for the wanted ones in their windows only:
    finding every record start (`_row_records`) costs several times more.
    """
    for byte in (grammar.quote, grammar.escape, CR if grammar.cr else None):
        if byte is not None and has_byte(data, byte):
            return None
    arr = np.frombuffer(data, np.uint8)
    size, width = len(arr), _LINE_WINDOW
    ends = arr == NEWLINE
    counts = [np.count_nonzero(ends[a:a + width]) for a in range(0, size, width)]
    before = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))  # line ends before a window
    total = int(before[-1])
    if total + bool(size and arr[-1] != NEWLINE) != num_rows:
        return None

    found: dict[int, np.ndarray] = {}  # the line ends of the windows looked into

    def line_end(j: int) -> int:  # the j-th line end (0-based), or the last byte
        if j >= total:
            return size - 1
        w = int(np.searchsorted(before, j, side="right")) - 1
        if w not in found:
            found[w] = np.flatnonzero(ends[w * width:(w + 1) * width])
        return w * width + int(found[w][j - before[w]])

    return [(0 if i == 0 else line_end(int(i) - 1) + 1, line_end(int(i)) + 1) for i in rows]


def conversion_code(reason: str) -> ErrorCode:
    """The error code of a value pyarrow could not convert: bytes that are not UTF-8 in a text
    column are ``InvalidUTF8``, anything else ``TypeMismatch``."""
    return ErrorCode.INVALID_UTF8 if "invalid UTF8" in reason else ErrorCode.TYPE_MISMATCH


def in_file_order(ctx: ChunkContext, since: int) -> None:
    """Sort the records rejected since ``since`` by offset: the rescue paths find them in
    different orders (field counts first, or piece by piece), the output must not depend on
    which one ran."""
    ctx.rejected[since:] = sorted(ctx.rejected[since:],
                                  key=lambda r: -1 if r.byte_offset is None else r.byte_offset)


class CSVReader(TextReader):
    """Comma-separated values. Subclasses change `delimiter` (see `readers.tsv`)."""

    name = "csv"
    suffixes = (".csv",)
    delimiter: ClassVar[str] = ","
    sniffs_delimiter: ClassVar[bool] = True
    """Choose the delimiter from the head when none is given (TSV files are tab-separated)."""

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        if not _looks_like_text(head):
            # Named as ours but not UTF-8: another encoding (describe() then asks for
            # --encoding, or transcodes with it), not a binary to chunk and hash.
            return 40 if any(path.endswith(s) for s in cls.suffixes) else 0
        body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        first_line = body.split(b"\n", 1)[0].split(b"\r", 1)[0]  # CR: classic Mac files
        score = 0
        if any(path.endswith(s) for s in cls.suffixes):
            score += 40
        if cls.delimiter.encode() in first_line:
            score += 20
        elif path.endswith(_TEXTISH_SUFFIXES) and cls.delimiter == ",":
            score += 5  # a one-column text file is still CSV to us
        return score

    def has_header(self, options: TextOptions) -> bool:
        return options.header

    # --- dialect --------------------------------------------------------------------------------
    def _given(self, options: TextOptions) -> Dialect:
        """The dialect the options give (the delimiter may still be sniffed)."""
        quote = check_char("quote", options.quote, allow_empty=True)
        return Dialect(
            delimiter=check_char("delimiter", options.delimiter) or self.delimiter,
            quote='"' if quote is None else (quote or None),
            escape=check_char("escape", options.escape) or None,
            header=options.header, skip_rows=max(0, options.skip_rows),
            comment=check_char("comment", options.comment) or None,
            null_values=("",) if options.null_values is None else tuple(options.null_values),
            null_padding=options.null_padding)

    def options_grammar(self, options: TextOptions) -> Grammar:
        return self._given(options).grammar()

    def groupable(self, options: TextOptions) -> bool:
        return not options.skip_rows and not options.comment

    def dialect(self, head: bytes, at_eof: bool, options: TextOptions) -> Dialect:
        given = self._given(options)
        if options.delimiter is not None or not self.sniffs_delimiter:
            return given
        start = skip_lines(head, given.skip_rows)
        start += skip_blank_and_comments(head[start:], given.comment)
        sample = head[start:start + SNIFF_BYTES]
        if not at_eof or len(head) > start + SNIFF_BYTES:
            sample = sample[:max(sample.rfind(b"\n"), sample.rfind(b"\r")) + 1]
        found = sniff_delimiter(sample, given.quote, given.escape, given.comment,
                                given.delimiter)
        if found is None:
            return given
        return replace(given, delimiter=found, sniffed=("delimiter",))

    @staticmethod
    def _state_dialect(description: Description) -> Dialect:
        state: TextState = description.state
        return state.dialect or Dialect()

    # --- inference ------------------------------------------------------------------------------
    def _parse_options(self, dialect: Dialect, handler: Any = None) -> pacsv.ParseOptions:
        if handler is not None:
            _quiet_undecodable_rows()
        return pacsv.ParseOptions(delimiter=dialect.delimiter, newlines_in_values=True,
                                  quote_char=dialect.quote or False,
                                  escape_char=dialect.escape or False,
                                  invalid_row_handler=handler)

    def _infer(self, head: bytes, at_eof: bool, options: TextOptions,
               dialect: Dialect | None = None) -> tuple[pa.Schema, int, tuple[str, ...]]:
        dialect = dialect or self._given(options)
        # Skipped lines first, then empty lines and comments before the header (as DuckDB).
        skipped = skip_lines(head, dialect.skip_rows)
        skipped += skip_blank_and_comments(head[skipped:], dialect.comment)
        schema, header_len, names = self._infer_from(head[skipped:], at_eof, options, dialect)
        return schema, skipped + header_len, names

    def _infer_from(self, head: bytes, at_eof: bool, options: TextOptions, dialect: Dialect
                    ) -> tuple[pa.Schema, int, tuple[str, ...]]:
        grammar = dialect.grammar()
        end = first_record_end(head, 0, OUT, grammar, len(head), at_eof)
        if end < 0:
            if not at_eof:
                raise RecordTooLong(f"first record longer than {len(head)} bytes")
            moves = transfer(head, 0, len(head), grammar, len(head), True)
            if (moves is not None and moves.apply(OUT) != OUT
                    and (b"\n" in head or b"\r" in head)):
                # Every line of the file would be one header field: not a header at all.
                raise BadFile("the first record opens a quote that is never closed, so the "
                              "whole file would be one header field (a stray quote?)")
            end = len(head) - 1
        first = head[: end + 1]
        if not first.strip(b"\r\n"):  # only line ends: whitespace is a field
            return pa.schema([]), len(first), ()
        has_header = dialect.header
        fields = self._fields(first, dialect)
        if has_header:
            header_len = end + 1 if first else 0
            names = _unique_names(fields)
        else:
            header_len = 0
            names = tuple(f"f{i}" for i in range(len(fields)))
        # Types come from at most ``infer_bytes`` of records, however long the header is.
        body = head[header_len:header_len + options.infer_bytes]
        if not at_eof or len(head) > header_len + options.infer_bytes:
            last = last_record_end(body, grammar, len(body), False)
            body = body[: last + 1] if last >= 0 else b""
        if dialect.comment:
            body = blank_comments(body, grammar, dialect.comment) or body
        schema = self._infer_types(body, names, dialect, options)
        return schema, header_len, names

    def _fields(self, record: bytes, dialect: Dialect) -> list[str]:
        """One record's fields as text, exactly as written (a header of numbers stays "1.50").

        Python's csv module: a pyarrow parse costs ~0.4 ms of set-up, which is most of the
        describe time of a small file.
        """
        text = record.decode("utf-8", "replace").rstrip("\r\n")
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=dialect.delimiter,
                               quotechar=dialect.quote or None, escapechar=dialect.escape,
                               quoting=csv.QUOTE_MINIMAL if dialect.quote else csv.QUOTE_NONE,
                               strict=False))
        return rows[0] if rows else []

    def _infer_types(self, body: bytes, names: tuple[str, ...], dialect: Dialect,
                     options: TextOptions) -> pa.Schema:
        # (isspace: strip() would copy the whole sample to find that out)
        if not body or body.isspace():  # no rows to go by: the other files decide
            return pa.schema([(n, pa.null()) for n in names])

        def read(types: dict[str, pa.DataType]) -> pa.Table:
            return pacsv.read_csv(
                pa.py_buffer(body),
                read_options=pacsv.ReadOptions(column_names=list(names), use_threads=False),
                parse_options=self._parse_options(dialect, lambda row: "skip"),
                convert_options=convert_options(types, dialect.null_values))

        try:
            table = read({})
            numeric = [f.name for f in table.schema if is_numeric(f.type)]
            if numeric and may_have_leading_zeros(body, dialect.delimiter, dialect.quote):
                # 007 and 01420 are identifiers: such a column stays text (as DuckDB's sniffer)
                text = read({n: pa.string() for n in numeric})
                zeros = leading_zero_columns(text, numeric)
                if zeros:
                    table = read({n: pa.string() for n in zeros})
        except pa.ArrowInvalid:  # e.g. invalid UTF-8 in the sample: keep everything as text
            return pa.schema([(n, pa.string()) for n in names])
        # pyarrow infers binary for a column with invalid UTF-8; in a file read as UTF-8
        # (`--encoding utf-8`) that is a bad record in a text column, not a binary column.
        return no_nulls(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_binary(f.type)
                                   else f for f in table.schema]))

    # --- parsing --------------------------------------------------------------------------------
    def _sentinel(self, description: Description) -> bytes:
        state: TextState = description.state
        delimiter = self._state_dialect(description).delimiter
        return b"\n" + sentinel_text(delimiter, len(state.column_names)).encode() + b"\n"

    def _parse_block(self, block: memoryview, abs_offset: int, description: Description,
                     options: TextOptions, ctx: ChunkContext, sentinel: bool
                     ) -> Generator[pa.Table, None, bool]:
        state: TextState = description.state
        if not state.column_names:
            return True  # no header, no columns: the file holds nothing
        dialect = self._state_dialect(description)
        schema = next(iter(description.tables.values()))
        names = list(state.column_names)
        wanted = set(names)  # a set: ``n in schema.names`` per column was quadratic
        types = {f.name: f.type for f in schema if f.name in wanted}
        job = _Job(dialect, dialect.grammar(), names, types,
                   sentinel_text(dialect.delimiter, len(names)) if sentinel else None, options)
        if dialect.comment:
            blanked = blank_comments(block, job.grammar, dialect.comment)
            if blanked is not None:
                block = memoryview(blanked)
        bad: list[tuple[str, int, int]] = []
        seen = [False]
        yielded = False
        before = len(ctx.rejected)
        try:
            if options.streaming:
                # Parse piece by piece straight into the writer: memory stays at a few parse
                # blocks instead of the whole chunk as one table.
                done = (lambda n: ctx.advance(abs_offset + n))  # noqa: E731
                for table in self._stream_pieces(block, abs_offset, job, bad, seen, ctx, done):
                    yielded = True
                    yield table
            else:
                table, seen[0], bad = self._parse(block, job)
                yield table
        except pa.ArrowInvalid:
            if yielded:  # rows of this chunk already went out: read it again as a whole
                raise RestartChunk("a value did not convert", {"streaming": False}) from None
            del ctx.rejected[before:]  # the pieces' rejects: the chunk is read again here
            rescued = self._rescue_by_column(block, abs_offset, job, ctx)
            if rescued is None:
                rescued = self._rescue(block, abs_offset, job, ctx)
            yield rescued[0]
            return rescued[1]
        self._reject_rows(bytes(block) if bad else b"", abs_offset, bad, ctx, job.grammar)
        in_file_order(ctx, before)
        return seen[0] or not sentinel

    def _stream_pieces(self, data: Any, abs_offset: int, job: _Job,
                       bad: list[tuple[str, int, int]], seen: list[bool], ctx: ChunkContext,
                       done: Callable[[int], None]) -> Iterator[pa.Table]:
        """The chunk in pieces of about ``parse_block_bytes`` cut at record ends, each parsed
        on its own, so a value that does not convert costs a parse of its piece, not of the chunk.

        The failing piece is parsed once more with the failing column as text, and only that
        column's values are checked (`readers._csv_rescue.LooseColumns`); the column stays
        text for the rest of the chunk (bad values come in groups), checked piece by piece.
        Raises ``ArrowInvalid`` when that cannot work (an error that names no column, or rows
        that cannot be matched to their records): the caller reads the chunk another way.
        """
        loose = rescue.LooseColumns(job.names, job.types, convert_options(job.types))
        start, step = 0, job.options.parse_block_bytes
        for end in _piece_ends(data, job.grammar, step):
            piece = data[start:end]
            while True:
                found: list[tuple[str, int, int]] = []  # this piece's field-count rejects
                marker = [False]
                parse = replace(job, types=loose.parse_types) if loose else job
                try:
                    # A piece longer than a block is one long record: one block holds it.
                    tables = list(self._stream(piece, parse, found, marker,
                                               block=min(max(step, len(piece)), 1 << 30)))
                    break
                except pa.ArrowInvalid as exc:
                    if not loose.widen(exc):
                        raise
            if loose and tables:
                text = piece
                if end == len(data) and job.marker is not None:
                    text = piece[: len(piece) - len(job.marker) - 2]
                table = self._keep_good_values(pa.concat_tables(tables), text,
                                               abs_offset + start, found, loose, job, ctx)
                if table is None:
                    raise pa.ArrowInvalid("the rows of a piece do not match its records")
                tables = [table]
            bad += found
            seen[0] = seen[0] or marker[0]
            done(end)
            for table in tables:
                if table.num_rows:
                    yield table
            start = end

    def _keep_good_values(self, table: pa.Table, data: Any, abs_offset: int,
                          bad: list[tuple[str, int, int]], loose: rescue.LooseColumns,
                          job: _Job, ctx: ChunkContext) -> pa.Table | None:
        """``table`` (the rows of ``data``, parsed with ``loose`` columns as text) without the
        rows whose loose values do not convert, which go to ``_errors`` at their record's
        offset; None when the rows cannot be matched to their records (nothing is rejected)."""
        reject, why, converted = loose.check(table)
        if reject.any():
            rows = np.flatnonzero(reject)
            spans = None if bad else _line_spans(data, rows, table.num_rows, job.grammar)
            if spans is None:
                data = bytes(data)
                found = self._row_records(data, bad, job.grammar)
                if found is None or len(found[1]) != table.num_rows:
                    return None
                starts, records = found
                spans = [(int(starts[records[i]]), int(starts[records[i] + 1])) for i in rows]
            for i, (a, b) in zip(rows, spans, strict=True):
                ctx.reject(error_type=conversion_code(why[int(i)]),
                           byte_offset=abs_offset + a, raw=bytes(data[a:b]),
                           message=f"{ctx.source.path}: {why[int(i)]}")
        return loose.keep(table, reject, converted)

    def _stream(self, data: Any, job: _Job, bad: list[tuple[str, int, int]],
                seen: list[bool], done: Callable[[int], None] | None = None,
                block: int | None = None) -> Iterator[pa.Table]:
        """Parse block by block; ``done(n)``: the first ``n`` bytes of ``data`` are parsed.

        ``block``: pyarrow's block size (default ``parse_block_bytes``); a record longer than
        that fails the parse ("straddling object").
        """
        block = block or job.options.parse_block_bytes
        marker = job.marker
        padding = job.dialect.null_padding
        skipped: list[int] = []  # record numbers pyarrow left out (with null padding only)
        padded: dict[int, tuple[str, int]] = {}

        def handler(row: Any) -> str:
            if marker is not None and row.text == marker:
                seen[0] = True
            elif padding and row.actual_columns < row.expected_columns:
                padded[row.number] = (row.text, row.expected_columns - row.actual_columns)
            else:
                bad.append((row.text, row.expected_columns, row.actual_columns))
            if padding:
                skipped.append(row.number)
            return "skip"

        types = job.types
        include = job.include
        reader = pacsv.open_csv(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pacsv.ReadOptions(column_names=job.names, use_threads=False,
                                           block_size=block),
            parse_options=self._parse_options(job.dialect, handler),
            convert_options=convert_options(types, job.dialect.null_values, include))
        cursor = [1, 0]  # the next record number, and how many skipped ones are behind it
        # Each batch is one parse block of the input (the reader takes the whole buffer at
        # once, so its position says nothing): count blocks for the progress line.
        size = len(data)
        for n, batch in enumerate(reader, 1):
            if done is not None:
                done(min(size, n * block))
            if not batch.num_rows:
                continue
            table = pa.Table.from_batches([batch])
            if padding and skipped:
                table = self._pad(table, cursor, skipped, padded, job, types)
            yield table if job.types or not include else table.select([])
        if padding and padded:  # short records after the last full one
            rest = sorted(n for n in padded if n >= cursor[0])
            if rest:
                table = self._padded_rows([padded[n] for n in rest], job, types)
                yield table if job.types or not include else table.select([])

    def _pad(self, table: pa.Table, cursor: list[int], skipped: list[int],
             padded: dict[int, tuple[str, int]], job: _Job, types: dict[str, pa.DataType]
             ) -> pa.Table:
        """The batch with the short records that fall among its rows put back in place.

        pyarrow numbers records (empty lines aside) from 1 and counts the ones it hands to
        the invalid-row hook; the batch's rows are the other numbers, in order.
        """
        plan: list[tuple[int, int] | int] = []  # (row, count) of the batch, or a padded number
        number, k = cursor
        row, n = 0, table.num_rows
        while row < n or (k < len(skipped) and skipped[k] == number and number in padded):
            nxt = skipped[k] if k < len(skipped) else None
            if nxt == number:
                if number in padded:
                    plan.append(number)
                number, k = number + 1, k + 1
                continue
            if row >= n:
                break
            take = n - row if nxt is None else min(n - row, nxt - number)
            plan.append((row, take))
            row, number = row + take, number + take
        cursor[0], cursor[1] = number, k
        numbers = [p for p in plan if isinstance(p, int)]
        if not numbers:
            return table
        extra = self._padded_rows([padded.pop(p) for p in numbers], job, types)
        extra = extra.cast(table.schema)
        pieces, at = [], 0
        for p in plan:
            if isinstance(p, int):
                pieces.append(extra.slice(at, 1))
                at += 1
            else:
                pieces.append(table.slice(*p))
        return pa.concat_tables(pieces).combine_chunks()

    def _padded_rows(self, rows: list[tuple[str, int]], job: _Job,
                     types: dict[str, pa.DataType]) -> pa.Table:
        """Short records with empty fields appended, parsed (empty is NULL unless the null
        values say otherwise, so the appended fields are NULL as DuckDB's null_padding)."""
        nulls = job.dialect.null_values
        filler = "" if "" in nulls or not nulls else nulls[0]
        text = "\n".join(t + (job.dialect.delimiter + filler) * missing for t, missing in rows)
        table = pacsv.read_csv(
            pa.py_buffer((text + "\n").encode("utf-8", "surrogateescape")),
            read_options=pacsv.ReadOptions(column_names=job.names, use_threads=False),
            parse_options=self._parse_options(job.dialect),
            convert_options=convert_options(types, nulls, job.include))
        if table.num_rows != len(rows):
            raise pa.ArrowInvalid("CSV conversion error: a padded record did not parse")
        return table

    def _parse(self, data: Any, job: _Job
               ) -> tuple[pa.Table, bool, list[tuple[str, int, int]]]:
        """The whole block as one table: (rows, sentinel seen, field-count rejects)."""
        bad: list[tuple[str, int, int]] = []
        seen = [False]
        tables = list(self._stream(data, job, bad, seen))
        schema = _parsed_schema(job.names, job.types)
        return (pa.concat_tables(tables) if tables else schema.empty_table()), seen[0], bad

    def _reject_rows(self, data: bytes, abs_offset: int, bad: list[tuple[str, int, int]],
                     ctx: ChunkContext, grammar: Grammar) -> None:
        """Field-count rejects, each at the offset of its own record.

        pyarrow hands over a bad row's text, not where it is: the offset is the first record
        (after the previous reject) whose bytes are exactly that text, so a short row such as
        ``1`` is never placed inside an earlier record that merely contains it.
        """
        starts = record_starts_csv(data, grammar) if bad else None
        cursor = 0
        for text, expected, actual in bad:
            raw = text.encode("utf-8", "surrogateescape")
            at = _find_record(data, raw, cursor, starts)
            offset = None
            if at >= 0:
                cursor = at + len(raw)
                offset = abs_offset + at
            hint = " (--null-padding reads missing trailing fields as NULL)" if (
                actual < expected) else ""
            ctx.reject(error_type=ErrorCode.FIELD_COUNT_MISMATCH, byte_offset=offset, raw=raw,
                       message=f"{ctx.source.path}: expected {expected} fields, got {actual}"
                               + hint)

    def _ends_on_boundary(self, data: bytes, job: _Job) -> bool:
        """Does the block end outside quotes? Parse it once as plain strings to know.

        Bytes over 0x7F are read as ``x``: the structure (quotes, delimiters, line ends) is
        ASCII and stays, while pyarrow cannot fail decoding a row (it cannot hand a row with
        invalid UTF-8 *and* a wrong field count to the invalid-row hook).
        """
        if job.marker is None:
            return True
        sentinel_bytes = b"\n" + job.marker.encode() + b"\n"
        text = replace(job, types={n: pa.string() for n in job.names})
        try:
            return self._parse(data.translate(_ASCII) + sentinel_bytes, text)[1]
        except pa.ArrowInvalid:
            return False

    def _rescue_by_column(self, block: memoryview, abs_offset: int, job: _Job,
                          ctx: ChunkContext) -> tuple[pa.Table, bool] | None:
        """Values did not convert: parse the failing columns as text, reject the rows whose
        values the converter refuses (`readers._csv_rescue`), keep every other row.

        Costs about one more parse of the chunk, whatever the number of bad values, where
        bisecting the records costs several. None when the rows cannot be matched to their
        records (then `_rescue` bisects).
        """
        loose = rescue.LooseColumns(job.names, job.types, convert_options(job.types))
        parse = job
        while True:
            try:
                table, seen, bad = self._parse(block, parse)
                break
            except pa.ArrowInvalid as exc:
                if not loose.widen(exc):
                    return None
                parse = replace(job, types=loose.parse_types)
        data = bytes(block)
        if job.marker is not None:
            data = data[: len(data) - len(job.marker) - 2]
        before = len(ctx.rejected)
        out = self._keep_good_values(table, data, abs_offset, bad, loose, job, ctx)
        if out is None:
            return None
        self._reject_rows(data if bad else b"", abs_offset, bad, ctx, job.grammar)
        in_file_order(ctx, before)
        return out, seen or job.marker is None

    def _row_records(self, data: bytes, bad: list[tuple[str, int, int]], grammar: Grammar
                     ) -> tuple[np.ndarray, np.ndarray] | None:
        """(every record start and ``len(data)``, the indexes of the records that became rows:
        not empty lines, not field-count rejects); None when a reject cannot be found."""
        starts = record_starts_csv(data, grammar)
        lengths = np.diff(starts)
        records = starts[:-1]
        rows = np.ones(len(records), bool)
        for i in np.flatnonzero(lengths <= 2):  # a bare line end is no row (pyarrow skips it)
            a = int(records[i])
            rows[i] = data[a:a + int(lengths[i])] not in (b"\n", b"\r", b"\r\n")
        cursor = 0
        for text, _, _ in bad:
            raw = text.encode("utf-8", "surrogateescape")
            at = _find_record(data, raw, cursor, starts)
            if at < 0:
                return None
            cursor = at + len(raw)
            rows[int(np.searchsorted(records, at))] = False
        return starts, np.flatnonzero(rows)

    def _rescue(self, block: memoryview, abs_offset: int, job: _Job, ctx: ChunkContext
                ) -> tuple[pa.Table | None, bool]:
        """A value did not convert: isolate the bad records, keep every good one."""
        data = bytes(block)
        sentinel_bytes = b""
        if job.marker is not None:
            sentinel_bytes = b"\n" + job.marker.encode() + b"\n"
            data = data[: len(data) - len(sentinel_bytes)]
        starts = record_starts_csv(data, job.grammar)
        seen = self._ends_on_boundary(data, job)

        def parse(piece: bytes, at: int) -> pa.Table:
            table, ok, bad = self._parse(piece + sentinel_bytes, job)
            if job.marker is not None and not ok:
                raise ValueError("piece does not end on a record boundary")
            self._reject_rows(piece, abs_offset + at, bad, ctx, job.grammar)
            return table

        def on_bad(a: int, b: int, exc: Exception) -> None:
            reason = str(exc).splitlines()[0]
            ctx.reject(error_type=conversion_code(reason), byte_offset=abs_offset + a,
                       raw=data[a:b], message=f"{ctx.source.path}: {reason}")

        before = len(ctx.rejected)
        pieces = list(bisect_records(data, starts, parse, on_bad))
        in_file_order(ctx, before)
        schema = _parsed_schema(job.names, job.types)
        table = pa.concat_tables(pieces) if pieces else schema.empty_table()
        return table, seen


@dataclass(frozen=True, slots=True)
class _Job:
    """How one block is parsed."""

    dialect: Dialect
    grammar: Grammar
    names: list[str]
    types: dict[str, pa.DataType]
    """The columns converted: all of them, or only the ``--columns`` ones."""
    marker: str | None
    """The sentinel record's text, when the block ends in one."""
    options: TextOptions

    @property
    def include(self) -> list[str] | None:
        """pyarrow's ``include_columns`` (None: every column)."""
        if len(self.types) == len(self.names):
            return None
        return list(self.types) or self.names[:1]  # (an empty list would mean all of them)


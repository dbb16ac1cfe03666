"""Shared machinery of the line-oriented text readers (CSV, TSV, JSON lines).

Uncompressed files are split into byte ranges parsed in parallel (see `readers._boundaries` for
how record boundaries stay exact). Whole-file compressed streams cannot be split: one task
decompresses and parses them block by block with bounded memory. Both paths parse through the
subclass's `_parse_block`, which must reject bad records into the chunk context rather than raise.
"""

from __future__ import annotations

import codecs
import dataclasses
import mmap
import os
import threading
from abc import abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from readers._boundaries import (
    CR,
    IDENTITY,
    LINES,
    OUT,
    Grammar,
    Transfer,
    first_record_end,
    guess_parity,
    last_record_end,
    record_ends,
    transfer,
)
from readers._dialect import Dialect
from readers._encoding import check_utf8, file_offset, is_utf8, single_byte, to_utf8, transcoded
from readers.base import (
    RAW_CAP,
    ChunkContext,
    ChunkOutcome,
    ChunkSpec,
    Description,
    Reader,
    Reconciliation,
    RestartChunk,
    Source,
    TogetherRead,
    on_memory_pressure,
    read_head,
)
from readers.errors import DecompressionLimit, ErrorCode, RecordTooLong, Truncated
from readers.options import DialectOptions, ReaderOptions

BOM = b"\xef\xbb\xbf"
#: A record no real file contains; parsed after a chunk to prove the chunk ended outside quotes.
SENTINEL_TEXT = "\x1fchunkmill\x1fend\x1f"
SENTINEL = b"\n" + SENTINEL_TEXT.encode() + b"\n"


def sentinel_text(delimiter: str, ncols: int) -> str:
    """The sentinel record for a file: it must be *invalid* (wrong field count) to come back.

    Two fields for one-column files, one field otherwise; always the same length as
    `SENTINEL_TEXT` so the chunk buffer's spare room fits either.
    """
    return SENTINEL_TEXT if ncols != 1 else "\x1fchunkmill" + delimiter + "end\x1f"

@dataclass(frozen=True, slots=True, kw_only=True)
class TextOptions(ReaderOptions, DialectOptions):
    """Options of the line-oriented text readers (the CSV/TSV dialect fields come from
    `DialectOptions`)."""

    infer_bytes: int = 1 << 20
    """Bytes from the head of a file its column types are inferred from."""
    stream_block_bytes: int = 8 << 20
    """Decompressed bytes per parse in a whole-file stream."""
    parse_block_bytes: int = 4 << 20
    """Bytes pyarrow parses at a time inside a chunk (bounds a chunk's Arrow memory)."""
    decompression_ratio_limit: float = 200
    """A stream inflating past this many times its file size (and 1 GiB) is refused."""
    streaming: bool = True
    """Parse a chunk block by block into the writer; False holds the chunk's rows until the
    end (the CSV reader restarts a chunk that way when a value fails to convert half-way)."""
    encoding: str | None = None
    """The files' character encoding, transcoded to UTF-8 while reading (None: UTF-8, and a
    file whose head is not UTF-8 fails naming ``--encoding``; see `readers._encoding`)."""

    @property
    def recoded(self) -> bool:
        """Transcoded to UTF-8. ``--encoding utf-8`` only says the files are UTF-8: the head
        is not checked, and a record that is not UTF-8 is rejected on its own."""
        return self.encoding is not None and codecs.lookup(self.encoding).name != "utf-8"

    @property
    def per_block(self) -> bool:
        """Transcoded block by block, in parallel chunks (a single-byte encoding)."""
        return self.recoded and single_byte(self.encoding)


@dataclass(frozen=True, slots=True)
class TextSelector:
    """How a text chunk is read (`ChunkSpec.selector` of the text readers)."""

    stream: bool = False
    """Read the whole file as one stream from the first record (compressed files, and files
    whose quoting cannot be split exactly)."""
    parity: int | None = None
    """Whether the chunk's nominal start lies inside quotes (1), outside (0), or unknown
    (None: the chunk guesses, and `TextReader.reconcile` checks the guess)."""


STREAM = TextSelector(stream=True)


@dataclass(slots=True)
class TextFacts:
    """What a text chunk reports for reconciliation (`ChunkContext.facts`)."""

    flips: int = 0
    """The quote-state `Transfer` of the chunk's nominal range: toggles (mod 2) after its
    last reset, or after its start when ``resets`` is False."""
    resets: bool = False
    parity: int = 0
    """The quote state the chunk assumed at its start (0 outside, 1 inside)."""
    last: bool = False
    """The chunk's last record runs to the end of the file."""
    start: int | None = None
    """Byte offset of the chunk's first record (None: no record starts in its range)."""
    end: int | None = None
    """Byte offset just past its last record (None: unknown, a record too long to follow)."""
    verified: bool = True
    """The parser ended the chunk outside quotes (its sentinel record came back)."""
    open_quote_at_eof: bool = False
    """The file ends inside an open quoted field."""

    @property
    def transfer(self) -> Transfer:
        return Transfer(self.resets, self.flips)


@dataclass(frozen=True, slots=True)
class TextState:
    """Planning state of a text file, shipped to every chunk task."""

    data_start: int
    """Byte offset of the first data record (after BOM and header)."""
    column_names: tuple[str, ...] = ()
    """Column names from the header (or generated), in file order."""
    dialect: Dialect | None = None
    """CSV/TSV: the file's dialect (None for formats without one)."""


class ReadBuffers:
    """Chunk read buffers, handed back and reused by the next chunk.

    A fresh anonymous mapping per chunk costs a page fault and the kernel's zeroing for every
    page before the read can fill it: 1.8 of the 2.8 CPU-s of system time of a 2 GB CSV run.
    A reused buffer only costs the copy. Nothing parsed keeps pointing into the buffer
    (pyarrow's CSV and JSON readers build new arrays), so it is free again once the chunk is.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes; its contents are whatever was there before."""
        with self._lock:
            fits = [b for b in self._free if len(b) >= size]
            if fits:
                buf = min(fits, key=len)
                self._free.remove(buf)
                return buf
        return mmap.mmap(-1, -(-size // _BUFFER_STEP) * _BUFFER_STEP)

    def give(self, buf: mmap.mmap | bytearray) -> None:
        if not isinstance(buf, mmap.mmap):
            return
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=len, reverse=True)
            del self._free[self.keep:]  # the smallest go; unmapped once unreferenced

    def clear(self) -> None:
        """Let every idle buffer go (memory pressure); they are unmapped once unreferenced."""
        with self._lock:
            self._free.clear()

    def __len__(self) -> int:
        """Idle buffers kept."""
        return len(self._free)


_BUFFER_STEP = 1 << 20
_OVERFLOW = 1 << 16
"""Bytes read past a range's end, where its last record usually ends."""
#: One buffer per worker thread stays mapped between chunks (threads run one chunk each).
READ_BUFFERS = ReadBuffers(keep=min(os.cpu_count() or 1, 8))
on_memory_pressure(READ_BUFFERS.clear)


def read_into(source: Source, start: int, size: int, spare: int = 0
              ) -> tuple[mmap.mmap | bytearray, int]:
    """``size`` bytes from ``start`` into a buffer with at least ``spare`` bytes after them.

    The spare room lets the parser append its sentinel without copying the chunk again.
    Returns the buffer and how many bytes were read; bytes past those are stale, and the
    caller gives the buffer back to `READ_BUFFERS` when done with it. The buffer is an
    anonymous mapping, not a ``bytearray``, which zero-fills with the GIL held first.
    """
    size = max(0, min(size, source.size - start))
    if size == 0:
        return bytearray(spare), 0
    buf = READ_BUFFERS.take(size + spare)
    try:
        with source.open_stored() as f:
            f.seek(start)
            view = memoryview(buf)[:size]
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
            view.release()
    except BaseException:
        READ_BUFFERS.give(buf)
        raise
    return buf, got


def bisect_records(data: bytes, starts: np.ndarray, parse: Callable[[bytes, int], pa.Table],
                   on_bad: Callable[[int, int, Exception], None]) -> Iterator[pa.Table]:
    """Parse records ``starts[i]:starts[i+1]``, isolating the ones ``parse`` cannot take.

    ``parse(piece, offset)`` gets the piece's bytes and its offset within ``data``.

    Good runs come back as tables in file order; each bad record goes to ``on_bad(start, end,
    error)``. Parses O(bad * log n) pieces, so one bad value does not cost a re-parse per row.
    """
    stack = [(0, len(starts) - 1)]
    while stack:
        lo, hi = stack.pop()
        if lo >= hi:
            continue
        a, b = int(starts[lo]), int(starts[hi])
        try:
            table = parse(data[a:b], a)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, UnicodeDecodeError) as exc:
            if hi - lo == 1:
                on_bad(a, b, exc)
                continue
            mid = (lo + hi) // 2
            stack.append((mid, hi))  # LIFO: the left half is parsed first, keeping row order
            stack.append((lo, mid))
            continue
        if table.num_rows:
            yield table


class TextReader(Reader):
    """Base of the text readers: byte-range planning, boundary verification, streaming."""

    streams_compressed = True
    single_table = True
    reconciles = True
    bundles = True
    quote: ClassVar[bytes | None] = b'"'
    """Quote character that decides record ends; None when a newline always ends one."""
    delimiter: ClassVar[str] = ","
    """Field delimiter (a quote right after it opens a quoted field)."""
    threads_ok = True  # pyarrow's CSV/JSON parsers and the Parquet writer release the GIL
    options_type = TextOptions

    # --- subclass hooks -------------------------------------------------------------------------
    @abstractmethod
    def _infer(self, head: bytes, at_eof: bool, options: TextOptions,
               dialect: Dialect | None = None) -> tuple[pa.Schema, int, tuple[str, ...]]:
        """(schema, header length in bytes, column names) from the first bytes of the file."""

    def dialect(self, head: bytes, at_eof: bool, options: TextOptions) -> Dialect | None:
        """The file's dialect, from the options and its head (None: the format has none)."""
        return None

    def groupable(self, options: TextOptions) -> bool:
        """Whether small files may be described together (see `describe_many`)."""
        return True

    @abstractmethod
    def _parse_block(self, block: memoryview, abs_offset: int, description: Description,
                     options: TextOptions, ctx: ChunkContext, sentinel: bool
                     ) -> Generator[pa.Table, None, bool]:
        """Yield the rows of whole records; with ``sentinel`` the block ends in `SENTINEL`.

        Returns whether the sentinel came back as a record of its own (always True when
        ``sentinel`` is False or the format has no quoting). May raise `RestartChunk` after
        yielding, to have the chunk read again another way.
        """

    def _collect(self, block: memoryview, abs_offset: int, description: Description,
                 options: TextOptions, ctx: ChunkContext, sentinel: bool
                 ) -> tuple[list[pa.Table], bool]:
        """All rows of one block in memory, for blocks that may still be thrown away."""
        for attempt in range(2):
            gen = self._parse_text(block, abs_offset, description, options, ctx, sentinel)
            tables: list[pa.Table] = []
            try:
                while True:
                    tables.append(next(gen))
            except StopIteration as stop:
                return tables, bool(stop.value)
            except RestartChunk as restart:
                if attempt:
                    raise
                options = options.but(**restart.changes)
        raise AssertionError("unreachable")

    def _parse_text(self, block: memoryview, abs_offset: int, description: Description,
                    options: TextOptions, ctx: ChunkContext, sentinel: bool
                    ) -> Generator[pa.Table, None, bool]:
        """`_parse_block` on UTF-8: a block of a single-byte encoding is transcoded first, and
        the offsets of what it rejects are mapped back to the file's own bytes."""
        if not options.per_block:
            return (yield from self._parse_block(block, abs_offset, description, options, ctx,
                                                 sentinel))
        text = to_utf8(block, options.encoding)
        before = len(ctx.rejected)
        try:
            return (yield from self._parse_block(memoryview(text), abs_offset, description,
                                                 options, ctx, sentinel))
        finally:
            for i in range(before, len(ctx.rejected)):
                r = ctx.rejected[i]
                if r.byte_offset is not None and 0 <= r.byte_offset - abs_offset <= len(text):
                    at = abs_offset + file_offset(text, r.byte_offset - abs_offset)
                    ctx.rejected[i] = dataclasses.replace(r, byte_offset=at)

    def _check_utf8(self, head: bytes, path: str, at_eof: bool) -> None:
        """Fail a file read without ``--encoding`` whose head is not UTF-8 (`NotUTF8`)."""
        check_utf8(head, path, at_eof)

    @staticmethod
    def _open(source: Source, options: TextOptions) -> Any:
        """The file's bytes (decompressed); UTF-8 text for a multi-byte encoding."""
        f = source.open(source.compression)
        if options.recoded and not options.per_block:
            return _Closing(transcoded(f, options.encoding), f)
        return f

    def _sentinel(self, description: Description) -> bytes:
        """Sentinel bytes appended after a chunk (see `sentinel_text`)."""
        return SENTINEL

    @property
    def grammar(self) -> Grammar:
        """What ends a record in this format (see `readers._boundaries`)."""
        if self.quote is None:
            return LINES
        return Grammar(quote=self.quote[0], delimiter=ord(self.delimiter))

    def grammar_of(self, description: Description) -> Grammar:
        """What ends a record in this file (its dialect's grammar, else the format's)."""
        dialect = getattr(description.state, "dialect", None)
        return dialect.grammar() if dialect is not None else self.grammar

    # --- Reader API -----------------------------------------------------------------------------
    def describe(self, source: Source, options: TextOptions) -> Description:
        limit = want = options.infer_bytes
        ceiling = options.max_record_bytes + limit
        while True:
            with self._open(source, options) as f:
                head = read_head(f, want + 1)  # a damaged stream keeps its readable head
            at_eof = len(head) <= want
            head = head[:want]
            if options.per_block:
                head = to_utf8(head, options.encoding)
            elif options.encoding is None:
                self._check_utf8(head, source.path, at_eof)
            bom = len(BOM) if head.startswith(BOM) else 0
            try:
                dialect = self.dialect(head[bom:], at_eof, options)
                schema, header_len, names = self._infer(head[bom:], at_eof, options, dialect)
                if options.per_block:  # where the data starts in the file's own bytes
                    header_len = file_offset(head[bom:], header_len)
                break
            except RecordTooLong:
                # A header longer than the head: it obeys the record limit, like any record.
                if at_eof or want >= ceiling:
                    raise
                want = min(want * 4, ceiling)
        if header_len > options.max_record_bytes:
            raise RecordTooLong(f"the header is {header_len} bytes long, more than "
                                f"max_record_bytes ({options.max_record_bytes})")
        metadata = {"compression": source.compression, "bom": bool(bom),
                    **({"encoding": options.encoding} if options.encoding else {}),
                    "columns": list(names), "schema_inferred_from_bytes": len(head)}
        if dialect is not None:
            metadata["dialect"] = dialect.as_metadata()
        return Description({source.table: schema}, metadata,
                           TextState(data_start=bom + header_len, column_names=names,
                                     dialect=dialect))

    def describe_many(self, sources: Sequence[Source], options: TextOptions
                      ) -> list[Description | None]:
        """Small files that share a header are inferred together, from their concatenation.

        One inference over many files instead of one each (pyarrow's per-call set-up is most
        of a 10 KB file's cost); the types then fit all of them, as unifying would make them.
        Files without a body, compressed or bigger than ``infer_bytes`` are left to
        `describe`, and so is a file that ends inside quotes under the sniffed dialect: in a
        concatenation its open field would swallow the next file's records.
        """
        limit = options.infer_bytes
        out: list[Description | None] = [None] * len(sources)
        if options.recoded or not self.groupable(options):
            return out  # with an encoding, each file is transcoded on its own
        groups: dict[bytes, list[tuple[int, int, bool]]] = {}
        bodies: dict[int, bytes] = {}
        grammar = self.options_grammar(options)
        for i, source in enumerate(sources):
            if source.compression or not 0 < source.size <= limit:
                continue
            try:
                data = source.read_range(0, source.size)
            except Exception:  # noqa: BLE001 - describe() on its own reports it properly
                continue
            split = (self._split_header(data, options, grammar) if len(data) == source.size
                     else None)
            if split is not None and not is_utf8(data):
                split = None  # describe() says it is not UTF-8
            if split is None:
                continue
            header, start = split
            bodies[i] = data[start:] if data.endswith(b"\n") else data[start:] + b"\n"
            groups.setdefault(header, []).append((i, start, data.startswith(BOM)))
        for header, members in groups.items():
            batch: list[tuple[int, int, bool]] = []
            size = 0
            for n, member in enumerate(members):
                batch.append(member)
                size += len(bodies[member[0]])
                if size >= limit or n == len(members) - 1:
                    self._describe_batch(sources, header, batch, bodies, options, out)
                    batch, size = [], 0
        return out

    def read_together(self, members: Sequence[tuple[Source, ChunkSpec, Description]],
                      options: TextOptions) -> Iterator[TogetherRead]:
        """Whole small files with the same columns and types, parsed as one concatenation.

        Only files that end outside quotes and hold no empty record qualify, so each file's
        row count is its record count (`records_counted`); a batch whose parse rejects any
        record, or whose row count differs, is left to the one-by-one path (which locates
        the bad records). pyarrow's set-up per parse is most of a 10 KB file's cost.
        """
        # Parsed as each group's batch fills: a bundle's files are never all held at once.
        # A batch is a parse block, as inside a chunk: at 8 MiB (the stream's blocks) two
        # bundle threads of 10,000 small files peaked 35-45 MiB higher, no faster.
        groups: dict[tuple[Any, ...], list[tuple[int, bytes]]] = {}
        sizes: dict[tuple[Any, ...], int] = {}
        grammars: dict[Any, Grammar] = {}
        shown: dict[int, str] = {}  # one text per schema object (members share them)
        limit = options.parse_block_bytes
        if options.recoded:
            return  # read one by one, each transcoded on its own
        for i, (source, chunk, description) in enumerate(members):
            state: TextState = description.state
            if (source.compression or (chunk.selector or TextSelector()).stream
                    or chunk.offset != state.data_start
                    or chunk.offset + chunk.length != source.size):
                continue
            try:
                body = source.read_range(chunk.offset, source.size)
            except Exception:  # noqa: BLE001 - read() on its own retries and reports it
                continue
            if len(body) != chunk.length:
                continue
            table = next(iter(description.tables))
            schema = description.tables[table]
            if id(schema) not in shown:
                shown[id(schema)] = str(schema)
            key = (table, state.column_names, shown[id(schema)], state.dialect)
            if key not in grammars:
                grammars[key] = self.grammar_of(description)
            groups.setdefault(key, []).append((i, body))
            sizes[key] = sizes.get(key, 0) + len(body)
            if sizes[key] >= limit:
                read = self._parse_together(members, table, groups.pop(key), grammars[key],
                                            options)
                sizes.pop(key)
                if read is not None:
                    yield read
        for key, group in groups.items():
            read = self._parse_together(members, key[0], group, grammars[key], options)
            if read is not None:
                yield read

    def _parse_together(self, members: Sequence[tuple[Source, ChunkSpec, Description]],
                        table: str, batch: list[tuple[int, bytes]], grammar: Grammar,
                        options: TextOptions) -> TogetherRead | None:
        data, batch, counts = records_counted(batch, grammar)
        if not batch:
            return None
        source, chunk, description = members[batch[0]]
        ctx = ChunkContext(source, chunk)
        try:
            tables, _ = self._collect(memoryview(data), 0, description, options, ctx, False)
        except Exception:  # noqa: BLE001 - the one-by-one path reports it with its file
            return None
        rows = pa.concat_tables(tables) if tables else None
        if ctx.rejected or rows is None or rows.num_rows != sum(counts):
            return None
        return TogetherRead(batch, table, rows, counts)

    def _split_header(self, data: bytes, options: TextOptions, grammar: Grammar
                      ) -> tuple[bytes, int] | None:
        """(header record, where the body starts) of a whole small file, or None to skip it
        (``grammar``: the options'; made once for all the files)."""
        bom = len(BOM) if data.startswith(BOM) else 0
        header = b""
        start = bom
        if self.has_header(options):
            start = len(data) - len(data[bom:].lstrip(b"\r\n"))
            end = first_record_end(data, start, OUT, grammar)
            if end < 0:
                return None
            header, start = data[start:end + 1], end + 1
        return (header, start) if data[start:].strip() else None

    def options_grammar(self, options: TextOptions) -> Grammar:
        """The grammar the options give before any file is sniffed (quotes, line ends)."""
        return self.grammar

    def has_header(self, options: TextOptions) -> bool:
        """Whether the first record names the columns (CSV and TSV by default; JSON never)."""
        return False

    def _describe_batch(self, sources: Sequence[Source], header: bytes,
                        batch: list[tuple[int, int, bool]], bodies: dict[int, bytes],
                        options: TextOptions, out: list[Description | None]) -> None:
        head = b"".join([header, *(bodies[i] for i, _, _ in batch)])  # one copy, not two
        try:
            dialect = self.dialect(head, True, options)
            grammar = dialect.grammar() if dialect is not None else self.grammar
            if _special(head, grammar):
                if header and first_record_end(header, 0, OUT, grammar) != len(header) - 1:
                    return  # the header is no single record in the sniffed dialect
                kept = _whole([bodies[i] for i, _, _ in batch], grammar, empty_ok=True)[0]
                if len(kept) < len(batch):
                    # A file ends inside quotes: its open field swallowed the next file's
                    # records. Sniff again without it; it is described on its own.
                    if not kept:
                        return
                    batch = [batch[k] for k in kept]
                    head = b"".join([header, *(bodies[i] for i, _, _ in batch)])
                    dialect = self.dialect(head, True, options)
                    if (dialect.grammar() if dialect is not None else self.grammar) != grammar:
                        return
            schema, _, names = self._infer(head, True, options, dialect)
        except Exception:  # noqa: BLE001 - each file is then described on its own
            return
        # One dialect record for the batch: metadata values are never changed in place.
        shown = dialect.as_metadata() if dialect is not None else None
        for i, start, bom in batch:
            source = sources[i]
            metadata = {"compression": None, "bom": bom, "columns": list(names),
                        "schema_inferred_from_bytes": source.size,
                        "schema_inferred_with_files": len(batch)}
            if shown is not None:
                metadata["dialect"] = shown
            out[i] = Description({source.table: schema}, metadata,
                                 TextState(data_start=start, column_names=names,
                                           dialect=dialect))

    def plan(self, source: Source, description: Description,
             options: TextOptions) -> list[ChunkSpec]:
        state: TextState = description.state
        start = state.data_start
        if source.compression or (options.recoded and not options.per_block):
            return [ChunkSpec(source.file_id, 0, start, source.size, selector=STREAM,
                              weight=source.size)]
        if start >= source.size:
            return []
        step = max(1, options.chunk_size)
        return [ChunkSpec(source.file_id, i, off, min(step, source.size - off),
                          weight=min(step, source.size - off))
                for i, off in enumerate(range(start, source.size, step))]

    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: TextOptions, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        table = next(iter(description.tables), source.table)
        selector: TextSelector = chunk.selector or TextSelector()
        if selector.stream:
            blocks = self._read_stream(source, description, options, ctx)
        else:
            blocks = self._read_range(source, chunk, description, options, ctx,
                                      selector.parity)
        for rows in blocks:
            if rows is not None and rows.num_rows:
                yield table, rows

    def reconcile(self, source: Source, description: Description, chunks: list[ChunkSpec],
                  outcomes: Sequence[ChunkOutcome]) -> Reconciliation:
        """Check every chunk's start-state guess and boundary against the exact prefix state."""
        if not chunks or _is_stream(chunks[0]):
            return Reconciliation()
        facts: list[TextFacts | None] = [o.facts for o in outcomes]
        if any(f is None for f in facts):
            # A chunk died before counting its quotes: later parities are unknowable.
            return self._serial(source, description, "a chunk failed before its quotes were "
                                                     "counted")
        rerun: list[ChunkSpec] = []
        state = OUT
        for spec, fact in zip(chunks, facts, strict=True):
            if fact.parity != state:
                rerun.append(ChunkSpec(spec.file_id, spec.index, spec.offset, spec.length,
                                       spec.table, TextSelector(parity=state), spec.weight))
            state = fact.transfer.apply(state)
        if rerun:  # ends and starts are only comparable once every start state is right
            return Reconciliation(rerun=rerun)
        expected_start: int | None = None
        for fact, outcome in zip(facts, outcomes, strict=True):
            if outcome.failed:
                expected_start = None  # a gap: its rows are in _errors, not checked here
                continue
            if fact.start is None:
                continue
            if expected_start is not None and fact.start != expected_start:
                return self._serial(source, description, "chunk ends disagree with starts")
            if not fact.verified and not fact.last:
                return self._serial(source, description, "the parser ended a chunk inside "
                                                         "quotes where the boundary model saw none")
            expected_start = fact.end
        return Reconciliation()

    def standalone_problem(self, source: Source, chunk: ChunkSpec, facts: Any) -> str | None:
        if isinstance(facts, TextFacts) and not facts.verified and not facts.last:
            return (f"{source.path}: chunk {chunk.index} does not end on a record boundary "
                    "(the parser disagrees): ingest it instead, which re-plans such a file")
        return None

    def summarize(self, source: Source, description: Description, chunks: list[ChunkSpec],
                  outcomes: Sequence[ChunkOutcome]) -> dict[str, Any]:
        if any(isinstance(o.facts, TextFacts) and o.facts.open_quote_at_eof for o in outcomes):
            return {"warning": "file ends inside an open quoted field"}
        return {}

    def prepare(self, source: Source, description: Description,
                chunks: list[ChunkSpec]) -> list[ChunkSpec]:
        """Give every range chunk its exact start state from one scanning pass over the file.

        Costs one read of the file (quote-free stretches are skipped at memchr speed), so
        that lazily read partitions need no reconciliation afterwards.
        """
        grammar = self.grammar_of(description)
        if grammar.quote is None or not chunks or _is_stream(chunks[0]):
            return chunks
        out, state = [], OUT
        for spec in chunks:
            out.append(ChunkSpec(spec.file_id, spec.index, spec.offset, spec.length, spec.table,
                                 TextSelector(parity=state), spec.weight))
            state = self._file_transfer(source, spec.offset, spec.offset + spec.length,
                                        spec.index == 0, grammar).apply(state)
        return out

    def _file_transfer(self, source: Source, lo: int, hi: int, record_start: bool,
                       grammar: Grammar) -> Transfer:
        """The quote-state `Transfer` of the file's bytes ``[lo, hi)``, read piece by piece."""
        total = IDENTITY
        at = lo
        while at < hi:
            b = min(hi, at + (16 << 20))
            lead = 0 if at == lo and record_start else min(at, _lead(grammar))
            extra = 1 << 12
            while True:  # read on while a quote run crosses the piece's end
                data = source.read_range(at - lead, b + extra)
                final = b + extra >= source.size
                part = transfer(data, lead, lead + b - at, grammar, len(data), final)
                if part is not None:
                    break
                extra *= 16
            total = total.then(part)
            at = b
        return total

    def _serial(self, source: Source, description: Description, why: str) -> Reconciliation:
        state: TextState = description.state
        spec = ChunkSpec(source.file_id, 0, state.data_start, source.size, selector=STREAM,
                         weight=source.size)
        return Reconciliation(replace_plan=[spec], note=f"parsed as one stream: {why}")

    # --- byte-range chunks ----------------------------------------------------------------------
    def _read_range(self, source: Source, chunk: ChunkSpec, description: Description,
                    options: TextOptions, ctx: ChunkContext, hypothesis: int | None
                    ) -> Iterator[pa.Table | None]:
        """The records of one byte range (see `readers._boundaries` for which ones).

        The buffer holds the byte before the range (``lead``: it tells whether a quote at the
        range's start opens a field) and reads on past its end until the last record ends.
        Whatever cannot be read ends the chunk with an ``_errors`` row, never a retry loop: a
        read that comes back short (the file shrank since planning) is `Truncated`, a record
        with no end within ``max_record_bytes`` past the range is `RecordTooLong`; the
        records before either are kept.
        """
        grammar = self.grammar_of(description)
        max_record = options.max_record_bytes
        lead = min(chunk.offset, _lead(grammar)) if chunk.index > 0 else 0
        at = chunk.offset - lead  # file offset of buf[0]
        lo, hi = lead, lead + chunk.length  # the nominal range within the buffer
        spare = len(SENTINEL)
        overflow = _OVERFLOW
        buf, got = read_into(source, at, hi + overflow, spare)
        short = got < min(hi + overflow, source.size - at)
        try:
            final = short or at + got >= source.size

            def grow() -> bool:
                """Read further past the range; False when that is not allowed or possible."""
                nonlocal buf, got, overflow, short, final
                if final or got - hi > max_record:
                    return False
                overflow *= 4
                READ_BUFFERS.give(buf)
                buf = bytearray()  # nothing to give back if the re-read fails
                buf, got = read_into(source, at, hi + overflow, spare)
                short = got < min(hi + overflow, source.size - at)
                final = short or at + got >= source.size
                return True

            while (moves := transfer(buf, lo, min(hi, got), grammar, got, final)) is None:
                if not grow():  # a run of quotes longer than the record limit
                    raise RecordTooLong(f"{source.path}: a run of quotes longer than "
                                        f"{max_record} bytes near offset {at + hi}")
            if chunk.index == 0:
                h = OUT
            elif hypothesis is not None:
                h = hypothesis
            else:
                h = (guess_parity(buf[lo:min(got, lo + (1 << 16))], quote=grammar.quote)
                     if grammar.quote is not None else OUT)
            ctx.facts = facts = TextFacts(flips=moves.value, resets=moves.reset, parity=h)
            if chunk.index == 0:
                start = 0
            else:
                p = first_record_end(buf, lo, h, grammar, got, final)
                if p < 0 or p >= hi or (short and p + 1 >= got):
                    return  # no record starts inside this range (before the file's end)
                start = p + 1
            end: int | None = None
            to_eof = too_long = False
            if at + hi >= source.size and not short:
                end, to_eof = got, True  # the last chunk runs to the end of the file
            else:
                state = moves.apply(h)
                while True:
                    p = first_record_end(buf, hi, state, grammar, got, final)
                    if p >= 0:
                        end = p + 1
                        break
                    if final and not short:
                        end, to_eof = got, True  # the last record has no line end after it
                        break
                    if short:
                        break  # the file now ends inside a record: it is cut
                    if not grow():
                        too_long = True
                        break
            rest = b""
            cut = end is None
            if cut:  # keep the records before the one that cannot be followed
                limit = got if short else hi
                tail = last_record_end(buf, grammar, limit, True, start) if limit > start else -1
                end = tail + 1 if tail >= 0 else start
                rest = bytes(buf[end:min(got, end + RAW_CAP)])
            facts.start = at + start
            facts.end = None if too_long else at + end
            facts.last = to_eof
            # from the chunk's first record: its last one may start in an earlier range
            facts.open_quote_at_eof = to_eof and self._ends_quoted(buf, start, end, grammar)
            if too_long:
                ctx.reject(error_type=ErrorCode.RECORD_TOO_LONG, byte_offset=at + end, raw=rest,
                           message=f"{source.path}: the record at offset {at + end} has no end "
                                   f"within {max_record} bytes after offset {at + hi} "
                                   "(raise max_record_bytes?)")
            if short and (cut or end == got):
                # One row per truncation, from the chunk owning the record it cuts or the last
                # record before it (a short read of the look-ahead past a chunk's last record
                # costs it nothing; ranges inside the cut record or past the end have no
                # record of their own).
                self._report_short(source, ctx, at + got, at + end, rest)
            if facts.open_quote_at_eof and start < end:
                end = self._reject_open_quote(source, ctx, buf, start, end, at + start, grammar)
            if start < end:
                # The bytes after `end` belong to the next chunk: overwrite them with the
                # sentinel instead of copying the whole chunk to append it. A chunk running to
                # the end of the file has nothing to verify (a file ending inside an open quote
                # keeps it as one last value, as a whole-file parse does).
                sentinel = grammar.quote is not None and not to_eof
                if sentinel:
                    buf[end:end + spare] = self._sentinel(description)
                view = memoryview(buf)[start:end + (spare if sentinel else 0)]
                facts.verified = yield from self._parse_text(view, at + start, description,
                                                             options, ctx, sentinel=sentinel)
        finally:
            READ_BUFFERS.give(buf)  # the last buffer read, also after an error or close()

    @staticmethod
    def _reject_open_quote(source: Source, ctx: ChunkContext, buf: bytearray | memoryview,
                           start: int, end: int, offset: int, grammar: Grammar) -> int:
        """The file ends inside a quoted field that never closes: pyarrow would read it as a
        value running to the end of the file, swallowing every line after its quote. Reject
        that last record instead (DuckDB refuses such a file) and return where the records
        before it end. ``buf[start:end]`` runs to the end of the file from a record start at
        file offset ``offset``."""
        tail = last_record_end(buf, grammar, end, True, start)
        cut = tail + 1 if tail >= 0 else start
        where = offset + cut - start
        kind = "decompressed offset" if source.compression else "offset"
        ctx.reject(error_type=ErrorCode.UNTERMINATED_QUOTE, byte_offset=where,
                   raw=bytes(buf[cut:min(end, cut + RAW_CAP)]),
                   message=f"{source.path}: the record at {kind} {where} opens a quoted field "
                           f"that is never closed: the file ends inside it, {end - cut} bytes "
                           "later (a stray quote character? --quote '' reads quotes as text)")
        return cut

    @staticmethod
    def _report_short(source: Source, ctx: ChunkContext, eof: int, cut: int, rest: bytes
                      ) -> None:
        """A read came back short: the file is smaller than when it was planned (``eof``: where
        the read ended; ``cut``: where the unfinished record it ends in starts)."""
        try:  # a read from past the new end stops where it started, not at the end
            fs, path = source.filesystem()
            eof = min(eof, int(fs.size(path)))
        except Exception:  # noqa: BLE001 - the message is only less exact
            pass
        cut = min(cut, eof)
        ctx.reject(kind="chunk", error_type=Truncated.code, byte_offset=cut, raw=rest,
                   message=f"{source.path}: the file ends at offset {eof}, before the "
                           f"{source.size} bytes it had when planned (truncated while being "
                           "read?)" + (f"; the cut record at offset {cut} ({eof - cut} bytes) "
                                       "is in raw" if eof > cut else ""))

    # --- whole-file streams ---------------------------------------------------------------------
    def _read_stream(self, source: Source, description: Description,
                     options: TextOptions, ctx: ChunkContext) -> Iterator[pa.Table | None]:
        """Decompress (if needed) and parse block by block, each block verified like a chunk.

        ``carry`` always starts at a record start (file offset ``position``; decompressed bytes
        for compressed files). A record with no end within ``max_record_bytes`` is rejected and
        skipped to its end, where parsing goes on; an uncompressed file that ends before its
        planned size is `Truncated` (its cut last record goes to ``_errors``).
        """
        state: TextState = description.state
        grammar = self.grammar_of(description)
        block = options.stream_block_bytes
        max_record = options.max_record_bytes
        ratio = options.decompression_ratio_limit
        budget = max(1 << 30, int(ratio * max(source.size, 1))) if source.compression else None
        recoded = options.recoded and not options.per_block
        # never read past the planned size (a transcoded stream has another size)
        planned = None if source.compression or recoded else source.size
        position = state.data_start
        carry = bytearray()
        total = 0
        step = min(block, 1 << 20)
        broken: BaseException | None = None  # a truncated or corrupt stream
        skipping: int | None = None
        """While skipping a record too long to keep: the quote state at ``carry[1]``
        (``carry[0]`` is the last byte already searched for the record's end)."""
        try:
            with self._open(source, options) as f:
                skip = state.data_start
                while skip > 0:
                    got = f.read(min(skip, step))
                    if not got:
                        break
                    skip -= len(got)
                    total += len(got)
                # read1 hands over what is decompressed so far, so a truncated stream loses
                # only its unfinished tail (read(n) would drop the whole last n bytes).
                read = getattr(f, "read1", f.read)
                eof = False
                while not eof:
                    want = step if planned is None else min(step, planned - total)
                    piece = b""
                    if want > 0:
                        try:
                            piece = read(want)
                        except Exception as exc:  # zlib.error, LZMAError, truncation, I/O
                            broken = exc
                    eof = not piece
                    total += len(piece)
                    if budget is not None and total > budget:
                        raise DecompressionLimit(
                            f"decompressed past {budget} bytes ({ratio:g}x the file); "
                            "raise decompression_ratio_limit if this is real")
                    carry += piece
                    if skipping is not None:
                        p = first_record_end(carry, 1, skipping, grammar, len(carry), eof)
                        if p < 0 and not eof:
                            skipping, dropped = self._drop_searched(carry, 1, skipping, grammar)
                            position += dropped
                            continue
                        done = p + 1 if p >= 0 else len(carry)  # the record ends, or the file
                        del carry[:done]
                        position += done
                        skipping = None
                    if not eof and len(carry) < block:
                        continue
                    if eof and broken is None:
                        short = planned is not None and total < planned
                        if carry:
                            cut = len(carry)
                            if short:  # the file shrank: its last record may be cut
                                cut = last_record_end(carry, grammar, len(carry), True) + 1
                            elif self._ends_quoted(carry, 0, cut, grammar):
                                cut = self._reject_open_quote(source, ctx, carry, 0, cut,
                                                              position, grammar)
                            # Parsed in place, so carry is never resized after this: pyarrow's
                            # background reader may let go of its view only after the parse
                            # returns, and a bytearray with a live view cannot change size.
                            tables, _ = self._collect(memoryview(carry)[:cut], position,
                                                      description, options, ctx, False)
                            yield from tables
                            if short:
                                self._report_short(source, ctx, position + len(carry),
                                                   position + cut, bytes(carry[cut:][:RAW_CAP]))
                        elif short:
                            self._report_short(source, ctx, position, position, b"")
                        break
                    # Parse every complete record; a broken stream keeps its tail for _errors.
                    cut = self._verified_cut(carry, position, description, options, ctx)
                    if cut is None:
                        if not eof and len(carry) > max_record:
                            ctx.reject(error_type=ErrorCode.RECORD_TOO_LONG,
                                       byte_offset=position, raw=bytes(carry[:RAW_CAP]),
                                       message=f"{source.path}: the record at offset {position} "
                                               f"has no end within {max_record} bytes (raise "
                                               "max_record_bytes?)")
                            skipping, dropped = self._drop_searched(carry, 0, OUT, grammar)
                            position += dropped
                        continue
                    cut_len, tables = cut
                    yield from tables
                    del carry[:cut_len]  # parsed from a copy: no view of carry can be alive
                    position += cut_len
                    if planned is not None:  # a compressed file's positions are not its bytes
                        ctx.advance(position)
            if broken is not None:
                raise broken
        except RestartChunk:
            raise
        except Exception as exc:
            # Rows parsed so far stay; the rest of the file is reported, not silently dropped.
            ctx.reject(kind="chunk", error_type=type(exc).__name__,
                       message=f"{source.path}: {exc} (at decompressed offset {position})"
                       if source.compression else f"{source.path}: {exc} (at offset {position})",
                       byte_offset=position, raw=bytes(carry[:4096]))

    @staticmethod
    def _ends_quoted(buf: bytearray | memoryview, start: int, end: int, grammar: Grammar
                     ) -> bool:
        """``buf[start:end]``, from a record start to the end of the file, ends inside
        quotes."""
        if grammar.quote is None or start >= end:
            return False
        moves = transfer(buf, start, end, grammar, end, True)
        assert moves is not None  # the end of the file ends every quote run
        return moves.apply(OUT) != OUT

    def _drop_searched(self, carry: bytearray, start: int, state: int, grammar: Grammar
                       ) -> tuple[int, int]:
        """Forget the searched bytes of a record being skipped, keeping the carry bounded.

        ``carry[start:]`` holds no record end (given the quote ``state`` at ``start``). Keeps
        the last byte that is neither a quote (a run may go on) nor a CR (a ``\n`` may follow)
        as ``carry[0]``; returns (the quote state at the new ``carry[1]``, bytes dropped).
        """
        keep = len(carry) - 1
        # A quote run or an escape run may go on; a CR may be half of CRLF.
        unsafe = {0x0D, grammar.quote or 0x0D, grammar.escape or 0x0D}
        while keep > start and carry[keep] in unsafe:
            keep -= 1
        if keep <= start:
            return state, 0  # nothing safe to drop yet
        moves = transfer(carry, start, keep + 1, grammar, len(carry), True)
        assert moves is not None  # carry[keep] is not a quote: no run crosses it
        del carry[:keep]
        return moves.apply(state), keep

    def _verified_cut(self, carry: bytearray, position: int, description: Description,
                      options: TextOptions, ctx: ChunkContext
                      ) -> tuple[int, list[pa.Table]] | None:
        """Parse ``carry`` up to its last record end, if the parser agrees that it is one."""
        grammar = self.grammar_of(description)
        nl = last_record_end(carry, grammar, len(carry), False)
        if nl < 0:
            return None
        cut = nl + 1
        trial = ChunkContext(ctx.source, ctx.chunk)
        sentinel = grammar.quote is not None
        block = bytes(carry[:cut]) + (self._sentinel(description) if sentinel else b"")
        tables, verified = self._collect(memoryview(block), position, description,
                                         options, trial, sentinel=sentinel)
        if not verified:
            return None
        ctx.rejected.extend(trial.rejected)
        return cut, tables


def _lead(grammar: Grammar) -> int:
    """Bytes read before a range: the byte before it tells whether a quote at its start opens
    a field; with an escape character, the escape run before it too (longer runs than this
    are left to the parser's verification)."""
    return 1 if grammar.escape is None else 256


class _Closing:
    """A transcoding stream that closes the file under it too."""

    def __init__(self, stream: Any, under: Any) -> None:
        self.stream, self.under = stream, under

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n if n is not None and n >= 0 else None)

    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stream.close()
        finally:
            self.under.close()


def _is_stream(chunk: ChunkSpec) -> bool:
    return isinstance(chunk.selector, TextSelector) and chunk.selector.stream


_SLICE = 1 << 20  # bytes compared at a time: bounded temporaries, not ones as long as the batch


def records_counted(batch: list[tuple[int, bytes]], grammar: Grammar
                    ) -> tuple[bytes, list[int], list[int]]:
    """Whole files' bodies fit to be parsed as one: (their concatenation, their indexes,
    their record counts). A file fits when it ends outside quotes and holds no empty record
    (which the parser skips): then its rows are its records, as `record_ends` finds them
    (quotes, escapes and lone CRs as pyarrow reads them), and no record spans two files.
    """
    bodies = [body if body.endswith(b"\n") else body + b"\n" for _, body in batch]
    kept, data, starts, ends = _whole(bodies, grammar, empty_ok=False)
    if ends is None:
        return b"", [], []
    counts = np.diff(np.searchsorted(ends, starts))
    return data, [batch[k][0] for k in kept], counts.tolist()


def _whole(parts: list[bytes], grammar: Grammar, *, empty_ok: bool
           ) -> tuple[list[int], bytes, np.ndarray, np.ndarray | None]:
    """The parts (each ending in a line end) that end at a record end, outside quotes, read
    from a record start (and, unless ``empty_ok``, hold no empty record): (their indexes,
    their concatenation, where each starts in it, its record ends; None when none is kept).
    Then each part reads alone as it does in the concatenation: it starts outside quotes.

    The whole concatenation is checked at once, in NumPy, which does not hold the GIL (a
    bundle's threads check 100 MB for 10,000 small files while the client commits); only a
    concatenation that fails is checked part by part, to keep the parts that fit.
    """
    kept = list(range(len(parts)))
    data = b"".join(parts)
    starts = np.cumsum([0] + [len(part) for part in parts])
    ends = _record_ends(data, grammar, empty_ok)
    if ends is not None and not _all_in(starts[1:] - 1, ends):
        ends = None  # some part ends inside quotes: its last newline ends no record
    if ends is None:
        kept = [k for k, part in enumerate(parts)
                if _record_ends(part, grammar, empty_ok) is not None]
        parts = [parts[k] for k in kept]
        data = b"".join(parts)
        starts = np.cumsum([0] + [len(part) for part in parts])
        ends = _record_ends(data, grammar, empty_ok) if parts else None
    return kept, data, starts, ends


def _all_in(wanted: np.ndarray, ends: np.ndarray) -> bool:
    """Whether every position of ``wanted`` is among the sorted ``ends`` (binary searches:
    ``np.isin`` sorts both, 25 ms for one batch of 10 KB files)."""
    at = np.searchsorted(ends, wanted)
    return bool(np.all(at < len(ends)) and np.all(ends[np.minimum(at, len(ends) - 1)] == wanted))


def _special(data: bytes, grammar: Grammar) -> bool:
    """Whether ``data`` holds a byte that makes a newline no record end (a quote, an escape,
    a CR): without one, every newline ends a record."""
    return any(bytes((b,)) in data for b in (grammar.quote, grammar.escape,
                                              CR if grammar.cr else None) if b is not None)


def _record_ends(data: bytes, grammar: Grammar, empty_ok: bool = False) -> np.ndarray | None:
    """Where ``data``'s records end, when it ends outside quotes, at a record end, and
    (unless ``empty_ok``) holds no empty record (``\\n\\n``, ``\\r\\n`` alone, a lone CR
    alone); else None."""
    size = len(data)
    if not size:
        return None
    if not _special(data, grammar):
        grammar = LINES  # every newline ends a record: one pass, not three
    found = []
    state: int | None = OUT
    for lo in range(0, size, _SLICE):
        part, state = record_ends(data, lo, lo + _SLICE, state, grammar, size, True)
        if state is None:
            return None
        found.append(part)
    if state != OUT:
        return None
    ends = np.concatenate(found).astype(np.int64)
    if not ends.size or ends[-1] != size - 1:
        return None
    if empty_ok:
        return ends
    gaps = np.diff(ends, prepend=-1)
    if np.any(gaps == 1):
        return None
    alone = ends[gaps == 2]  # a record of one byte: a CR before its newline is no record
    if alone.size and np.any(np.frombuffer(data, np.uint8)[alone - 1] == CR):
        return None
    return ends


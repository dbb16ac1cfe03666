"""JSON lines reader: one JSON object per line, parsed by pyarrow.json with an explicit schema.

pyarrow must never see a line that is not an object (``null`` first in a block crashes the
process), so every block is screened first (`readers._jsonlines`) and such lines are rejected.
Inference also rejects lines nested deeper than `MAX_DEPTH`; while reading chunks the explicit
schema (at most that deep) makes a deeper record fail its parse, and the rescue path rejects it
by its depth before Python's recursive ``json.loads`` sees it. Every parse is then checked: one
row per object line, valid UTF-8 (pyarrow's JSON reader copies invalid bytes into string
columns) and valid arrays. Dates and timestamps are parsed as text and cast with pyarrow's
strict ISO 8601 cast, which tells a zone offset from its absence (the JSON reader's own
conversion drops offsets, and takes naive text into UTC columns, silently).
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.types as pt

from readers._compute import call, match_substring_regex
from readers._encoding import check_utf8
from readers._jsonlines import MAX_DEPTH, Lines, blanked, object_lines, screen, too_deep
from readers._text import TextOptions, TextReader, TextState, bisect_records
from readers.base import ChunkContext, Description
from readers.errors import ErrorCode
from readers.widening import no_nulls, unify, widen

#: Types a column of date/time text is tried as, in order, the first that takes every value
#: winning: the types (and order) pyarrow's CSV inference gives such text, so that JSON and CSV
#: agree (tested against it). Naive and zoned text never fit one type: a mix stays text.
TIME_TYPES = (pa.date32(), pa.timestamp("s"), pa.timestamp("s", tz="UTC"),
              pa.timestamp("ns"), pa.timestamp("ns", tz="UTC"))
_DATE_TEXT = re.compile(rb'"\d{4}-\d\d-\d\d')

_COERCE_LINES = 256
"""Pieces of at most this many lines that fail to parse are re-serialised whole, once."""

Path = tuple[str | None, ...]
"""A leaf inside a column: field names, None for "an element of the list"."""


class LineRejected(ValueError):
    """pyarrow parsed a piece, but its rows cannot be kept (``chunkmill_code`` says why)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.chunkmill_code = code

    def __reduce__(self):  # noqa: ANN204 - picklable with its code
        return (type(self), (str(self), self.chunkmill_code))


class JSONLReader(TextReader):
    """Newline-delimited JSON objects (``.jsonl``, ``.ndjson``)."""

    name = "jsonl"
    suffixes = (".jsonl", ".ndjson", ".json")
    quote = None  # a raw newline cannot occur inside a JSON string: every newline ends a record

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        first = body.lstrip()[:1]
        named = any(path.endswith(s) for s in cls.suffixes)
        if b"\x00" in head[:4096]:  # UTF-16 or -32 when named so, else not JSON lines
            return 40 if named else 0
        return (40 if named else 0) + (30 if first == b"{" else 0)

    def _check_utf8(self, head: bytes, path: str, at_eof: bool) -> None:
        """JSON text is UTF-8 by definition (RFC 8259): stray invalid bytes are damage, each
        line holding them an ``InvalidUTF8`` row. Only a head with NUL bytes in more than one line
        in a thousand (UTF-16/32) is another encoding, and fails naming ``--encoding``."""
        if b"\x00" in head:
            check_utf8(head, path, at_eof, nul_ok=False)

    def _read_json(self, data: Any, schema: pa.Schema | None, options: TextOptions,
                   unexpected: str = "error") -> pa.Table:
        """pyarrow's parse of screened bytes (never call it on unscreened input)."""
        if schema is not None and not len(data):
            return schema.empty_table()
        block = options.parse_block_bytes
        parse = pajson.ParseOptions(  # (an empty schema is falsy, but still explicit)
            explicit_schema=schema,
            unexpected_field_behavior="infer" if schema is None else unexpected)
        # Threads off: the threaded reader has aborted the interpreter after parse errors.
        try:
            return pajson.read_json(pa.BufferReader(pa.py_buffer(data)), parse_options=parse,
                                    read_options=pajson.ReadOptions(use_threads=False,
                                                                    block_size=block))
        except pa.ArrowInvalid as exc:
            if "straddling" not in str(exc) or len(data) <= block:
                raise
            # One record is longer than a parse block: parse this piece as one block.
            return pajson.read_json(
                pa.BufferReader(pa.py_buffer(data)), parse_options=parse,
                read_options=pajson.ReadOptions(use_threads=False, block_size=len(data) + 1))

    def _checked(self, data: Any, schema: pa.Schema | None, expected: int,
                 options: TextOptions, unexpected: str = "error") -> pa.Table:
        """Parse screened bytes into ``schema`` (None: infer) and check what came back.

        ``unexpected="ignore"``: fields not in ``schema`` are skipped (``--columns``).
        """
        parse_schema = None if schema is None else text_times(schema)
        table = self._read_json(data, parse_schema, options, unexpected)
        if table.num_rows != expected:
            where = "one line" if expected == 1 else f"{expected} lines"
            raise LineRejected(f"{table.num_rows} JSON values on {where} (one object per line)",
                               ErrorCode.JSON_RECORD_ERROR)
        try:
            table.validate(full=True)
            if schema is None:
                table.schema.to_string()  # field names come from the data: UTF-8 too?
        except UnicodeDecodeError as exc:
            raise LineRejected(f"invalid UTF-8 in a field name: {exc}",
                               ErrorCode.INVALID_UTF8) from None
        except pa.ArrowInvalid as exc:
            if "UTF8" in str(exc):
                raise LineRejected(f"invalid UTF-8 in a string ({exc})",
                                   ErrorCode.INVALID_UTF8) from None
            raise LineRejected(f"pyarrow parsed it into invalid arrays ({exc})",
                               ErrorCode.JSON_RECORD_ERROR) from None
        if parse_schema is not None and parse_schema is not schema:
            try:  # strict ISO 8601: naive text does not fit a UTC column, nor the reverse
                table = table.cast(schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise LineRejected(str(exc).splitlines()[0], ErrorCode.TYPE_MISMATCH) from None
        return table

    def _infer(self, head: bytes, at_eof: bool, options: TextOptions, dialect: Any = None
               ) -> tuple[pa.Schema, int, tuple[str, ...]]:
        if not at_eof:
            head = head[: head.rfind(b"\n") + 1]
        lines = screen(head)
        data = blanked(head, lines.bad)
        # Types that change within the sample (1, then "x") split the sample until each piece
        # parses; the pieces' schemas are then widened together. A line pyarrow cannot infer
        # on its own (a list of 1 and "x") is typed from Python's parse, so that its values
        # widen too; lines that are not JSON are skipped.
        typed: list[pa.Schema] = []

        def infer_alone(a: int, b: int, exc: Exception) -> None:
            # (also pyarrow's own inference bugs: `[null, 1]` gives invalid list offsets,
            # apache/arrow#51305; lines that are not valid JSON or UTF-8 give None)
            schema = _python_schema(bytes(data[a:b]))
            if schema is not None:
                typed.append(schema)

        pieces = [t.schema for t in bisect_records(
            data, lines.starts,
            lambda piece, at: self._checked(piece, None, lines.expected(at, at + len(piece)),
                                            options),
            infer_alone)]
        pieces += typed
        schema = unify(pieces)
        schema = self._time_types(data, lines, schema, pieces, options)
        schema = no_nulls(schema)
        return schema, 0, tuple(schema.names)

    def _time_types(self, data: Any, lines: Lines, schema: pa.Schema,
                    pieces: Sequence[pa.Schema], options: TextOptions) -> pa.Schema:
        """``schema`` with each text leaf of dates or times typed as pyarrow's CSV would.

        pyarrow's JSON inference types ``2020-01-01T02:00:00+02:00`` as a naive timestamp
        holding 00:00 (the offset applied, then dropped) and leaves fractional seconds as
        text. The sample's text is parsed again for the leaves that held only strings, and
        each is typed by `TIME_TYPES`.
        """
        if not _DATE_TEXT.search(bytes(data)):
            return schema
        # Only leaves every piece saw as text (or not at all): their values are all strings.
        by_name = [{f.name: f.type for f in s} for s in pieces]
        leaves = [p for p, t in _leaves(schema)
                  if _is_text(t) and all(_text_or_absent(types, p) for types in by_name)]
        if not leaves:
            return schema
        probe = _pruned(schema, leaves)
        try:
            sample = self._read_json(data, probe, options, unexpected="ignore")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            tables = bisect_records(
                data, lines.starts,
                lambda piece, _at: self._read_json(piece, probe, options, unexpected="ignore"),
                lambda a, b, exc: None)
            sample = pa.concat_tables([probe.empty_table(), *tables])
        types = {}
        for path in leaves:
            values = _values(sample, path).drop_null()
            if len(values):
                types[path] = _time_type(values)
        return _retyped(schema, types)

    def _parse_block(self, block: memoryview, abs_offset: int, description: Description,
                     options: TextOptions, ctx: ChunkContext, sentinel: bool
                     ) -> Generator[pa.Table, None, bool]:
        schema = next(iter(description.tables.values()))
        state: TextState = description.state
        # --columns: only the chosen fields are parsed; the others are skipped unread.
        unexpected = "ignore" if len(schema) != len(state.column_names) else "error"
        expected = object_lines(block)
        lines = None
        data: Any = block
        if expected is None:  # some line does not start with "{": look closer (rare)
            # No depth check here: the explicit schema is at most MAX_DEPTH deep, so a deeper
            # record fails the parse and is measured when the rescue isolates it.
            lines = screen(block, depth=False)
            for bad in lines.bad:
                ctx.reject(error_type=bad.code, byte_offset=abs_offset + bad.start,
                           raw=bytes(block[bad.start:bad.end]),
                           message=f"{ctx.source.path}: {bad.message}")
            data = blanked(block, lines.bad)
            expected = lines.expected(0, len(data))
        try:
            table = self._checked(data, schema, expected, options, unexpected)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
            lines = lines or screen(data, depth=False)
            table = self._rescue(data, lines, abs_offset, schema, options, ctx, unexpected)
        yield table
        return True

    def _rescue(self, data: Any, lines: Lines, abs_offset: int, schema: pa.Schema,
                options: TextOptions, ctx: ChunkContext, unexpected: str = "error"
                ) -> pa.Table:
        """Some lines did not parse: isolate them, keep every good one."""
        plan = coercion_plan(schema)
        keep_only = unexpected == "ignore"

        def on_bad(a: int, b: int, exc: Exception) -> None:
            line = bytes(data[a:b])
            if not line.strip():
                return
            why = str(exc).strip().splitlines()[0]
            if isinstance(exc, UnicodeError):
                why = f"invalid UTF-8: {why}"
            ctx.reject(error_type=_code(exc), byte_offset=abs_offset + a, raw=line,
                       message=f"{ctx.source.path}: {why}")

        def parse(piece: memoryview, at: int) -> pa.Table:
            expected = lines.expected(at, at + len(piece))
            try:
                return self._checked(piece, schema, expected, options, unexpected)
            except pa.ArrowInvalid:
                text = bytes(piece)
                if expected == 1 and not text.rstrip(b"\r\n").count(b"\n"):
                    return self._checked(_coerced_line(text, schema, plan, keep_only), schema,
                                         1, options, unexpected)
                if expected > _COERCE_LINES:
                    raise  # let the bisection narrow it down
            # A few lines: re-serialise them all at once. Values that need their JSON text
            # (a column widened to string, an empty struct) are then one parse per piece, not
            # one per line; if any line is bad after all, the bisection goes on.
            try:
                coerced = b"\n".join(_coerced_line(line, schema, plan, keep_only)
                                     if line.strip(b" \t\r") else line
                                     for line in text.split(b"\n"))
                return self._checked(coerced, schema, expected, options, unexpected)
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
                raise pa.ArrowInvalid("a line in this piece does not fit") from None

        pieces = list(bisect_records(data, lines.starts, parse, on_bad))
        if not len(schema):  # concat_tables loses the rows of tables without columns
            return pa.table({"": pa.nulls(sum(t.num_rows for t in pieces))}).select([])
        return pa.concat_tables(pieces) if pieces else schema.empty_table()


def _code(exc: Exception) -> str:
    code = getattr(exc, "chunkmill_code", None)
    if isinstance(code, str):
        return code
    if isinstance(exc, UnicodeError) or "surrogate" in str(exc):
        return ErrorCode.INVALID_UTF8  # a lone surrogate has no UTF-8 form
    return ErrorCode.JSON_RECORD_ERROR


def _python_schema(line: bytes) -> pa.Schema | None:
    """The schema of one record as pyarrow would infer it, element types widened; None when
    the line is not a JSON object."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    typ = _python_type(obj)
    return pa.schema(list(typ)) if pt.is_struct(typ) else None


def _python_type(value: Any) -> pa.DataType:
    if value is None:
        return pa.null()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64() if -(1 << 63) <= value < (1 << 63) else pa.float64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, list):
        element = pa.null()
        for item in value:
            element = widen(element, _python_type(item))
        return pa.list_(element)
    return pa.struct([pa.field(k, _python_type(v)) for k, v in value.items()])


# --- rescue: one record re-serialised to fit the schema ---------------------------------------

_LINE = json.JSONEncoder(separators=(",", ":")).encode
_TEXT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""A value's JSON text as a string column keeps it (compact, characters as they are)."""

def _coerced_line(line: bytes, schema: pa.Schema, plan: dict | None = None,
                  keep_only: bool = False) -> bytes:
    """One record whose values pyarrow.json will not put into a widened string column,
    written again with each such value as its JSON text (``1`` -> ``"1"``), at any depth
    (``[1]`` in a list of strings -> ``["1"]``). ``plan``: `coercion_plan` of ``schema``.

    The result is parsed like every other line (not by ``Table.from_pylist``, which imports
    pandas into the worker); anything else that does not fit still fails there and is
    rejected.
    """
    if line.count(b"{") + line.count(b"[") > MAX_DEPTH:
        problem = too_deep(line)
        if problem:  # also spares json.loads (recursive) a line nested thousands deep
            raise LineRejected(problem, ErrorCode.JSON_RECORD_ERROR)
    try:
        obj = json.loads(line.decode())
        if not isinstance(obj, dict):
            raise ValueError(f"a JSON line must be an object, not {type(obj).__name__}")
        fields = coercion_plan(schema) if plan is None else plan
        if keep_only:  # --columns: the other fields are not read
            obj = {k: v for k, v in obj.items() if k in fields}
        return _LINE(_coerce_struct(obj, fields)).encode()
    except RecursionError:  # screened lines nest at most MAX_DEPTH deep; be safe anyway
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None


_TEXT_PLAN = "text"


def coercion_plan(schema: pa.Schema) -> dict[str, Any]:
    """Per field: `_TEXT_PLAN` for text, ("list", plan) or a dict of fields for nesting that
    holds text, None to leave a value as it is (computed once, not per line)."""
    return {f.name: _plan(f.type) for f in schema}


def _plan(typ: pa.DataType) -> Any:
    if pt.is_string(typ) or pt.is_large_string(typ):
        return _TEXT_PLAN
    if _is_list(typ):
        inner = _plan(typ.value_type)
        return None if inner is None else ("list", inner)
    if pt.is_struct(typ):
        return coercion_plan(pa.schema(list(typ)))
    return None


def _coerce_struct(obj: dict, fields: dict[str, Any]) -> dict:
    if not obj.keys() <= fields.keys():
        unknown = sorted(set(obj) - set(fields))
        raise ValueError(f"fields not in the table's schema: {unknown}")
    return {name: _coerce(value, fields[name]) for name, value in obj.items()}


def _coerce(value: Any, plan: Any) -> Any:
    if value is None or plan is None:
        return value  # it fits, or pyarrow rejects it
    if plan is _TEXT_PLAN:
        return value if isinstance(value, str) else _TEXT(value)
    if isinstance(plan, dict):
        return _coerce_struct(value, plan) if isinstance(value, dict) else value
    return [_coerce(v, plan[1]) for v in value] if isinstance(value, list) else value


# --- dates and times ---------------------------------------------------------------------------

def text_times(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every date or timestamp leaf as string (the same object if none):
    what a block is parsed into before the strict cast to ``schema``."""
    known = _TEXT_TIMES.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    fields = [f.with_type(_text_times(f.type)) for f in schema]
    if all(f.type == g.type for f, g in zip(fields, schema, strict=True)):
        parse = schema
    else:
        parse = pa.schema(fields, metadata=schema.metadata)
    if len(_TEXT_TIMES) >= 64:
        _TEXT_TIMES.clear()
    _TEXT_TIMES[id(schema)] = (schema, parse)  # holding schema keeps its id from being reused
    return parse


_TEXT_TIMES: dict[int, tuple[pa.Schema, pa.Schema]] = {}
"""The parse schema of recent schemas: a chunk parses many pieces with one (wide) schema."""


def _text_times(typ: pa.DataType) -> pa.DataType:
    if pt.is_timestamp(typ) or pt.is_date(typ):
        return pa.string()
    if _is_list(typ):
        return pa.list_(typ.value_field.with_type(_text_times(typ.value_type)))
    if pt.is_struct(typ):
        return pa.struct([f.with_type(_text_times(f.type)) for f in typ])
    return typ


def _time_type(values: pa.Array) -> pa.DataType:
    if not call("all", match_substring_regex(values, r"^\d{4}-\d\d-\d\d")).as_py():
        return pa.string()  # not dates: spare the casts, which are slow to fail
    head = values.slice(0, 64)
    for typ in TIME_TYPES:
        if _fits(head, typ) and _fits(values, typ):
            return typ
    return pa.string()


def _fits(values: pa.Array, typ: pa.DataType) -> bool:
    try:
        values.cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _is_text(typ: pa.DataType | None) -> bool:
    return typ is not None and (pt.is_string(typ) or pt.is_timestamp(typ) or pt.is_date(typ))


def _is_list(typ: pa.DataType) -> bool:
    return pt.is_list(typ) or pt.is_large_list(typ)


def _leaves(schema: pa.Schema) -> Iterator[tuple[Path, pa.DataType]]:
    def walk(path: Path, typ: pa.DataType) -> Iterator[tuple[Path, pa.DataType]]:
        if _is_list(typ):
            yield from walk((*path, None), typ.value_type)
        elif pt.is_struct(typ):
            for f in typ:
                yield from walk((*path, f.name), f.type)
        else:
            yield path, typ

    for f in schema:
        yield from walk((f.name,), f.type)


def _text_or_absent(columns: dict[str, pa.DataType], path: Path) -> bool:
    """Whether a schema (its types by column name) holds text, nothing or null at ``path``."""
    typ = columns.get(path[0])
    if typ is None:
        return True
    for step in path[1:]:
        if pt.is_null(typ):
            return True
        if step is None and _is_list(typ):
            typ = typ.value_type
        elif step is not None and pt.is_struct(typ):
            if typ.get_field_index(step) < 0:
                return True
            typ = typ.field(step).type
        else:
            return False  # another shape there
    return pt.is_null(typ) or _is_text(typ)


def _pruned(schema: pa.Schema, leaves: list[Path]) -> pa.Schema:
    """Only the branches of ``schema`` that lead to ``leaves``, each leaf as string."""
    def grouped(paths: list[Path]) -> dict[str | None, list[Path]]:
        out: dict[str | None, list[Path]] = {}
        for p in paths:
            out.setdefault(p[0], []).append(p[1:])
        return out

    def prune(typ: pa.DataType, paths: list[Path]) -> pa.DataType:
        if any(not p for p in paths):
            return pa.string()
        if _is_list(typ):
            return pa.list_(prune(typ.value_type, [p[1:] for p in paths]))
        below = grouped(paths)
        return pa.struct([pa.field(f.name, prune(f.type, below[f.name]))
                          for f in typ if f.name in below])

    top = grouped(leaves)
    return pa.schema([pa.field(f.name, prune(f.type, top[f.name]))
                      for f in schema if f.name in top])


def _values(table: pa.Table, path: Path) -> pa.Array:
    """Every value at ``path`` (lists flattened), as one array."""
    arr: Any = table.column(path[0]).combine_chunks()
    for step in path[1:]:
        # StructArray.flatten() applies the struct's own nulls to its children
        arr = arr.flatten() if step is None else arr.flatten()[arr.type.get_field_index(step)]
    return arr


def _retyped(schema: pa.Schema, types: dict[Path, pa.DataType]) -> pa.Schema:
    def retype(path: Path, typ: pa.DataType) -> pa.DataType:
        if path in types:
            return types[path]
        if _is_list(typ):
            return pa.list_(typ.value_field.with_type(retype((*path, None), typ.value_type)))
        if pt.is_struct(typ):
            return pa.struct([f.with_type(retype((*path, f.name), f.type)) for f in typ])
        return typ

    if not types:
        return schema
    return pa.schema([f.with_type(retype((f.name,), f.type)) for f in schema],
                     metadata=schema.metadata)

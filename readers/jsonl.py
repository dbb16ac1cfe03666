"""JSON lines reader: one JSON object per line, parsed by pyarrow.json with an explicit schema."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from readers._boundaries import record_starts_lines
from readers._text import TextOptions, TextReader, bisect_records
from readers.base import ChunkContext, Description
from readers.errors import ErrorCode
from readers.widening import no_nulls, unify


def _coerced_line(line: bytes, schema: pa.Schema) -> bytes:
    """One record whose values pyarrow.json will not put into a widened string column,
    written again with each such value as its JSON text (``1`` -> ``"1"``).

    The result is parsed like every other line (not by ``Table.from_pylist``, which imports
    pandas into the worker); anything else that does not fit still fails there and is
    rejected.
    """
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON line must be an object, not {type(obj).__name__}")
    unknown = set(obj) - set(schema.names)
    if unknown:
        raise ValueError(f"fields not in the table's schema: {sorted(unknown)}")
    row = {}
    for field in schema:
        value = obj.get(field.name)
        if pa.types.is_string(field.type) and value is not None and not isinstance(value, str):
            value = json.dumps(value, separators=(",", ":"))
        row[field.name] = value
    return json.dumps(row, separators=(",", ":")).encode()


class JSONLReader(TextReader):
    """Newline-delimited JSON objects (``.jsonl``, ``.ndjson``)."""

    name = "jsonl"
    suffixes = (".jsonl", ".ndjson", ".json")
    quote = None  # a raw newline cannot occur inside a JSON string: every newline ends a record

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        first = body.lstrip()[:1]
        score = 40 if any(path.endswith(s) for s in cls.suffixes) else 0
        if first == b"{":
            score += 30
        return score if b"\x00" not in head[:4096] else 0

    def _read_json(self, data: Any, schema: pa.Schema | None, options: TextOptions
                   ) -> pa.Table:
        block = options.parse_block_bytes
        parse = pajson.ParseOptions(explicit_schema=schema,
                                    unexpected_field_behavior="error" if schema else "infer")
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

    def _infer(self, head: bytes, at_eof: bool, options: TextOptions
               ) -> tuple[pa.Schema, int, tuple[str, ...]]:
        if not at_eof:
            head = head[: head.rfind(b"\n") + 1]
        # Types that change within the sample (1, then "x") split the sample until each piece
        # parses; the pieces' schemas are then widened together. Unparseable lines are skipped.
        pieces = bisect_records(head, record_starts_lines(head),
                                lambda piece, _at: self._read_json(piece, None, options),
                                lambda a, b, exc: None)
        schema = no_nulls(unify(t.schema for t in pieces))
        return schema, 0, tuple(schema.names)

    def _parse_block(self, block: memoryview, abs_offset: int, description: Description,
                     options: TextOptions, ctx: ChunkContext, sentinel: bool
                     ) -> Generator[pa.Table, None, bool]:
        schema = next(iter(description.tables.values()))
        try:
            table = self._read_json(block, schema, options)
        except pa.ArrowInvalid:
            table = self._rescue(block, abs_offset, schema, options, ctx)
        yield table
        return True

    def _rescue(self, block: memoryview, abs_offset: int, schema: pa.Schema,
                options: TextOptions, ctx: ChunkContext) -> pa.Table:
        """Some lines did not parse: isolate them, keep every good one."""
        data = bytes(block)

        def on_bad(a: int, b: int, exc: Exception) -> None:
            line = data[a:b]
            if not line.strip():
                return
            ctx.reject(error_type=ErrorCode.JSON_RECORD_ERROR, byte_offset=abs_offset + a, raw=line,
                       message=f"{ctx.source.path}: {str(exc).splitlines()[0]}")

        def parse(piece: bytes, _at: int) -> pa.Table:
            try:
                return self._read_json(piece, schema, options)
            except pa.ArrowInvalid:
                if piece.rstrip(b"\r\n").count(b"\n"):
                    raise  # several lines: let the bisection narrow it down
                return self._read_json(_coerced_line(piece, schema), schema, options)

        pieces = list(bisect_records(data, record_starts_lines(data), parse, on_bad))
        return pa.concat_tables(pieces) if pieces else schema.empty_table()

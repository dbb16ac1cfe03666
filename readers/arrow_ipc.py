"""Arrow IPC reader: Arrow IPC files (Feather v2), IPC streams and Feather v1 files, one table each.

- Sniffed by magic: ``ARROW1`` (IPC file = Feather v2), ``FEA1`` (Feather v1), or an IPC
  stream's continuation marker ``0xFFFFFFFF`` followed by a schema message that parses.
- describe reads the footer (file) or the first message (stream) only: the Arrow schema
  (dictionaries decoded to their value type, hive partition columns appended, see
  `readers._columnar`) and, for the catalog, the IPC variant, record batches (files),
  key-value metadata (trimmed) and the file's schema.
- plan: an IPC *file* is indexed by its footer, so its record batches are read one at a time
  (``get_batch``), grouped to about ``chunk_size`` bytes per chunk (pyarrow does not expose
  batch sizes: they are taken as equal shares of the file). A *stream* has no index and is
  one chunk, read batch by batch. A Feather v1 file (deprecated by pyarrow, uncompressed) is
  memory-mapped and cut into row blocks; only local v1 files are read.
- read holds one record batch at a time, validated in full (offsets, UTF-8) before use. A
  batch that cannot be decoded is one ``_errors`` row; the other batches of an IPC file are
  kept, while a stream ends at its first bad message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from readers._columnar import (
    ColumnarOptions,
    ColumnarReader,
    ColumnarState,
    Span,
    describe_table,
    even_spans,
    key_values,
    open_native,
    unreadable,
)
from readers._deferred import deferred
from readers.base import Description, Source
from readers.errors import BadFile, Unsupported

feather = deferred("pyarrow.feather")

FILE_MAGIC = b"ARROW1"
FEATHER_V1_MAGIC = b"FEA1"
CONTINUATION = b"\xff\xff\xff\xff"
_STREAM_SUFFIXES = (".arrows", ".arrow", ".ipc", ".stream", ".feather")


class ArrowFileError(BadFile):
    """The file cannot be opened as Arrow IPC (truncated, corrupt footer or schema)."""


def kind_of(head: bytes) -> str | None:
    """``file``, ``feather-v1`` or ``stream`` from the leading bytes (None: not Arrow IPC)."""
    if head.startswith(FILE_MAGIC):
        return "file"
    if head.startswith(FEATHER_V1_MAGIC):
        return "feather-v1"
    if head.startswith(CONTINUATION):
        return "stream"
    return None


def _stream_score(head: bytes, path: str) -> int:
    """How sure an IPC stream starts here: its schema message parses from the head."""
    length = int.from_bytes(head[4:8], "little", signed=True) if len(head) >= 8 else -1
    if length <= 0:
        return 0
    if 8 + length > len(head):  # a schema bigger than the sniffed head: cannot check it
        return 60 if path.lower().endswith(_STREAM_SUFFIXES) else 0
    try:
        pa.ipc.open_stream(pa.py_buffer(head)).schema  # noqa: B018 - parsing is the check
    except (pa.ArrowException, OSError, ValueError):
        return 0
    return 90


def _open(f: pa.NativeFile, source: Source, kind: str) -> Any:
    with unreadable(source, ArrowFileError, f"not a readable Arrow IPC {kind}"):
        if kind == "file":
            return pa.ipc.open_file(f)
        if kind == "stream":
            return pa.ipc.open_stream(f)
        if source.local_path is None:
            raise Unsupported(f"{source.path}: Feather v1 files are read from local disks only "
                              f"(rewrite it as Feather v2 / Arrow IPC)")
        # Uncompressed and memory-mapped: the table's buffers point into the page cache.
        return feather.read_table(pa.memory_map(source.local_path), use_threads=False)


class ArrowIPCReader(ColumnarReader):
    """Arrow IPC files and streams, Feather v1 and v2."""

    name = "arrow"
    suffixes = (".arrow", ".feather", ".ipc", ".arrows")
    unit = "record batch"

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        kind = kind_of(head)
        if kind == "stream":
            return _stream_score(head, path)
        return 95 if kind else 0

    def describe(self, source: Source, options: ColumnarOptions) -> Description:
        with open_native(source) as f:
            kind = kind_of(f.read(8))
            if kind is None:
                raise ArrowFileError(f"{source.path}: no Arrow IPC magic at byte 0")
            f.seek(0)
            opened = _open(f, source, kind)
            with unreadable(source, ArrowFileError, f"unreadable Arrow IPC {kind}"):
                schema, meta, state = self._footer(opened, kind, source, options)
        return describe_table(source, schema, options, meta, state)

    @staticmethod
    def _footer(opened: Any, kind: str, source: Source, options: ColumnarOptions
                ) -> tuple[pa.Schema, dict[str, Any], ColumnarState]:
        schema = opened.schema
        meta: dict[str, Any] = {"ipc_format": kind,
                                "key_value_metadata": key_values(schema.metadata, options)}
        unit_rows = 0
        if kind == "file":
            meta["record_batches"] = opened.num_record_batches
            if opened.metadata:
                meta["footer_metadata"] = key_values(opened.metadata, options)
            spans = even_spans(opened.num_record_batches, 8, source.size, options.chunk_size)
        elif kind == "stream":
            spans = (Span(0, 1, 0, source.size, source.size),)
        else:
            meta["rows"] = opened.num_rows
            meta["note"] = "Feather v1 is deprecated by pyarrow"
            per_row = max(1, source.size // max(1, opened.num_rows))
            unit_rows = max(1, options.batch_bytes // per_row)
            units = -(-opened.num_rows // unit_rows)
            spans = even_spans(units, 8, source.size, options.chunk_size)
        return schema, meta, ColumnarState(spans, kind=kind, unit_rows=unit_rows)

    def open_units(self, f: pa.NativeFile, source: Source, state: ColumnarState,
                   options: ColumnarOptions) -> Any:
        return _open(f, source, state.kind)

    def unit_label(self, state: ColumnarState, unit: int) -> str:
        if state.kind == "stream":
            return "the record batch stream"
        if state.kind == "feather-v1":
            return f"rows {unit * state.unit_rows}-{(unit + 1) * state.unit_rows - 1}"
        return f"record batch {unit}"

    def batches(self, opened: Any, unit: int, state: ColumnarState,
                options: ColumnarOptions) -> Iterator[pa.RecordBatch]:
        if state.kind == "feather-v1":
            part = opened.slice(unit * state.unit_rows, state.unit_rows)
            batches = part.to_batches()
        elif state.kind == "stream":
            batches = opened
        else:
            batches = iter((opened.get_batch(unit),))
        for batch in batches:
            batch.validate(full=True)  # offsets and UTF-8 checked before anything trusts them
            yield batch

"""ORC reader: an ORC file is one table; its stripes are the chunks.

- Sniffed by the ``ORC`` magic at the start, followed by binary bytes (a text file that
  happens to start with "ORC" stays text).
- describe reads the file tail only (postscript, footer, metadata): the Arrow schema and, for
  the catalog, rows, stripes, codec and block size, writer, software and file versions, row
  index stride, key-value metadata (trimmed) and the file's schema. Hive partition columns are
  appended (see `readers._columnar`).
- plan groups consecutive stripes to about ``chunk_size`` stored bytes. pyarrow does not expose
  per-stripe sizes, so stripes are taken as equal shares of the file's content.
- read decodes one stripe at a time (``ORCFile.read_stripe``): a task holds one decoded stripe
  (writers make stripes of 64 MiB stored by default). A stripe that cannot be decoded is one
  ``_errors`` row and the other stripes are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from readers._columnar import (
    ColumnarOptions,
    ColumnarReader,
    ColumnarState,
    data_error,
    describe_table,
    even_spans,
    key_values,
    open_native,
    unreadable,
)
from readers._deferred import deferred
from readers.base import Description, Source
from readers.errors import BadFile, one_line

orc = deferred("pyarrow.orc")

MAGIC = b"ORC"
_TEXT_CONTROLS = b"\t\n\r\f"


class ORCFileError(BadFile):
    """The file cannot be opened as ORC (truncated, corrupt tail)."""


def _binary(head: bytes) -> bool:
    """ORC's first stream is compressed or protobuf-encoded: control bytes within 256 bytes."""
    return any(b < 0x20 and b not in _TEXT_CONTROLS for b in head[3:256]) or len(head) < 16


def open_orc(f: pa.NativeFile, source: Source) -> Any:
    with unreadable(source, ORCFileError, "not a readable ORC file"):
        return orc.ORCFile(f)


class ORCReader(ColumnarReader):
    """ORC files: stripes as chunks, read through pyarrow."""

    name = "orc"
    suffixes = (".orc",)
    unit = "stripe"

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        if not head.startswith(MAGIC):
            return 0
        if _binary(head) or path.lower().endswith(cls.suffixes):
            return 90
        return 15  # "ORCHARD,..." is a CSV header: the text readers score higher

    def describe(self, source: Source, options: ColumnarOptions) -> Description:
        with open_native(source) as f:
            o = open_orc(f, source)
            try:
                schema = o.schema
                meta: dict[str, Any] = {
                    "rows": o.nrows, "stripes": o.nstripes, "compression": o.compression,
                    "compression_block_bytes": o.compression_size, "writer": o.writer,
                    "writer_version": o.writer_version, "software_version": o.software_version,
                    "file_version": o.file_version, "row_index_stride": o.row_index_stride,
                    "key_value_metadata": key_values(o.metadata, options)}
                content = o.content_length
                nstripes = o.nstripes
            except Exception as exc:
                if not data_error(exc):
                    raise
                raise ORCFileError(f"{source.path}: unreadable ORC tail "
                                   f"({one_line(exc)})") from exc
        state = ColumnarState(even_spans(nstripes, len(MAGIC), content, options.chunk_size))
        return describe_table(source, schema, options, meta, state)

    def open_units(self, f: pa.NativeFile, source: Source, state: ColumnarState,
                   options: ColumnarOptions) -> Any:
        return open_orc(f, source)

    def batches(self, opened: Any, unit: int, state: ColumnarState,
                options: ColumnarOptions) -> Iterator[pa.RecordBatch]:
        batch = opened.read_stripe(unit)
        batch.validate(full=True)  # offsets and UTF-8 checked before anything else trusts them
        yield batch

"""Parquet reader: a Parquet file is one table; its row groups are the chunks.

- Sniffed by the ``PAR1`` magic at the start (pyarrow checks the one at the end when it reads
  the footer: a file without it is a `ParquetFileError` naming the file, never bytes to hash).
- describe reads the footer only: the Arrow schema (dictionary columns decoded to their value
  type, hive partition columns appended, see `readers._columnar`) and, for the catalog, rows,
  row groups, codecs, ``created_by``, the format version, key-value metadata (trimmed) and the
  file's schema.
- plan groups consecutive row groups to about ``chunk_size`` *decoded* bytes (the footer's
  uncompressed sizes); a row group bigger than that is one chunk on its own.
- read decodes one row group at a time in batches of about ``batch_bytes`` (``iter_batches``),
  so a task holds one batch of rows and the column chunks being decoded, whatever the row group
  size. Page checksums are verified where the writer stored them. A row group that cannot be
  decoded (bad page, failed decompression, checksum mismatch) is one ``_errors`` row with its
  byte offset; the rows decoded before the damage and the other row groups are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from readers._columnar import (
    ColumnarOptions,
    ColumnarReader,
    ColumnarState,
    describe_table,
    key_values,
    open_native,
    spans_of,
    unreadable,
)
from readers._deferred import deferred
from readers.base import Description, Source
from readers.errors import BadFile

pq = deferred("pyarrow.parquet")

MAGIC = b"PAR1"
#: Row groups whose column codecs are listed in the catalog (the first ones; wide files with
#: thousands of row groups would otherwise cost a Python call per column chunk).
_CODEC_ROW_GROUPS = 8


class ParquetFileError(BadFile):
    """The file cannot be opened as Parquet (truncated, corrupt footer, encrypted)."""


def _first_byte(rg: Any) -> int | None:
    """Where a row group's bytes start: its first column chunk's dictionary or data page."""
    col = rg.column(0) if rg.num_columns else None
    if col is None:
        return None
    starts = [x for x in (col.dictionary_page_offset, col.data_page_offset) if x]
    return min(starts) if starts else None


def open_parquet(f: pa.NativeFile, source: Source) -> Any:
    """``pq.ParquetFile`` over ``f`` (the footer only), or a `ParquetFileError`."""
    with unreadable(source, ParquetFileError, "not a readable Parquet file"):
        # Local reads stream page by page; remote ones coalesce a row group's ranged requests.
        return pq.ParquetFile(f, pre_buffer=source.local_path is None,
                              buffer_size=0 if source.local_path is None else 1 << 20,
                              page_checksum_verification=True)


class ParquetReader(ColumnarReader):
    """Parquet files: row groups as chunks, read in batches through pyarrow."""

    name = "parquet"
    suffixes = (".parquet", ".parq", ".pq")
    unit = "row group"

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        return 95 if head.startswith(MAGIC) else 0

    def describe(self, source: Source, options: ColumnarOptions) -> Description:
        with open_native(source) as f:
            pf = open_parquet(f, source)
            with unreadable(source, ParquetFileError, "unreadable Parquet footer"):
                schema, meta, state = self._footer(pf, source, options)
        return describe_table(source, schema, options, meta, state)

    @staticmethod
    def _footer(pf: Any, source: Source, options: ColumnarOptions
                ) -> tuple[pa.Schema, dict[str, Any], ColumnarState]:
        md = pf.metadata
        groups = [md.row_group(i) for i in range(md.num_row_groups)]
        decoded = [rg.total_byte_size for rg in groups]
        offsets = [_first_byte(rg) or 0 for rg in groups]
        # Row groups lie one after another before the footer: each one's stored size is the
        # distance to the next (the footer only has it per column chunk).
        ends = offsets[1:] + [source.size - 8 - md.serialized_size]
        stored = [max(1, e - o) for o, e in zip(offsets, ends, strict=True)]
        codecs = sorted({rg.column(c).compression for rg in groups[:_CODEC_ROW_GROUPS]
                         for c in range(rg.num_columns)})
        meta: dict[str, Any] = {
            "rows": md.num_rows, "row_groups": md.num_row_groups, "columns": md.num_columns,
            "compression": codecs, "created_by": md.created_by,
            "format_version": md.format_version, "footer_bytes": md.serialized_size,
            "key_value_metadata": key_values(md.metadata, options)}
        state = ColumnarState(spans_of(offsets, stored, decoded, options.chunk_size))
        return pf.schema_arrow, meta, state

    def open_units(self, f: pa.NativeFile, source: Source, state: ColumnarState,
                   options: ColumnarOptions) -> Any:
        return open_parquet(f, source)

    def batches(self, opened: Any, unit: int, state: ColumnarState,
                options: ColumnarOptions) -> Iterator[pa.RecordBatch]:
        rg = opened.metadata.row_group(unit)
        per_row = max(1, rg.total_byte_size // max(1, rg.num_rows))
        size = max(1024, options.batch_bytes // per_row)
        return opened.iter_batches(batch_size=size, row_groups=[unit], use_threads=False)

    def unit_offset(self, opened: Any, unit: int) -> int | None:
        return _first_byte(opened.metadata.row_group(unit))

"""``pipeline.read``: the planned chunks as a lazy dask DataFrame, without writing anything.

One partition per chunk, Arrow-backed dtypes (``pd.ArrowDtype``), a ``_file_id`` column like the
ingested tables, declared types, derived columns and the transform applied as in ``ingest``.
A rejected record raises `RejectedRecord` (its file and byte offset) when its partition is
computed, so a sum is never silently short; ``on_bad="skip"`` leaves rejected records out
instead (``ingest`` keeps them in ``_errors``). A text file whose quoting cannot be split
exactly raises when computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.errors import MissingDependency, RejectedRecord, UsageError
from pipeline.execution.hook import TableHook

try:
    import dask.dataframe as dd
    import pandas as pd
except ImportError as exc:  # not needed by ingest, so not a core dependency
    raise MissingDependency(
        f"pipeline.read needs pandas and dask.dataframe ({exc}): "
        "pip install 'chunkmill[dataframe]'") from exc
from pipeline.execution.task import read_chunk
from pipeline.options import IngestOptions, as_paths
from pipeline.output.columns import repeated_text
from pipeline.output.layout import FILE_ID, table_name
from pipeline.planning.plan import build_plan
from readers import get_reader
from readers.base import ChunkSpec, Description, Source
from readers.options import ReaderOptions
from readers.widening import conform


@dataclass(frozen=True, slots=True)
class ChunkPartition:
    """One partition of the frame: a chunk of one file, read on a worker when computed."""

    source: Source
    reader: str
    chunk: ChunkSpec
    description: Description
    options: ReaderOptions
    table: str
    schema: pa.Schema
    retries: int
    hook: TableHook | None = None
    on_bad: str = "error"
    """``error``: a rejected record raises; ``skip``: it is left out."""


ON_BAD = ("error", "skip")


def load_chunk(part: ChunkPartition) -> pd.DataFrame:
    """The rows of one chunk as a pandas frame with Arrow dtypes (the task of each partition)."""
    reader = get_reader(part.reader)()
    pieces: list[pa.Table] = []

    def keep(table: str, rows: pa.Table) -> None:
        if table_name(table) == part.table:
            pieces.append(conform(rows, part.schema))

    manifest, ctx = read_chunk(reader, part.source, part.chunk, part.description, part.options,
                               part.retries, keep, pieces.clear, part.hook)
    problem = manifest.failed or reader.standalone_problem(part.source, part.chunk,
                                                           manifest.facts)
    if problem:
        raise ValueError(problem)
    if ctx.rejected and part.on_bad == "error":
        first = ctx.rejected[0]
        where = f" at byte {first.byte_offset}" if first.byte_offset is not None else ""
        more = f" (and {len(ctx.rejected) - 1} more in this chunk)" if len(ctx.rejected) > 1 \
            else ""
        detail = first.message.removeprefix(f"{part.source.path}: ")
        raise RejectedRecord(f"{part.source.path}: {first.kind} rejected{where} "
                             f"({first.error_type}): {detail}{more}; pass "
                             "on_bad='skip' to leave rejected records out, or ingest to keep "
                             "them in _errors")
    data = pa.concat_tables(pieces) if pieces else part.schema.empty_table()
    data = data.append_column(FILE_ID, repeated_text(part.source.file_id, data.num_rows))
    return data.to_pandas(types_mapper=pd.ArrowDtype)


def read(paths: str | Sequence[str], table: str | None = None, on_bad: str = "error",
         **options: Any) -> dd.DataFrame:
    """A lazy dask DataFrame of one table of ``paths`` (options as in ``ingest``).

    ``on_bad="error"`` (default): computing a partition with a rejected record raises
    `RejectedRecord` naming the file and byte offset; ``"skip"`` leaves such records out.
    """
    if on_bad not in ON_BAD:
        raise UsageError(f"on_bad must be one of {', '.join(ON_BAD)}, not {on_bad!r}")
    opts = IngestOptions.from_kwargs(options.pop("out", "unused"), **options)
    plan = build_plan(as_paths(paths), opts.plan)
    if not plan.schemas:
        raise UsageError("no table found in the inputs")
    if table is None:
        if len(plan.schemas) > 1:
            raise UsageError(f"the inputs hold several tables ({', '.join(plan.schemas)}): "
                             "pass table=")
        table = next(iter(plan.schemas))
    if table not in plan.schemas:
        raise UsageError(f"no table {table!r}; tables: {', '.join(plan.schemas)}")
    schema = plan.schemas[table]
    parts = []
    for f in plan.files:
        if f.description is None or table not in f.tables:
            continue
        reader = get_reader(f.reader)()
        for c in reader.prepare(f.source, f.description, f.chunks):
            if c.table is not None and table_name(c.table) != table:
                continue
            needs = reader.chunk_description(f.description, c)
            # a chunk of several tables may hold none of this one
            if any(table_name(t) == table for t in needs.tables):
                parts.append(ChunkPartition(f.source, f.reader, c, needs,
                                            plan.reader_options[f.reader], table, schema,
                                            opts.retries, plan.hook or None, on_bad))
    meta = (schema.append(pa.field(FILE_ID, pa.string())).empty_table()
            .to_pandas(types_mapper=pd.ArrowDtype))
    if not parts:
        return dd.from_pandas(meta, npartitions=1)
    return dd.from_map(load_chunk, parts, meta=meta, enforce_metadata=False,
                       label="chunkmill-read")

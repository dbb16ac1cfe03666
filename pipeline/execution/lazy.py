"""``pipeline.read``: the planned chunks as a lazy dask DataFrame, without writing anything.

One partition per chunk, Arrow-backed dtypes (``pd.ArrowDtype``), a ``_file_id`` column like the
ingested tables. Rejected records are left out of the frame (``ingest`` keeps them in
``_errors``); a text file whose quoting cannot be split exactly raises when computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.options import IngestOptions, as_paths
from pipeline.output.layout import FILE_ID
from pipeline.planning.plan import build_plan
from pipeline.planning.schema import conform
from readers import get_reader
from readers.base import ChunkContext, ChunkSpec, Description, RestartChunk, Source


def _load(source: Source, reader_name: str, chunk: ChunkSpec, description: Description,
          options: dict[str, Any], table: str, schema: pa.Schema) -> pd.DataFrame:
    reader = get_reader(reader_name)()
    ctx = ChunkContext(source, chunk)
    try:
        pieces = [conform(rows, schema) for name, rows in
                  reader.read(source, chunk, description, options, ctx) if name == table]
    except RestartChunk as restart:
        ctx = ChunkContext(source, chunk)
        pieces = [conform(rows, schema) for name, rows in
                  reader.read(source, chunk, description, {**options, **restart.changes}, ctx)
                  if name == table]
    if reader.reconciles and not ctx.facts.get("verified", True) and not ctx.facts.get("last"):
        raise ValueError(f"{source.path}: chunk {chunk.index} does not end on a record "
                         "boundary (stray quotes): use pipeline.ingest, which re-plans it")
    data = pa.concat_tables(pieces) if pieces else schema.empty_table()
    data = data.append_column(FILE_ID, pa.array([source.file_id] * data.num_rows, pa.string()))
    return data.to_pandas(types_mapper=pd.ArrowDtype)


def read(paths: str | Sequence[str], table: str | None = None, **options: Any) -> dd.DataFrame:
    """A lazy dask DataFrame of one table of ``paths`` (options as in ``ingest``)."""
    opts = IngestOptions.from_kwargs(options.pop("out", "unused"), table=None, **options)
    plan = build_plan(as_paths(paths), opts)
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
    reader_options = opts.reader_options()
    args = []
    for f in plan.files:
        if f.description is None or table not in f.description.tables:
            continue
        chunks = get_reader(f.reader)().prepare(f.source, f.description, f.chunks)
        args += [(f.source, f.reader, c, f.description, reader_options, table, schema)
                 for c in chunks if c.table in (None, table)]
    meta = (schema.append(pa.field(FILE_ID, pa.string())).empty_table()
            .to_pandas(types_mapper=pd.ArrowDtype))
    if not args:
        return dd.from_pandas(meta, npartitions=1)
    return dd.from_map(lambda a: _load(*a), args, meta=meta, enforce_metadata=False)

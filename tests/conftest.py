"""Shared fixtures: an in-process reader driver and one Dask cluster reused by many tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa
import pytest

from pipeline.planning.discover import describe_file
from readers import get_reader
from readers.base import ChunkContext, Rejected


def run_reader(path: str, reader: str | None = None, *, chunk_size: int = 1 << 20,
               string_columns: bool = False, **options: object
               ) -> tuple[pa.Table | None, list[Rejected], dict]:
    """Plan, read and reconcile one local file in this process, exactly as the runner does.

    Returns (rows of the default table, rejected records, info about reruns/fallbacks).
    """
    import fsspec

    fs = fsspec.filesystem("file")
    found = describe_file(fs, os.path.abspath(path), "t", reader, {})
    if found.error is not None:  # the file is refused at discovery, with this message
        raise ValueError(found.error)
    r = get_reader(found.reader)()
    opts = {"chunk_size": chunk_size, **options}
    desc = r.describe(found.source, opts)
    if string_columns:
        desc.tables = {t: pa.schema([(f.name, pa.string()) for f in s])
                       for t, s in desc.tables.items()}
    specs = r.plan(found.source, desc, opts)
    info = {"reruns": 0, "serial": None, "chunks": len(specs)}
    for _ in range(10):
        outputs = []
        for spec in specs:
            ctx = ChunkContext(found.source, spec)
            outputs.append(([t for _, t in r.read(found.source, spec, desc, opts, ctx)], ctx))
        rec = r.reconcile(found.source, desc, specs, [ctx.facts for _, ctx in outputs])
        if rec.replace_plan is not None:
            specs, info["serial"] = rec.replace_plan, rec.note
            continue
        if rec.rerun:
            info["reruns"] += len(rec.rerun)
            by_index = {c.index: c for c in rec.rerun}
            specs = [by_index.get(c.index, c) for c in specs]
            continue
        break
    else:
        raise AssertionError("reconcile did not settle")
    tables = [t for ts, _ in outputs for t in ts]
    rejected = [e for _, ctx in outputs for e in ctx.rejected]
    return (pa.concat_tables(tables) if tables else None), rejected, info


def read_all(reader: object, source: object, options: dict | None = None
             ) -> tuple[object, dict[str, pa.Table], list[Rejected]]:
    """Describe, plan and read every chunk of one file in this process (multi-table readers).

    Returns (description, rows per table, rejected records).
    """
    options = options or {}
    description = reader.describe(source, options)
    tables: dict[str, list[pa.Table]] = {}
    rejected: list[Rejected] = []
    for chunk in reader.plan(source, description, options):
        ctx = ChunkContext(source, chunk)
        for name, table in reader.read(source, chunk, description, options, ctx):
            tables.setdefault(name, []).append(table)
        rejected += ctx.rejected
    return description, {k: pa.concat_tables(v) for k, v in tables.items()}, rejected


def read_catalog(out: object) -> dict[str, dict]:
    """OUT's catalog rows by file name (metadata still JSON text)."""
    import duckdb

    cols = ["path", "format", "status", "tables", "rows", "chunks", "error_count", "metadata"]
    rows = duckdb.sql(f"select {', '.join(cols)} from read_parquet('{out}/_catalog/*.parquet')"
                      ).fetchall()
    return {os.path.basename(r[0]): dict(zip(cols, r, strict=True)) for r in rows}


@pytest.fixture(scope="session")
def shared_scheduler() -> Iterator[str]:
    """A two-process cluster for tests that only need *a* cluster (``scheduler=`` option)."""
    from distributed import LocalCluster

    # No global dask.config changes here: they would leak into every later test of the
    # session (the pressure plugin turns Dask's own pause off per worker when it installs).
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address

"""Shared fixtures: an in-process reader driver and one Dask cluster reused by many tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa
import pytest
from hypothesis import settings

from pipeline.execution.task import ChunkManifest, read_chunk
from pipeline.planning.discover import describe_file
from readers import get_reader
from readers.base import ChunkContext, ChunkSpec, Rejected
from readers.settle import FileChunks, read_settled

# The suite replays the same generated examples every run: a CI result must not depend on
# luck. CHUNKMILL_HYPOTHESIS=explore draws new ones (tests that set derandomize keep theirs).
# No per-example deadline either: examples that write and fsync files took 82 ms alone and
# 255 ms on a loaded machine, which failed a passing test (hangs have pytest's timeout).
settings.register_profile("suite", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("CHUNKMILL_HYPOTHESIS", "suite"))


def thorough() -> bool:
    """``CHUNKMILL_THOROUGH=1``: the crash tests kill at every point they know, not a sample
    (the suite must stay under ten minutes on two cores; the commit protocol's every step is
    also covered in memory by tests/test_commit_plan.py)."""
    return os.environ.get("CHUNKMILL_THOROUGH") == "1"


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
    opts = r.configure({"chunk_size": chunk_size, **options})
    desc = r.describe(found.source, opts)
    if string_columns:
        desc.tables = {t: pa.schema([(f.name, pa.string()) for f in s])
                       for t, s in desc.tables.items()}
    specs = r.plan(found.source, desc, opts)
    tables: dict[int, list[pa.Table]] = {}
    rejected: dict[int, list[Rejected]] = {}
    reruns = [0]

    def run(chunk: ChunkSpec) -> ChunkManifest:
        held = tables.setdefault(chunk.index, [])
        manifest, ctx = read_chunk(r, found.source, chunk, desc, opts, 0,
                                   lambda _t, rows: held.append(rows), held.clear)
        rejected[chunk.index] = ctx.rejected
        return manifest

    def discard(manifest: ChunkManifest) -> None:
        reruns[0] += 1
        tables.pop(manifest.index, None)
        rejected.pop(manifest.index, None)

    file = read_settled(FileChunks(found.source, type(r), desc, specs), run, discard)
    serial = next((n for n in file.notes if n.startswith("parsed as one stream")), None)
    info = {"reruns": reruns[0], "serial": serial,
            "chunks": len(specs)}
    order = [c.index for c in file.chunks]
    got = [t for i in order for t in tables.get(i, [])]
    if got and not got[0].num_columns:  # concat_tables loses the rows of column-less tables
        rows = pa.table({"": pa.nulls(sum(t.num_rows for t in got))}).select([])
    else:
        rows = pa.concat_tables(got) if got else None
    return (rows,
            [e for i in order for e in rejected.get(i, [])], info)


def read_all(reader: object, source: object, options: dict | None = None
             ) -> tuple[object, dict[str, pa.Table], list[Rejected]]:
    """Describe, plan and read every chunk of one file in this process (multi-table readers).

    Returns (description, rows per table, rejected records).
    """
    opts = reader.configure(options or {})
    description = reader.describe(source, opts)
    tables: dict[str, list[pa.Table]] = {}
    rejected: list[Rejected] = []
    for chunk in reader.plan(source, description, opts):
        ctx = ChunkContext(source, chunk)
        for name, table in reader.read(source, chunk, description, opts, ctx):
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

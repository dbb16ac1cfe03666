"""chunkmill: very large files -> hive-partitioned Parquet with constant memory, on Dask.

Public API (options are the CLI flags' names)::

    import pipeline
    plan = pipeline.plan(["logs/"], out="lake/")          # inspect: files, formats, chunks
    df = pipeline.read(["logs/"])                          # lazy dask DataFrame, no writes
    report = pipeline.ingest(["logs/"], out="lake/", partition_by=["event"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.errors import ChunkmillError, OutputLocked, SourceNotFound, UsageError
from pipeline.lazy import read
from pipeline.options import IngestOptions, as_paths
from pipeline.planning import Plan
from pipeline.report import RunReport
from pipeline.runner import ingest

__all__ = ["plan", "read", "ingest", "Plan", "RunReport", "IngestOptions", "ChunkmillError",
           "UsageError", "SourceNotFound", "OutputLocked"]


def plan(paths: str | Sequence[str], out: str = "out", **options: Any) -> Plan:
    """What ``ingest`` would do, without writing anything: files, formats, chunks, schemas."""
    from pipeline.planning import build_plan

    return build_plan(as_paths(paths), IngestOptions.from_kwargs(out, **options))

"""chunkmill: very large files -> hive-partitioned Parquet with constant memory, on Dask.

Public API (options are the CLI flags' names)::

    import pipeline
    plan = pipeline.plan(["logs/"])                        # inspect: files, formats, chunks
    df = pipeline.read(["logs/"])                          # lazy dask DataFrame, no writes
    report = pipeline.ingest(["logs/"], out="lake/", partition_by=["event"])
    pipeline.install_pressure_plugin(client)               # your own Dask client: spill and
                                                           # pause as ingest's workers do

Names load on first use: a worker process that unpickles a chunk task imports only what the
task needs (not pandas, dask.dataframe or the client-side runner).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.errors import (
    ChunkmillError,
    OutputLocked,
    RejectedRecord,
    SourceNotFound,
    UsageError,
)

if TYPE_CHECKING:
    from pipeline.execution.lazy import read
    from pipeline.options import IngestOptions
    from pipeline.planning.plan import Plan, plan
    from pipeline.pressure.plugin import install_pressure_plugin
    from pipeline.report.run_report import RunReport
    from pipeline.runner import ingest

__all__ = ["plan", "read", "ingest", "install_pressure_plugin", "Plan", "RunReport",
           "IngestOptions", "ChunkmillError", "UsageError", "SourceNotFound", "OutputLocked",
           "RejectedRecord"]

_LAZY = {"plan": "pipeline.planning.plan", "read": "pipeline.execution.lazy",
         "ingest": "pipeline.runner", "Plan": "pipeline.planning.plan",
         "RunReport": "pipeline.report.run_report", "IngestOptions": "pipeline.options",
         "install_pressure_plugin": "pipeline.pressure.plugin"}
_MODULES = {"plots": "pipeline.report.plots"}


def __getattr__(name: str) -> Any:
    if name in _LAZY or name in _MODULES:
        module = importlib.import_module(_LAZY.get(name) or _MODULES[name])
        value = getattr(module, name) if name in _LAZY else module
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

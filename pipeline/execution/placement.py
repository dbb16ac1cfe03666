"""Where a run's tasks go: this process, the embedded cluster (threads or processes), or an
existing scheduler. Pure decisions over the options and the discovered files; nothing here
imports Dask's distributed (a small job never needs it).

A **small job** runs its chunk and bundle tasks on a thread pool inside the chunkmill process
(`pipeline.execution.local`), without starting or importing distributed: no ``--scheduler``,
no dashboard, ``--layout auto`` with no worker counts given, every reader allowed on threads
(the layout "auto" would pick "threads"), and at most ``--small-job-size`` bytes to read. The
tasks, their manifests and everything the run writes are the same as on the cluster; the
client side runs the same window, retries, timeouts and memory-pressure decisions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pipeline.options import ClusterOptions

if TYPE_CHECKING:
    from readers.base import Reader

IN_PROCESS = "in-process"
"""The layout of a small job: no cluster, a thread per core in this process."""


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def choose_layout(options: ClusterOptions, readers: Iterable[type[Reader]]) -> str:
    """"threads" or "processes" for an embedded cluster that will run ``readers``' chunks.

    "auto" picks threads only when every reader allows it and the user asked for nothing
    about workers: ``--workers 2`` means two processes.
    """
    if options.layout != "auto":
        return options.layout
    if options.workers is not None or options.threads_per_worker is not None:
        return "processes"
    readers = list(readers)
    return "threads" if readers and all(r.threads_ok for r in readers) else "processes"


def in_process(options: ClusterOptions, layout: str, nbytes: int) -> bool:
    """Whether a job that reads ``nbytes`` (and whose embedded layout would be ``layout``)
    runs in this process without a Dask cluster (see the module docstring)."""
    return (options.scheduler is None and not options.dashboard
            and options.dashboard_address is None and options.layout == "auto"
            and layout == "threads" and nbytes <= options.small_job_size)


def worker_shape(options: ClusterOptions, layout: str) -> tuple[int, int]:
    """(workers, threads per worker) of the embedded cluster in ``layout``."""
    if layout in ("threads", IN_PROCESS):
        return options.workers or 1, options.threads_per_worker or default_workers()
    return options.workers or default_workers(), options.threads_per_worker or 1


__all__ = ["IN_PROCESS", "choose_layout", "default_workers", "in_process", "worker_shape"]

"""A small job's tasks on a thread pool in this process: no Dask cluster started or imported.

The same task functions (`run_chunk`, `run_bundle`) get the same task records (not pickled:
this process holds them already) and return the same manifests as on a Dask worker;
`TaskScheduler` drives this executor with the same window, retries and timeouts, and the
pressure decisions come from `pipeline.pressure.local`. Which jobs run here is decided in
`pipeline.execution.placement`.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.execution.scheduler import Job


def _attempts(fn: Callable[[Any], Any], task: Any, retries: int) -> Any:
    """``fn(task)``, run again after an exception up to ``retries`` times (Dask's
    ``submit(..., retries=)``)."""
    for attempt in range(retries + 1):
        try:
            return fn(task)
        except Exception:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")


class LocalExecutor:
    """``threads`` threads of this process (named ``chunkmill_0``, ``chunkmill_1``, ...)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="chunkmill")

    def submit(self, job: Job, retries: int) -> cf.Future[Any]:
        return self.pool.submit(_attempts, job.fn, job.task, retries)

    def release(self, future: cf.Future[Any]) -> None:
        pass  # nothing is held anywhere but in the future itself

    def pending(self, future: cf.Future[Any]) -> bool:
        return not future.done()

    def close(self) -> None:
        """Stop: queued tasks are dropped, running ones are not waited for. After a normal
        run none is left; after an interrupt they stop at their next parse block (see
        `pipeline.execution.task.CANCEL`); one given up by ``--chunk-timeout`` may still
        hold its thread, which the interpreter waits for at exit (Python cannot kill it)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["LocalExecutor"]

"""Scale: a plan of a million chunks on the client, without reading data.

Inputs are sparse files (``truncate``: no block is written, nothing is read) planned by the
``scale`` reader plugin (`scale_reader.py`, registered through the ``chunkmill.readers`` entry
point like any plugin), whose chunks each yield one row without reading a byte. Three modes,
each in this process (run each mode in its own process: peak RSS is the process's):

``plan``
    ``pipeline.plan(...)``: discovery, describe, grouping, chunk planning.
``simulate``
    ``pipeline.ingest(...)`` end to end on the client, with the cluster replaced by one that
    finishes every task the moment it is submitted, with the manifest of a chunk that wrote
    nothing (``--threads`` worker threads, which sets the window). What is measured is then
    chunkmill's own client work per chunk: building tasks and tokens, the window, collecting,
    reconciling, journaling ``staged`` entries and committing. It measures neither Dask's
    scheduler nor the workers.
``dask``
    ``pipeline.ingest(...)`` on a real Dask cluster: the embedded default (the reader allows
    threads, so one worker in this process with a thread per core; the scheduler runs in this
    process too), or ``--workers N`` worker processes (a LocalCluster). Each chunk writes its
    one-row fragment, so the commit renames a fragment per chunk, as a real run does.

Examples (from the repository root, with chunkmill installed or ``PYTHONPATH=.``)::

    python benchmarks/bench_scale.py --mode plan --files 10000 --chunks-per-file 100
    python benchmarks/bench_scale.py --mode simulate --files 10000 --chunks-per-file 100
    python benchmarks/bench_scale.py --mode dask --files 200 --chunks-per-file 100

Reports one JSON object: chunks, seconds and chunks/s of planning and of execution (submit
through the window to the last commit), the client's peak RSS (``ru_maxrss``) and its RSS after
imports, journal bytes (total and per chunk), commits and committed files per second of commit.
Execution is also given per CPU second of this process (``execute_chunks_per_cpu_s``), which
a busy machine disturbs less than wall time; in ``dask`` mode that CPU includes the scheduler
and, in the default threads layout, the worker, all in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_reader  # noqa: E402


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> float:
    """CPU seconds of this process (all threads): less sensitive than wall time to other
    processes on a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the simulated cluster -------------------------------------------------------------------
class _Done:
    """A future that finished the moment it was made."""

    __slots__ = ("_result", "key")
    status = "finished"

    def __init__(self, key: str, result: Any) -> None:
        self.key = key
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        return self._result

    def release(self) -> None:
        pass

    def cancel(self) -> None:
        pass

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


class InstantClient:
    """Stands for a Dask client whose workers finish each task at once: a chunk task returns
    the manifest of a chunk that wrote nothing (no fragment, no row)."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self.futures: dict[str, Any] = {}
        self.submitted = 0

    def submit(self, fn: Any, task: Any, *, key: str, **_: Any) -> _Done:
        from pipeline.execution.task import ChunkManifest

        self.submitted += 1
        chunk = task.chunk
        now = time.time()
        return _Done(key, ChunkManifest(chunk.id, chunk.file_id, chunk.index,
                                        bytes_read=chunk.length, worker="sim", thread="sim",
                                        started=now, finished=now))

    def nthreads(self) -> dict[str, int]:
        return {"sim": self._threads}

    def subscribe_topic(self, *_: Any) -> None:
        pass

    def unsubscribe_topic(self, *_: Any) -> None:
        pass

    def get_events(self, *_: Any) -> tuple[()]:
        return ()

    def run(self, *_: Any, **__: Any) -> dict[str, Any]:
        return {}

    def cancel(self, *_: Any, **__: Any) -> None:
        pass


@contextlib.contextmanager
def _simulated(threads: int) -> Iterator[InstantClient]:
    """The instant cluster in place of the runner's (and of `distributed.wait`), for the
    ``with`` block only."""
    import pipeline.execution.scheduler as scheduler
    import pipeline.runner as runner

    client = InstantClient(threads)

    class InstantCluster:
        def __init__(self, *_: Any, **__: Any) -> None:
            pass

        def client(self) -> InstantClient:
            return client

        def close(self, fast: bool = False) -> None:
            pass

    with contextlib.ExitStack() as stack:
        import pipeline.execution.cluster as cluster

        # The runner imports it when it starts a cluster (older versions: at import).
        stack.enter_context(mock.patch.object(cluster, "BackgroundCluster", InstantCluster))
        if hasattr(runner, "BackgroundCluster"):
            stack.enter_context(mock.patch.object(runner, "BackgroundCluster", InstantCluster))
        if hasattr(scheduler, "wait"):  # versions that waited with `distributed.wait`
            stack.enter_context(mock.patch.object(scheduler, "wait", lambda *_, **__: None))
        yield client


# --- timing the phases -------------------------------------------------------------------------
class _Timer:
    def __init__(self) -> None:
        self.plan_s = 0.0
        self.commit_s = 0.0
        self.commits = 0
        self.plan_cpu_s = 0.0
        self.committed_files = 0


@contextlib.contextmanager
def _instrumented(timer: _Timer) -> Iterator[None]:
    """Time planning and commits (the runner's `build_plan` and `apply_commit`)."""
    import pipeline.runner as runner

    build_plan, apply_commit = runner.build_plan, runner.apply_commit

    def timed_plan(*args: Any, **kwargs: Any) -> Any:
        t, cpu = time.perf_counter(), _cpu_s()
        try:
            return build_plan(*args, **kwargs)
        finally:
            timer.plan_s += time.perf_counter() - t
            timer.plan_cpu_s += _cpu_s() - cpu

    def timed_commit(plan: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return apply_commit(plan, *args, **kwargs)
        finally:
            timer.commit_s += time.perf_counter() - t
            timer.commits += 1
            timer.committed_files += len(plan.committed)

    with mock.patch.object(runner, "build_plan", timed_plan), \
            mock.patch.object(runner, "apply_commit", timed_commit):
        yield


def run(mode: str, files: int, chunks_per_file: int, chunk_size: int, scratch: Path,
        threads: int = 200, workers: int | None = None, keep: bool = False) -> dict[str, Any]:
    """One measurement (see the module's docstring); returns the JSON-able result."""
    scale_reader.register(scratch / "plugin")
    inputs = scratch / f"in-{files}x{chunks_per_file}x{chunk_size}"
    made = time.perf_counter()
    scale_reader.make_inputs(inputs, files, chunks_per_file, chunk_size)
    made = time.perf_counter() - made
    import pipeline

    result: dict[str, Any] = {
        "mode": mode, "files": files, "chunks_per_file": chunks_per_file,
        "chunk_size": chunk_size, "inputs_s": round(made, 2),
        "rss_after_imports_mib": round(_rss_mib(), 1)}
    if mode == "plan":
        t, cpu = time.perf_counter(), _cpu_s()
        plan = pipeline.plan(str(inputs), format=scale_reader.NAME, chunk_size=chunk_size)
        took, cpu = time.perf_counter() - t, _cpu_s() - cpu
        chunks = sum(len(f.chunks) for f in plan.files)
        result.update(chunks=chunks, plan_s=round(took, 2),
                      plan_chunks_per_s=round(chunks / took), plan_cpu_s=round(cpu, 2),
                      plan_chunks_per_cpu_s=round(chunks / max(1e-9, cpu)),
                      errors=sum(1 for f in plan.files if f.error))
    else:
        timer = _Timer()
        out = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
        options: dict[str, Any] = {"format": scale_reader.NAME, "chunk_size": chunk_size,
                                   "progress": False}
        if workers:
            options["workers"] = workers
        if mode != "plan":
            options["small_job_size"] = 0  # the cluster's path, however few bytes
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(_instrumented(timer))
                client = (stack.enter_context(_simulated(threads)) if mode == "simulate"
                          else None)
                t, cpu = time.perf_counter(), _cpu_s()
                report = pipeline.ingest(str(inputs), str(out), **options)
                total, cpu = time.perf_counter() - t, _cpu_s() - cpu
            journal = out / "_chunkmill" / "journal.jsonl"
            jbytes = journal.stat().st_size if journal.exists() else 0
            chunks = report.chunks
            run_s = total - timer.plan_s
            result.update(
                chunks=chunks, rows=report.rows, files_ok=report.files.get("ok", 0),
                failures=len(report.failures),
                plan_s=round(timer.plan_s, 2),
                plan_chunks_per_s=round(chunks / timer.plan_s) if timer.plan_s else None,
                plan_cpu_s=round(timer.plan_cpu_s, 2),
                execute_s=round(run_s, 2), execute_chunks_per_s=round(chunks / run_s),
                execute_cpu_s=round(cpu - timer.plan_cpu_s, 2),
                execute_chunks_per_cpu_s=round(chunks / max(1e-9, cpu - timer.plan_cpu_s)),
                total_s=round(total, 2), total_chunks_per_s=round(chunks / total),
                journal_bytes=jbytes, journal_bytes_per_chunk=round(jbytes / max(1, chunks), 1),
                commits=timer.commits, commit_s=round(timer.commit_s, 2),
                committed_files_per_commit_s=(round(timer.committed_files / timer.commit_s)
                                              if timer.commit_s else None),
                submitted=client.submitted if client else None,
                cluster=("simulated: every task done at once, window for "
                         f"{threads} threads") if client else
                (f"LocalCluster: {workers} worker processes" if workers else
                 "embedded default (threads layout)"))
        finally:
            if keep:
                result["out"] = str(out)
            else:
                shutil.rmtree(out, ignore_errors=True)
    result["peak_rss_mib"] = round(_rss_mib(), 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("plan", "simulate", "dask"), default="plan")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--chunks-per-file", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=32 << 20,
                        help="bytes per chunk (the files are sparse: nothing is written)")
    parser.add_argument("--threads", type=int, default=200,
                        help="simulate: worker threads of the simulated cluster (the window "
                             "is window-per-thread x threads)")
    parser.add_argument("--workers", type=int, default=None,
                        help="dask: worker processes (default: the embedded default cluster)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/chunkmill-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the output directory")
    args = parser.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    result = run(args.mode, args.files, args.chunks_per_file, args.chunk_size, args.scratch,
                 threads=args.threads, workers=args.workers, keep=args.keep)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where tasks run: an embedded LocalCluster by default, or an existing Dask scheduler.

The embedded cluster has two layouts. "threads": one worker inside this process with a thread
per core, for jobs whose readers all parse outside the GIL (text: pyarrow's C++ CSV and JSON
readers and Parquet writer). It starts in a tenth of a second instead of spawning and
importing an interpreter per core, and holds one interpreter's memory instead of three.
"processes": one single-threaded worker process per core, for everything else (h5py holds a
global lock, Pillow and the container parsers run Python code; a reader that crashes takes
its worker down, not the run). No dashboard unless asked (it costs start-up time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator

import dask
from distributed import Client, LocalCluster

from pipeline.errors import UsageError
from pipeline.options import ClusterOptions
from pipeline.pressure.plugin import install_pressure_plugin
from readers.base import Reader

log = logging.getLogger("chunkmill.cluster")


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


def worker_shape(options: ClusterOptions, layout: str) -> tuple[int, int]:
    """(workers, threads per worker) of the embedded cluster in ``layout``."""
    if layout == "threads":
        return options.workers or 1, options.threads_per_worker or default_workers()
    return options.workers or default_workers(), options.threads_per_worker or 1


@contextlib.contextmanager
def connect(options: ClusterOptions, layout: str = "processes") -> Iterator[Client]:
    """A client on the cluster the options ask for; an embedded cluster (in ``layout``, see
    `choose_layout`) is shut down after.

    Either way every worker gets the memory-pressure plugin before any chunk runs.
    """
    if options.scheduler:
        try:
            client = Client(options.scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise UsageError(f"--scheduler {options.scheduler}: cannot connect ({exc})") from exc
        try:
            install_pressure_plugin(client)
            yield client
        finally:
            client.close()
        return
    # The pressure plugin pauses workers itself; Dask's own pause would un-pause them.
    # The statistical profiler samples every thread's stack every 10 ms (about 3% of a
    # worker's CPU here); only the dashboard shows what it collects.
    with dask.config.set({"distributed.worker.memory.pause": False,
                          "distributed.scheduler.work-stealing": True,
                          "distributed.admin.system-monitor.gil.enabled": False,
                          "distributed.worker.profile.enabled": options.dashboard}):
        workers, threads = worker_shape(options, layout)
        log.info("chunkmill: embedded cluster of %d worker(s) x %d thread(s) in %s",
                 workers, threads, "this process" if layout == "threads" else "processes")
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=layout != "threads",
            memory_limit=options.memory_limit,
            dashboard_address=":0" if options.dashboard else None,
            silence_logs=logging.ERROR,
            # A Ctrl-C on the terminal reaches every process of the group: only the client
            # acts on it (stopping the run in order); worker processes ignore it.
            **({} if layout == "threads" else {"preload": ["pipeline.execution.worker_init"]}),
        )
        client = Client(cluster)
        try:
            install_pressure_plugin(client)
            yield client
        finally:
            client.close()
            cluster.close()


class BackgroundCluster:
    """``connect(options)`` entered in a thread, so workers start while the client plans.

    Worker processes take a second or two to spawn and import; describing thousands of files
    takes about as long. `client()` waits for the start and re-raises its error, if any.
    """

    def __init__(self, options: ClusterOptions, layout: str = "processes") -> None:
        self._stack = contextlib.ExitStack()
        self._client: Client | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, args=(options, layout),
                                        name="chunkmill-cluster-start", daemon=True)
        self._thread.start()

    def _start(self, options: ClusterOptions, layout: str) -> None:
        try:
            self._client = self._stack.enter_context(connect(options, layout))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in client()
            self._error = exc

    def client(self) -> Client:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._client is not None
        return self._client

    def close(self, fast: bool = False) -> None:
        """Shut the cluster down; ``fast`` (the run is being interrupted) does not wait for
        running tasks (their chunks are read again by the next run)."""
        self._thread.join()
        if fast and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.cancel(list(self._client.futures.values()), force=True)
        self._stack.close()


def dashboard_link(client: Client) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # no dashboard running
        return None

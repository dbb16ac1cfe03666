"""Where tasks run: an embedded LocalCluster by default, or an existing Dask scheduler.

The embedded cluster has two layouts. "threads": one worker inside this process with a thread
per core, for jobs whose readers all parse outside the GIL (text: pyarrow's C++ CSV and JSON
readers and Parquet writer). It starts in a tenth of a second instead of spawning and
importing an interpreter per core, and holds one interpreter's memory instead of three.
"processes": one single-threaded worker process per core, for everything else (h5py holds a
global lock, Pillow and the container parsers run Python code; a reader that crashes takes
its worker down, not the run).

No HTTP server unless asked: Dask's scheduler and workers always serve HTTP pages (task
pages, call stacks, ``/metrics``), on all interfaces, even with the dashboard off. The
embedded cluster's scheduler and workers here do not start one at all; with ``--dashboard``
the dashboard and the workers' pages listen on 127.0.0.1 only (``--dashboard-address``
chooses otherwise). Their comms are ``inproc`` (threads) or TCP on 127.0.0.1 (processes).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import warnings
from collections.abc import Iterator

import dask
from distributed import Client, Nanny, Scheduler, SpecCluster, Worker
from distributed.security import Security

from pipeline.errors import UsageError
from pipeline.execution.placement import worker_shape
from pipeline.options import ClusterOptions
from pipeline.pressure.plugin import install_pressure_plugin

log = logging.getLogger("chunkmill.cluster")


@contextlib.contextmanager
def connect(options: ClusterOptions, layout: str = "processes") -> Iterator[Client]:
    """A client on the cluster the options ask for; an embedded cluster (in ``layout``, see
    `choose_layout`) is shut down after.

    Either way every worker gets the memory-pressure plugin before any chunk runs.
    """
    if options.scheduler:
        try:
            client = Client(options.scheduler, timeout="5s")  # a scheduler answers in ms
        except (OSError, TimeoutError) as exc:
            raise UsageError(f"--scheduler {options.scheduler}: cannot connect ({exc})") from exc
        try:
            install_pressure_plugin(client)
            yield client
        finally:
            client.close()
        return
    # The pressure plugin pauses workers itself; Dask's own pause would un-pause them.
    # The statistical profiler samples every thread's stack all the time, at a cost in
    # worker CPU; only the dashboard shows what it collects.
    dashboard = dashboard_address(options)
    with dask.config.set({"distributed.worker.memory.pause": False,
                          "distributed.scheduler.work-stealing": True,
                          "distributed.admin.system-monitor.gil.enabled": False,
                          "distributed.worker.profile.enabled": dashboard is not None}):
        workers, threads = worker_shape(options, layout)
        log.info("chunkmill: embedded cluster of %d worker(s) x %d thread(s) in %s",
                 workers, threads, "this process" if layout == "threads" else "processes")
        cluster = embedded_cluster(workers, threads, layout, options.memory_limit, dashboard)
        client = Client(cluster)
        try:
            install_pressure_plugin(client)
            yield client
        finally:
            client.close()
            cluster.close()


DEFAULT_DASHBOARD = "127.0.0.1:8787"


def dashboard_address(options: ClusterOptions) -> str | None:
    """Where the dashboard listens (None: no dashboard, and no HTTP server at all)."""
    if options.dashboard_address:
        return options.dashboard_address
    return DEFAULT_DASHBOARD if options.dashboard else None


class QuietScheduler(Scheduler):
    """A scheduler without Dask's HTTP server (which it starts even with no dashboard)."""

    def start_http_server(self, *args: object, **kwargs: object) -> None:
        pass


class QuietWorker(Worker):
    """A worker without Dask's HTTP server (its pages and ``/metrics``)."""

    def start_http_server(self, *args: object, **kwargs: object) -> None:
        pass


def embedded_cluster(workers: int, threads: int, layout: str, memory_limit: str | int | None,
                     dashboard: str | None) -> SpecCluster:
    """The embedded cluster: Dask's LocalCluster, except that nothing listens beyond this
    machine and, without a dashboard, nothing serves HTTP.

    ``dashboard``: the dashboard's address (``127.0.0.1:8787``), or None for no HTTP server.
    """
    processes = layout != "threads"
    protocol = "tcp://" if processes else "inproc://"
    host = "127.0.0.1" if processes else None
    security = Security()
    scheduler = {"cls": Scheduler if dashboard else QuietScheduler, "options": {
        "host": host, "port": 0, "protocol": protocol, "security": security,
        "dashboard": dashboard is not None, "dashboard_address": dashboard}}
    worker_options = {
        "host": host, "nthreads": threads, "protocol": protocol, "security": security,
        "silence_logs": logging.ERROR, "dashboard": False,
        # With a dashboard the workers' own pages (``/metrics``) stay on this machine.
        "dashboard_address": "127.0.0.1:0" if dashboard else None,
        "memory_limit": memory_limit,  # "auto": each worker parses it, as in LocalCluster
    }
    worker_class = Worker if dashboard else QuietWorker
    if processes:
        # A Ctrl-C on the terminal reaches every process of the group: only the client acts
        # on it (stopping the run in order); worker processes ignore it.
        worker = {"cls": Nanny, "options": {**worker_options, "worker_class": worker_class,
                                            "preload": ["pipeline.execution.worker_init"]}}
    else:
        worker = {"cls": worker_class, "options": worker_options}
    with warnings.catch_warnings():
        # A dashboard port in use: Dask takes another one and says so; the run prints the
        # address it got.
        warnings.filterwarnings("ignore", "Port .* is already in use", UserWarning)
        return SpecCluster(workers=dict.fromkeys(range(workers), worker), scheduler=scheduler,
                           worker=worker, silence_logs=logging.ERROR, security=security)


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
    """The dashboard's URL. For the embedded cluster, the address it is bound to (Dask's
    own link names the machine's public address, where nothing listens)."""
    scheduler = getattr(getattr(client, "cluster", None), "scheduler", None)
    server = getattr(scheduler, "http_server", None)
    if server is not None and getattr(server, "port", None):
        host = server.address
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{server.port}/status"
    try:
        return client.dashboard_link
    except Exception:  # no dashboard running
        return None

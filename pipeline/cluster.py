"""Where tasks run: an embedded LocalCluster by default, or an existing Dask scheduler.

Defaults are for throughput on small machines: one single-threaded worker *process* per core
(pyarrow's CSV/JSON parsers and h5py hold the GIL or a global lock for parts of their work, so
threads do not add up), no dashboard unless asked (it costs start-up time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

from pipeline.errors import UsageError
from pipeline.options import IngestOptions

log = logging.getLogger(__name__)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def install_pressure_plugin(client: Client) -> None:
    """The memory-pressure plugin on every worker (replaced, so this run's settings apply).

    ``chunkmill.pressure.limit`` in dask's config (bytes or ``"12GB"``) sets the memory the
    plugin treats as the machine's limit, e.g. the share of a notebook server the job may use.
    """
    from pipeline.options import parse_size
    from pipeline.pressure_plugin import PressurePlugin

    limit = dask.config.get("chunkmill.pressure.limit", None)
    client.register_plugin(PressurePlugin(
        limit_bytes=parse_size(limit) if limit else None, replace=True))


@contextlib.contextmanager
def connect(options: IngestOptions) -> Iterator[Client]:
    """A client on the cluster the options ask for; an embedded cluster is shut down after.

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
        cluster = LocalCluster(
            n_workers=options.workers or default_workers(),
            threads_per_worker=options.threads_per_worker,
            processes=True,
            memory_limit=options.memory_limit,
            dashboard_address=":0" if options.dashboard else None,
            silence_logs=logging.ERROR,
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

    def __init__(self, options: IngestOptions) -> None:
        self._stack = contextlib.ExitStack()
        self._client: Client | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, args=(options,),
                                        name="chunkmill-cluster-start", daemon=True)
        self._thread.start()

    def _start(self, options: IngestOptions) -> None:
        try:
            self._client = self._stack.enter_context(connect(options))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in client()
            self._error = exc

    def client(self) -> Client:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._client is not None
        return self._client

    def close(self) -> None:
        self._thread.join()
        self._stack.close()


def dashboard_link(client: Client) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # no dashboard running
        return None

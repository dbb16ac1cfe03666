"""Submitting tasks through a bounded window, largest first, and collecting what finishes.

The client and the scheduler track a bounded number of tasks whatever the input size: at most
``window`` are in flight (fewer under memory pressure, none at CRITICAL), the queue is ordered
by priority (the largest file first: shortest makespan), and each finished task is handed to
the caller's ``on_done`` with its result or the exception it died of. A task running longer
than ``timeout`` is given up (Python cannot kill a worker thread: we stop waiting for it).

The tasks go to an `Executor`: `DaskExecutor` (a Dask client: the embedded cluster or
``--scheduler``) or `pipeline.execution.local.LocalExecutor` (a small job's thread pool in
this process). Both take the same functions and tasks and hand back the same manifests.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.execution.watch import ClusterWatch

if TYPE_CHECKING:
    from distributed import Client


ROUNDS = threading.Event()
"""Set while `TaskScheduler.run` runs rounds in the main thread."""
STOP = threading.Event()
"""Set by the CLI's first Ctrl-C during `ROUNDS`: the run stops at the start of its next round
(within a quarter of a second) by raising KeyboardInterrupt there, not wherever the signal
lands. Raised inside Python-level lock code (`threading.Condition.__enter__`, which a
future's ``add_done_callback`` and ``result`` enter) it can leave a lock held that a worker
thread then waits for forever."""


def stop_at_next_round() -> bool:
    """Ask the rounds running in the main thread to stop at their next round (see `STOP`);
    False when none run (then the caller interrupts by other means). For a signal handler,
    which runs in the main thread: no other thread sets or clears `ROUNDS`."""
    if not ROUNDS.is_set():
        return False
    STOP.set()
    return True


class ChunkTimeout(TimeoutError):
    """A task ran longer than ``--chunk-timeout``."""

    chunkmill_code = "ChunkTimeout"


@dataclass(slots=True)
class Job:
    """One task to submit: ``fn(task)`` under ``key``; ``payload`` comes back to ``on_done``."""

    priority: int
    key: str
    fn: Callable[[Any], Any]
    task: Any
    payload: Any


class Executor(Protocol):
    """Where `TaskScheduler` runs its jobs; futures are the executor's own."""

    def submit(self, job: Job, retries: int) -> Any:
        """Start ``job.fn(job.task)``; an exception is retried up to ``retries`` times."""

    def release(self, future: Any) -> None:
        """The result was taken: forget it."""

    def pending(self, future: Any) -> bool:
        """Not finished yet (queued or running)."""


class DaskExecutor:
    """Jobs as Dask tasks on ``client``'s cluster, ordered there by their priority."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def submit(self, job: Job, retries: int) -> Any:
        return self.client.submit(job.fn, job.task, key=job.key, pure=False,
                                  priority=job.priority, retries=retries)

    def release(self, future: Any) -> None:
        future.release()

    def pending(self, future: Any) -> bool:
        return future.status == "pending"


class TaskScheduler:
    """Runs jobs on ``executor`` through a window; `run` returns when every job is done."""

    def __init__(self, executor: Executor, window: int, watch: ClusterWatch,
                 timeout: float | None = None, retries: int = 0) -> None:
        self.executor = executor
        self.window = window
        self.watch = watch
        self.timeout = timeout
        self.retries = retries
        self.queue: list[tuple[int, int, Job, Iterator[Job] | None]] = []
        """(-priority, order added, job, the jobs queued after it in one `add_lazy`)."""
        self._order = itertools.count()
        self.running: dict[Any, tuple[Job, float]] = {}
        self._finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        """Futures put here by their done callbacks (from the executor's threads)."""
        self._put = self._finished.put

    def add(self, *jobs: Job) -> None:
        """Queue jobs; higher priority runs first, equal ones in the order added."""
        for job in jobs:
            heapq.heappush(self.queue, (-job.priority, next(self._order), job, None))

    def add_lazy(self, jobs: Iterable[Job]) -> None:
        """Queue jobs of one priority that are made only when their turn comes: they run as
        if `add`-ed one by one, but a file of a million chunks is not a million tasks held
        on the client before the first is submitted."""
        rest = iter(jobs)
        first = next(rest, None)
        if first is not None:
            heapq.heappush(self.queue, (-first.priority, next(self._order), first, rest))

    def _next(self) -> Job:
        priority, order, job, rest = heapq.heappop(self.queue)
        following = next(rest, None) if rest is not None else None
        if following is not None:  # keeps its place: equal priorities stay in order added
            heapq.heappush(self.queue, (priority, order, following, rest))
        return job

    def _submit(self, job: Job) -> None:
        fut = self.executor.submit(job, self.retries)
        self.running[fut] = (job, time.monotonic() if self.timeout else 0.0)
        fut.add_done_callback(self._put)

    def _finished_since(self, timeout: float) -> list[Any]:
        """Futures that finished since the last call, waiting up to ``timeout`` for one.

        Each future reports itself once (its done callback), so a round costs what finished,
        not the whole window: ``distributed.wait`` over the window would cost every running
        future on every round, which a window of thousands (a big cluster) makes the
        client's bottleneck.
        """
        try:
            done = [self._finished.get(timeout=timeout)]
        except queue.Empty:
            return []  # nothing finished yet: look at timeouts and pressure, then wait again
        while True:
            try:
                done.append(self._finished.get_nowait())
            except queue.Empty:
                return done

    def run(self, on_done: Callable[[Any, Any], None], on_tick: Callable[[], None]) -> None:
        """Submit and collect until nothing is queued or running.

        ``on_done(payload, result_or_exception)`` may `add` more jobs; ``on_tick()`` runs after
        every round of collection (commits, progress).
        """
        rounds = threading.current_thread() is threading.main_thread()
        if rounds:
            STOP.clear()
            ROUNDS.set()
        try:
            self._rounds(on_done, on_tick, STOP if rounds else None)
            if rounds and STOP.is_set():  # pressed while the last chunks ran: interrupted
                raise KeyboardInterrupt
        finally:
            if rounds:
                ROUNDS.clear()
                STOP.clear()

    def _rounds(self, on_done: Callable[[Any, Any], None], on_tick: Callable[[], None],
                stop: threading.Event | None) -> None:
        while self.queue or self.running:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            allowed = self.watch.window(self.window)
            while self.queue and len(self.running) < allowed:
                self._submit(self._next())
            if not self.running:
                time.sleep(0.1)  # paused by memory pressure: wait for it to ease
                on_tick()
                continue
            for fut in self._finished_since(0.25):
                entry = self.running.pop(fut, None)
                if entry is None:  # given up on (timed out) before it finished
                    continue
                job, _ = entry
                try:
                    result = fut.result()
                except Exception as exc:  # worker lost too often, out of memory, ...
                    result = exc
                self.executor.release(fut)
                on_done(job.payload, result)
            if self.timeout:
                self._expire(on_done)
            on_tick()

    def _expire(self, on_done: Callable[[Any, Any], None]) -> None:
        now = time.monotonic()
        for fut, (job, began) in list(self.running.items()):
            if now - began > self.timeout and self.executor.pending(fut):
                self.running.pop(fut)
                fut.cancel()
                on_done(job.payload, ChunkTimeout(f"timed out after {self.timeout:g}s"))


__all__ = ["TaskScheduler", "Job", "ChunkTimeout", "Executor", "DaskExecutor", "ROUNDS", "STOP",
           "stop_at_next_round"]

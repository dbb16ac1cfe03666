"""Submitting tasks through a bounded window, largest first, and collecting what finishes.

The client and the scheduler track a bounded number of tasks whatever the input size: at most
``window`` are in flight (fewer under memory pressure, none at CRITICAL), the queue is ordered
by priority (the largest file first: shortest makespan), and each finished task is handed to
the caller's ``on_done`` with its result or the exception it died of. A task running longer
than ``timeout`` is given up (Python cannot kill a worker thread: we stop waiting for it).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distributed import Client, Future, wait

from pipeline.execution.watch import ClusterWatch


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


class TaskScheduler:
    """Runs jobs on ``client`` through a window; `run` returns when every job is done."""

    def __init__(self, client: Client, window: int, watch: ClusterWatch,
                 timeout: float | None = None, retries: int = 0) -> None:
        self.client = client
        self.window = window
        self.watch = watch
        self.timeout = timeout
        self.retries = retries
        self.queue: list[tuple[int, int, Job]] = []
        self._order = itertools.count()
        self.running: dict[Future, tuple[Job, float]] = {}

    def add(self, *jobs: Job) -> None:
        """Queue jobs; higher priority runs first, equal ones in the order added."""
        for job in jobs:
            heapq.heappush(self.queue, (-job.priority, next(self._order), job))

    def _submit(self, job: Job) -> None:
        fut = self.client.submit(job.fn, job.task, key=job.key, pure=False,
                                 priority=job.priority, retries=self.retries)
        self.running[fut] = (job, time.monotonic())

    def run(self, on_done: Callable[[Any, Any], None], on_tick: Callable[[], None]) -> None:
        """Submit and collect until nothing is queued or running.

        ``on_done(payload, result_or_exception)`` may `add` more jobs; ``on_tick()`` runs after
        every round of collection (commits, progress).
        """
        while self.queue or self.running:
            allowed = self.watch.window(self.window)
            while self.queue and len(self.running) < allowed:
                self._submit(heapq.heappop(self.queue)[2])
            if not self.running:
                time.sleep(0.1)  # paused by memory pressure: wait for it to ease
                on_tick()
                continue
            try:
                wait(list(self.running), timeout=0.25, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass  # nothing finished yet: look at timeouts and pressure, then wait again
            for fut in [f for f in self.running if f.done()]:
                job, _ = self.running.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # worker lost too often, out of memory, ...
                    result = exc
                fut.release()
                on_done(job.payload, result)
            if self.timeout:
                self._expire(on_done)
            on_tick()

    def _expire(self, on_done: Callable[[Any, Any], None]) -> None:
        now = time.monotonic()
        for fut, (job, began) in list(self.running.items()):
            if now - began > self.timeout and fut.status == "pending":
                self.running.pop(fut)
                fut.cancel()
                on_done(job.payload, ChunkTimeout(f"timed out after {self.timeout:g}s"))


__all__ = ["TaskScheduler", "Job", "ChunkTimeout"]

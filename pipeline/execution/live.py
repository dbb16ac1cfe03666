"""Live progress of running chunk tasks: how far each one got, before it finishes.

A chunk task reports, at most every ``INTERVAL`` seconds and only between parse blocks, the
bytes of its range parsed so far (`readers.base.ChunkContext.advance`), its rows and its
rejected records, as a Dask worker event on ``PROGRESS_TOPIC``. The client subscribes to the
topic (`pipeline.execution.watch.ClusterWatch`) and adds these partial counts to the progress
line. Worker events go through the scheduler, so this works alike for the in-process worker,
worker processes and an external scheduler. A job run in this process without a cluster
(`pipeline.execution.local`) registers its handler with `listen` instead; elsewhere (outside
a Dask worker, nobody listening) nothing is sent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

PROGRESS_TOPIC = "chunkmill-progress"
INTERVAL = 0.25
"""Seconds between two reports of one task: a few messages a second per worker thread."""
_LISTENERS: dict[str, Callable[[dict[str, Any]], None]] = {}


def listen(run: str, handler: Callable[[dict[str, Any]], None] | None) -> None:
    """Hand run ``run``'s reports from tasks in this process to ``handler`` (None: stop)."""
    if handler is None:
        _LISTENERS.pop(run, None)
    else:
        _LISTENERS[run] = handler


@dataclass(frozen=True, slots=True)
class ChunkProgress:
    """One running chunk task's counts so far (one attempt: ``started`` tells them apart)."""

    run: str
    chunk: str
    started: float
    bytes: int
    rows: int
    rejected: int

    def asdict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkProgress:
        return cls(str(data["run"]), str(data["chunk"]), float(data["started"]),
                   int(data["bytes"]), int(data["rows"]), int(data["rejected"]))


class Reporter:
    """Called by `read_chunk` after every parse block; sends what it is told, throttled."""

    def __init__(self, run: str, chunk: str, started: float) -> None:
        self.run, self.chunk, self.started = run, chunk, started
        self._last = float("-inf")
        self._worker: Any = None
        self._local = _LISTENERS.get(run)
        if self._local is None and "distributed" in sys.modules:  # never import it for this
            try:
                from distributed import get_worker

                self._worker = get_worker()
            except ValueError:  # not in a Dask worker (pipeline.read, tests)
                pass

    def __call__(self, nbytes: int, rows: int, rejected: int) -> None:
        now = time.monotonic()
        if self._worker is None and self._local is None or now - self._last < INTERVAL:
            return
        self._last = now
        message = ChunkProgress(self.run, self.chunk, self.started, nbytes, rows, rejected)
        if self._local is not None:
            self._local(message.asdict())
            return
        try:  # thread-safe: from a task thread the worker hands it to its event loop
            self._worker.log_event(PROGRESS_TOPIC, message.asdict())
        except Exception:  # noqa: BLE001 - a progress line is never worth failing a chunk
            self._worker = None


__all__ = ["PROGRESS_TOPIC", "ChunkProgress", "Reporter", "listen"]

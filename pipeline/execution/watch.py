"""The client's view of the cluster during a run: pressure levels, memory, submission window.

Every worker's pressure plugin pushes its records (`pipeline.pressure.events`): level changes
(`PressureEvent`), a memory point per sampling interval (`MemoryPoint`) and stall warnings
(`StallWarning`). The watch subscribes to them (``client.subscribe_topic``), so nothing is
polled: it keeps each worker's level for the submission window (`pipeline.pressure.window`:
CRITICAL on a paused worker stops submission until it eases), records the events and memory
points in the run report, and logs stall warnings at WARNING. Records logged before it
subscribed, or still on their way when the run ends, come from the scheduler's recent history
(``client.get_events``). At the end it asks each worker once for the counters only the
plugin keeps (pauses, bytes spilled) and for its memory then (the timeline's last point).

A job run in this process without a cluster has no worker and no scheduler: its
`pipeline.pressure.local.LocalPressure` and its tasks' progress reports hand the same records
to `receive`, and `finish` takes the end state that `collect` would have asked the workers for.

A worker heard from neither by a level change nor by a memory point for ``STALE_S`` seconds (it
sends a point every ``chunkmill.pressure.interval``) no longer counts: one that died paused
must not stop submission for good.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.execution.live import PROGRESS_TOPIC, ChunkProgress
from pipeline.pressure import events
from pipeline.pressure.events import PressureEvent, PressureLevel
from pipeline.pressure.window import window_size
from pipeline.report.progress import Progress
from pipeline.report.run_report import RunReport

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("chunkmill.pressure")

_FLUSH_S = 2.0  # at most this long at the end for records still on their way
STALE_S = 30.0


class ClusterWatch:
    """Follows the cluster's pressure for one run; `window` is cheap enough for every loop turn.

    Use: `attach` once the client is up, `window` and `tick` while the run goes, `collect`
    at the end, and `detach` however the run ends, before the client closes.
    """

    def __init__(self, report: RunReport) -> None:
        self.report = report
        self.level = PressureLevel.NORMAL
        """The worst level of any worker now."""
        self._threads = 1
        self._lock = threading.Lock()
        self._workers: dict[str, PressureEvent] = {}
        """Each worker's latest level change."""
        self._heard: dict[str, float] = {}
        """When each worker's latest record arrived (``time.monotonic()``)."""
        self._seen: set[tuple[Any, ...]] = set()
        self._detached = False
        self.progress: Progress | None = None
        """Where running chunks' per-block reports go (``chunkmill-progress`` events)."""

    # --- live ------------------------------------------------------------------------------------
    def attach(self, client: Client, progress: Progress | None = None) -> None:
        """Subscribe to the plugins' records, then take those logged since the run started;
        with ``progress``, also to the running chunks' reports."""
        self.progress = progress
        self._threads = sum(client.nthreads().values()) or 1
        for topic, handler in self._handlers().items():
            client.subscribe_topic(topic, handler)
        self._backfill(client, (events.EVENT_TOPIC, events.MEMORY_TOPIC, events.STALL_TOPIC))
        self._memory_now(client)  # the timeline's first point: a short run has few others

    def attach_local(self, threads: int, progress: Progress | None = None) -> None:
        """`attach` for a job run in this process: records come through `receive`."""
        self.progress = progress
        self._threads = threads

    def receive(self, topic: str, record: dict[str, Any]) -> None:
        """A record on ``topic`` as a worker would have pushed it (a job in this process)."""
        self._handlers()[topic]((time.time(), record))

    def _memory_now(self, client: Client) -> dict[str, dict[str, Any]]:
        """Each worker's plugin state, its memory now added to the timeline."""
        from pipeline.pressure.plugin import pressure_state

        try:
            per_worker: dict[str, dict[str, Any]] = client.run(pressure_state)
        except Exception:  # a worker that left, or a cluster without the plugin
            return {}
        for info in per_worker.values():
            if info.get("memory"):
                self._on_memory((time.time(), info["memory"]))
        return per_worker

    def window(self, base: int) -> int:
        """Chunks allowed in flight now: the smallest window any worker's pressure allows."""
        return min((window_size(base, e.new, paused=bool(e.paused), threads=self._threads)
                    for e in self._live()), default=base)

    def tick(self, progress: Progress | None = None) -> None:
        """Show the worst level in the progress line."""
        self.level = max((e.new for e in self._live()), default=PressureLevel.NORMAL)
        if progress is not None:
            progress.update(pressure=self.level.name)

    def _live(self) -> list[PressureEvent]:
        cutoff = time.monotonic() - STALE_S
        with self._lock:
            return [e for w, e in self._workers.items() if self._heard.get(w, 0.0) >= cutoff]

    def detach(self, client: Client) -> None:
        """Stop the pushes (before the client closes, also when a run is interrupted: the
        scheduler would otherwise send to a closing client)."""
        # Distributed keeps calling a handler for what was already on its way.
        self._detached = True
        for topic in self._handlers():
            try:
                client.unsubscribe_topic(topic)
            except Exception:  # not subscribed, or the client is closing already
                pass

    # --- end of run ------------------------------------------------------------------------------
    def collect(self, client: Client) -> None:
        """The plugins' counters per worker, the last memory points, records still in flight."""
        per_worker = self._memory_now(client)  # also the timeline's last point
        self._counters(per_worker)
        expected = {addr: sum(1 for c in info.get("level_changes") or ()
                              if float(c["time"]) >= self.report.started)
                    for addr, info in per_worker.items()}
        deadline = time.monotonic() + _FLUSH_S
        while not self._has(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
            self._backfill(client, (events.EVENT_TOPIC,))
        self._backfill(client, (events.MEMORY_TOPIC, events.STALL_TOPIC))
        self.detach(client)
        with self._lock:
            self.report.pressure_events.sort(key=lambda e: e.time)
            self.report.memory_timeline.sort(key=lambda p: p.time)

    def finish(self, per_worker: dict[str, dict[str, Any]]) -> None:
        """`collect` for a job run in this process: ``per_worker`` is its pressure state
        (`pipeline.pressure.local.LocalPressure.state`); then `detach`."""
        for info in per_worker.values():
            if info.get("memory"):
                self._on_memory((time.time(), info["memory"]))
        self._counters(per_worker)
        self._detached = True
        with self._lock:
            self.report.pressure_events.sort(key=lambda e: e.time)
            self.report.memory_timeline.sort(key=lambda p: p.time)

    def _counters(self, per_worker: dict[str, dict[str, Any]]) -> None:
        for addr, info in per_worker.items():
            self.report.pressure[addr] = _small(info)
        self.report.pauses = sum(int(i.get("pauses", 0) or 0) for i in per_worker.values())
        self.report.spilled_bytes = sum(int(i.get("dask_disk_write_bytes_total", 0) or 0)
                                        for i in per_worker.values())

    def _has(self, expected: dict[str, int]) -> bool:
        with self._lock:
            got: dict[str, int] = {}
            for e in self.report.pressure_events:
                got[e.worker] = got.get(e.worker, 0) + 1
        return all(got.get(addr, 0) >= n for addr, n in expected.items())

    # --- records ---------------------------------------------------------------------------------
    def _handlers(self) -> dict[str, Callable[[tuple[float, Any]], None]]:
        return {events.EVENT_TOPIC: self._on_event, events.MEMORY_TOPIC: self._on_memory,
                events.STALL_TOPIC: self._on_stall, PROGRESS_TOPIC: self._on_progress}

    def _backfill(self, client: Client, topics: tuple[str, ...]) -> None:
        handlers = self._handlers()
        for topic in topics:
            try:
                history = client.get_events(topic)
            except Exception:  # scheduler busy or gone: the pushed records still count
                continue
            for event in history:
                handlers[topic](event)

    def _new(self, key: tuple[Any, ...], when: float) -> bool:
        """True the first time a record is seen, and only for records of this run."""
        if self._detached or when < self.report.started or key in self._seen:
            return False
        self._seen.add(key)
        return True

    def _on_event(self, event: tuple[float, Any]) -> None:
        e = PressureEvent.from_dict(event[1])
        with self._lock:
            if not self._new(("event", e.worker, e.time, e.new, e.paused), e.time):
                return
            self.report.pressure_events.append(e)
            self._heard[e.worker] = time.monotonic()
            current = self._workers.get(e.worker)
            if current is None or e.time >= current.time:  # history may arrive after pushes
                self._workers[e.worker] = e

    def _on_memory(self, event: tuple[float, Any]) -> None:
        point = events.MemoryPoint.from_dict(event[1])
        with self._lock:
            if self._new(("memory", point.worker, point.time), point.time):
                self.report.memory_timeline.append(point)
                self._heard[point.worker] = time.monotonic()

    def _on_progress(self, event: tuple[float, Any]) -> None:
        progress = self.progress
        if progress is None or self._detached:
            return
        p = ChunkProgress.from_dict(event[1])
        if p.run == self.report.run_id:  # an external scheduler may run other jobs too
            progress.live(p.chunk, p.started, p.bytes, p.rows, p.rejected)

    def _on_stall(self, event: tuple[float, Any]) -> None:
        warning = events.StallWarning.from_dict(event[1])
        with self._lock:
            if not self._new(("stall", warning.worker, warning.time), warning.time):
                return
            self.report.notes.append(str(warning))
        log.warning("chunkmill: %s", warning)


def _small(info: dict[str, Any]) -> dict[str, Any]:
    """The counters of the plugin's state that belong in a run report (no long lists)."""
    return {k: v for k, v in info.items() if not isinstance(v, list | dict)}

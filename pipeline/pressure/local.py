"""Memory pressure for a job run in this process (a small job, `pipeline.execution.local`):
the pressure plugin's sampling and decisions without a Dask worker.

This module covers the same monitor (`MemoryPressureMonitor`) and policy (`PressurePolicy`) as
the plugin, and the same records (`PressureEvent`, `MemoryPoint`, `StallWarning`), handed to
the client's watch as a worker would push them, so the run report and its plots are alike on
both paths. "Paused" stops submission (a paused worker's window is zero, see
`pipeline.pressure.window`); running chunks finish, as on a paused Dask worker. It does not
cover spilling: tasks return manifests, so there is no Dask data to spill; at ELEVATED and
above Arrow's cached pages and the readers' idle buffers go back to the OS. Arrow's default
pool is jemalloc for the whole run, as the plugin makes it (`pipeline.runner.Runner.run`
switches it). See also `pipeline.pressure.plugin`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil

from pipeline import config
from pipeline.pressure.actions import (
    ARROW_RELEASE_S,
    release_arrow_memory,
    sampling_interval,
    top_processes,
)
from pipeline.pressure.arrow_pool import default_pool_name
from pipeline.pressure.events import (
    EVENT_TOPIC,
    MEMORY_TOPIC,
    STALL_TOPIC,
    MemoryPoint,
    PressureEvent,
    PressureLevel,
    StallWarning,
)
from pipeline.pressure.monitor import MemoryPressureMonitor, MemorySample, read_memory_usage
from pipeline.pressure.policy import PressurePolicy

Publish = Callable[[str, dict[str, Any]], None]
"""``publish(topic, record.asdict())``: where a worker would ``log_event``."""


class LocalPressure:
    """Samples this process's machine at the plugin's pace; call `tick` often (it samples
    only when the interval for the current level has passed) and `state` at the end."""

    def __init__(self, worker: str, publish: Publish) -> None:
        self.worker = worker
        self.publish = publish
        limit = config.get("pressure.limit")
        self.limit_bytes = config.parse_size(limit) if limit else None
        self.interval = float(config.get("pressure.interval"))
        self.stall_warning = config.parse_seconds(config.get("pressure.stall-warning"))
        self.policy = PressurePolicy(float(config.get("pressure.cooldown")),
                                     float(config.get("pressure.pause-headroom")))
        self.monitor = MemoryPressureMonitor(read_memory=self._read)
        self.paused = False
        self.counters: dict[str, Any] = dict.fromkeys(
            ("pauses", "resumes", "arrow_releases", "critical_events", "stall_warnings",
             "samples"), 0)
        self.changes: list[PressureEvent] = []
        self._process = psutil.Process()
        self._next_sample = float("-inf")
        self._last_point = float("-inf")
        self._last_release = float("-inf")
        self._paused_since: float | None = None
        self._next_stall = 0.0

    def _read(self) -> tuple[int, int, int]:
        used, limit = read_memory_usage()
        if self.limit_bytes is not None:
            limit = self.limit_bytes
        return used, limit, self._process.memory_info().rss

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next_sample:
            return
        sample = self.monitor.snapshot()
        self.counters["samples"] += 1
        old = self.policy.level
        new = self.policy.next_level(sample.level, now)
        was = self.paused
        self.paused = self.policy.pause(sample, self.paused, now)
        if self.paused and not was:
            self.counters["pauses"] += 1
            self._paused_since, self._next_stall = now, self.stall_warning
        elif was and not self.paused:
            self.counters["resumes"] += 1
            self._paused_since = None
        if new != old or self.paused != was:
            event = PressureEvent(sample.time, self.worker, old, new, float(sample.fraction),
                                  int(sample.used_bytes), int(sample.limit_bytes), self.paused)
            self.changes.append(event)
            if new == PressureLevel.CRITICAL != old:
                self.counters["critical_events"] += 1
            self.publish(EVENT_TOPIC, event.asdict())
        if new >= PressureLevel.ELEVATED and (new > old
                                              or now - self._last_release >= ARROW_RELEASE_S):
            release_arrow_memory(self.counters)
            self._last_release = now
        if now - self._last_point >= self.interval:
            self._last_point = now
            self.publish(MEMORY_TOPIC, self._point(sample).asdict())
        if (self._paused_since is not None and self.stall_warning > 0
                and now - self._paused_since >= self._next_stall):
            self._next_stall *= 2
            self.counters["stall_warnings"] += 1
            warning = StallWarning(sample.time, self.worker, new, now - self._paused_since,
                                   float(sample.fraction), int(sample.used_bytes),
                                   int(sample.limit_bytes), sample.process_bytes,
                                   top_processes())
            self.publish(STALL_TOPIC, warning.asdict())
        self._next_sample = now + sampling_interval(new, self.interval)

    def _point(self, sample: MemorySample) -> MemoryPoint:
        rss = int(sample.process_bytes or 0)
        return MemoryPoint(sample.time, self.worker, rss,
                           rss / sample.limit_bytes if sample.limit_bytes else None,
                           self.policy.level, float(sample.fraction))

    def state(self) -> dict[str, Any]:
        """What `pipeline.pressure.plugin.pressure_state` says of a worker: counters, level
        changes, and the memory now (the timeline's last point)."""
        used, limit, process = self._read()
        fraction = used / limit if limit > 0 else 1.0
        now = MemorySample(time.time(), used, limit, fraction, self.monitor.level, process)
        return {"installed": True, "worker": self.worker, "level": self.policy.level.name,
                "level_value": int(self.policy.level),
                "observed_level": self.monitor.level.name, "fraction": fraction,
                "used_bytes": used, "limit_bytes": limit, "paused_by_plugin": self.paused,
                "status": "paused" if self.paused else "running", **self.counters,
                "level_changes": [e.asdict() for e in self.changes],
                "arrow_pool": default_pool_name(), "memory": self._point(now).asdict()}


__all__ = ["LocalPressure"]

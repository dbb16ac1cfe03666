"""The client's view of the cluster during a run: memory, pressure level, submission window.

Polls the scheduler (at most every ``interval`` seconds) for each worker's memory and the
pressure level the `pipeline.pressure.plugin` reports as a worker metric, records a memory
timeline and level changes into the run report, and shrinks the window of chunks in flight
as pressure rises (CRITICAL stops submission until it eases).
"""

from __future__ import annotations

import time
from typing import Any

from distributed import Client

from pipeline.pressure.monitor import PressureLevel
from pipeline.pressure.plugin import METRIC_LEVEL
from pipeline.pressure.window import InflightWindow
from pipeline.report.progress import Progress
from pipeline.report.run_report import RunReport

LEVELS = tuple(level.name for level in PressureLevel)


class ClusterWatch:
    """Samples the cluster for one run; cheap enough to call on every loop turn."""

    def __init__(self, report: RunReport, interval: float = 0.5) -> None:
        self.report = report
        self.interval = interval
        self.level = 0
        self._last = 0.0
        self._levels: dict[str, int] = {}
        self._spilled: dict[str, int] = {}

    def window(self, base: int) -> int:
        """Chunks allowed in flight now: the base window scaled down by the pressure level."""
        return InflightWindow.size_for(base, PressureLevel(self.level))

    def collect(self, client: Client) -> None:
        """At the end of a run: the plugin's own counters (pauses, evictions) per worker."""
        from pipeline.pressure.plugin import pressure_events

        try:
            per_worker = client.run(pressure_events)
        except Exception:  # a worker that left, or a cluster without the plugin
            return
        for addr, info in per_worker.items():
            self.report.pressure[addr] = _small(info)
        self.report.pauses = sum(int(i.get("pauses", 0) or 0) for i in per_worker.values())
        # The plugins' own histories are exact; polling heartbeats misses a level that came
        # and went between two polls (a pause still counted in ``pauses``).
        # Polled events stay only for workers that are gone (their histories went with them).
        exact = [{"time": c["time"], "worker": addr, "old": c["from"], "new": c["to"]}
                 for addr, info in per_worker.items() for c in info.get("level_changes") or ()]
        polled = [e for e in self.report.pressure_events if e["worker"] not in per_worker]
        self.report.pressure_events = sorted(polled + exact, key=lambda e: e["time"])
        spilled = sum(int(i.get("dask_disk_write_bytes_total", 0) or 0)
                      for i in per_worker.values())
        self.report.spilled_bytes = max(self.report.spilled_bytes, spilled)

    def poll(self, client: Client, progress: Progress | None = None) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        try:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # scheduler busy or reconnecting: keep the last known level
            return
        stamp = time.time()
        highest = 0
        for addr, info in workers.items():
            metrics: dict[str, Any] = info.get("metrics", {})
            level = int(metrics.get(METRIC_LEVEL, 0) or 0)
            level = min(max(level, 0), len(LEVELS) - 1)
            highest = max(highest, level)
            limit = info.get("memory_limit") or 0
            memory = int(metrics.get("memory", 0) or 0)
            self.report.memory_timeline.append({
                "time": stamp, "worker": addr, "memory_bytes": memory,
                "memory_fraction": round(memory / limit, 4) if limit else None,
                "level": LEVELS[level]})
            if self._levels.get(addr, 0) != level:
                self.report.pressure_events.append({
                    "time": stamp, "worker": addr, "old": LEVELS[self._levels.get(addr, 0)],
                    "new": LEVELS[level]})
                self._levels[addr] = level
            spilled = metrics.get("spilled_bytes", {})
            if isinstance(spilled, dict):
                self._spilled[addr] = int(spilled.get("disk", 0) or 0)
        self.report.spilled_bytes = sum(self._spilled.values())
        self.level = highest
        if progress is not None:
            progress.update(pressure=LEVELS[highest])


def _small(info: dict[str, Any]) -> dict[str, Any]:
    """The counters of the plugin's report that belong in a run report (no long lists)."""
    return {k: v for k, v in info.items() if not isinstance(v, list | dict) or k == "spilled"}

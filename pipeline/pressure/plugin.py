"""Worker plugin that reacts to memory pressure before Dask's own last resorts.

Dask's defaults spill at 70 % of the worker limit, pause at 80 % and kill at 95 %, all
measured on the worker process alone, and keep up to 60 % of the limit as managed data
whatever the process already uses. Fast chunk tasks (Arrow buffers, decompression) and
other processes in the same container can go from "fine" to "killed" between two
samples, so this plugin acts in steps driven by
:class:`~pipeline.pressure.MemoryPressureMonitor`:

========== ============================================================================
always     cap the SpillBuffer target (``worker.data.n``) so that unmanaged memory
           plus managed data stays under the ELEVATED line; zict enforces it on every
           insert, so no sampling race is involved (only with a worker memory limit).
ELEVATED   spill earlier: halve the spill target and the memory manager's target
           fraction, evict until the fast store fits, return Arrow's cached free pages
           to the OS (at most once a second), sample every 100 ms.
HIGH       evict down to 10 % of the original target, ``gc.collect()`` once, pause the
           worker (running tasks finish, no new ones start).
CRITICAL   as HIGH, evict everything evictable; the ``chunkmill-pressure`` event it
           logs tells clients to stop submitting (see :mod:`pipeline.pressure.window`).
lower      after ``cooldown`` seconds below the current level: restore the lower
           level's settings (NORMAL: the originals); resume once below HIGH.
========== ============================================================================

Every level change is logged as a ``chunkmill-pressure`` event. Dask's spill and
terminate stay active; only Dask's pause is disabled, because its monitor would
otherwise un-pause a worker this plugin paused about 100 ms later.

The reactions themselves are in :mod:`pipeline.pressure.actions`; this module decides
when to apply them. Install with ``client.register_plugin(PressurePlugin())``; inspect with
``client.run(pressure_events)``.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin
from distributed.core import Status
from tornado.ioloop import PeriodicCallback

from pipeline.pressure.actions import (
    ARROW_RELEASE_S,
    DEFAULT_SPILL_FACTORS,
    EVENT_TOPIC,
    evict_to_target,
    is_spillable,
    log_pressure_event,
    pause_worker,
    release_arrow_memory,
    resume_worker,
    sampling_interval,
    set_spill_target,
    set_target_fraction,
)
from pipeline.pressure.arrow_pool import (
    default_pool_name,
    restore_default_pool,
    switch_default_pool,
)
from pipeline.pressure.gauges import expose_worker_gauges, remove_worker_gauges
from pipeline.pressure.monitor import (
    MemoryPressureMonitor,
    MemoryReader,
    MemorySample,
    PressureLevel,
    PressureThresholds,
    default_interval,
    read_memory_usage,
)

if TYPE_CHECKING:
    from distributed import Worker

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SPILL_FACTORS",
    "EVENT_TOPIC",
    "METRIC_LEVEL",
    "METRIC_PERCENT",
    "PLUGIN_NAME",
    "PressurePlugin",
    "pressure_events",
]

PLUGIN_NAME = "chunkmill-pressure"
METRIC_LEVEL = "chunkmill_pressure_level"
METRIC_PERCENT = "chunkmill_memory_percent"


# ------------------------------------------------------------------------ plugin
class PressurePlugin(WorkerPlugin):
    """Memory-pressure reactions on every worker.

    Parameters
    ----------
    thresholds
        Level thresholds; default from ``chunkmill.pressure.*`` config of the process
        that constructs the plugin (normally the client).
    interval
        Seconds between samples at NORMAL; default ``chunkmill.pressure.interval`` or
        0.5. At ELEVATED and above the plugin samples every 0.1 s.
    limit_bytes
        Memory budget for the machine-wide reading (host RAM or cgroup usage). Default
        :data:`distributed.system.MEMORY_LIMIT`. Independently of this, if the worker
        has a memory limit, the worker's own RSS is compared against it; the level is
        the worse of the two, because a container OOM kill does not care which process
        owns the memory.
    read_memory
        Replaces both readings: a picklable callable returning used bytes or
        ``(used, limit)`` (for tests). Its limit is overridden by ``limit_bytes`` and
        defaults to the worker's memory limit. Disables the headroom cap, which needs
        real process memory.
    watch_system
        Set False to watch only the worker process (needs a worker memory limit).
    spill_factors
        Per-level multipliers of the original spill target; see
        :data:`DEFAULT_SPILL_FACTORS`.
    cooldown
        Seconds usage must stay below the current level before the plugin steps down
        (and resumes). Rising is always immediate. Without it, spilling everything
        at ELEVATED drops usage at once, the original target is restored, the store
        refills and the worker oscillates between levels every few hundred ms.
    headroom_cap
        Cap the spill target at ``elevated * memory_limit - unmanaged memory`` (see
        module docs). Dask's fixed 60 % target ignores what the process already uses:
        a 400 MB worker with 150 MB of imports and allocator caches could hold 240 MB
        of data and cross the 95 % kill line with the next result.
    replace
        By default re-registering is a no-op when the plugin is already installed
        (``idempotent``), so repeated runs against a long-lived cluster keep counters;
        pass True to replace the installed plugin with new settings.
    history
        Samples kept by each worker's monitor.
    arrow_pool
        Arrow memory pool to make the worker's default ("jemalloc", "mimalloc",
        "system"), or None to leave it alone. Default "jemalloc": Arrow's default
        mimalloc pool keeps freed pages per thread and ``release_unused()`` only purges
        the calling thread's heap, so retained pages pile up as unmanaged memory until
        the nanny kills the worker; jemalloc decays them and purges every arena. Not
        applied when ``ARROW_DEFAULT_MEMORY_POOL`` is set (the user chose) or the pool
        is not built into this pyarrow.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(
        self,
        thresholds: PressureThresholds | None = None,
        interval: float | None = None,
        limit_bytes: int | None = None,
        read_memory: MemoryReader | None = None,
        *,
        watch_system: bool = True,
        spill_factors: Mapping[PressureLevel, float] | None = None,
        cooldown: float = 1.0,
        headroom_cap: bool = True,
        replace: bool = False,
        history: int = 600,
        arrow_pool: str | None = "jemalloc",
    ) -> None:
        self.thresholds = thresholds if thresholds is not None else PressureThresholds()
        self.interval = float(interval if interval is not None else default_interval())
        if self.interval <= 0:
            raise ValueError(f"interval must be positive; got {self.interval}")
        if cooldown < 0:
            raise ValueError(f"cooldown must be >= 0; got {cooldown}")
        self.limit_bytes = int(limit_bytes) if limit_bytes is not None else None
        self.read_memory = read_memory
        self.watch_system = watch_system
        factors = dict(DEFAULT_SPILL_FACTORS)
        factors.update({PressureLevel(k): float(v) for k, v in (spill_factors or {}).items()})
        self.spill_factors = factors
        self.cooldown = float(cooldown)
        self.headroom_cap = headroom_cap
        self.idempotent = not replace
        self.history = history
        self.arrow_pool = arrow_pool
        self._reset_runtime()

    _CONFIG_FIELDS = (
        "thresholds",
        "interval",
        "limit_bytes",
        "read_memory",
        "watch_system",
        "spill_factors",
        "cooldown",
        "headroom_cap",
        "idempotent",
        "history",
        "arrow_pool",
    )

    def _reset_runtime(self) -> None:
        self._worker: Worker | None = None
        self._monitor: MemoryPressureMonitor | None = None
        self._pc: PeriodicCallback | None = None
        self._busy = False
        self._applied = PressureLevel.NORMAL
        self._below_since: float | None = None
        self._last_release = float("-inf")
        self._last_error_log = float("-inf")
        self._paused_by_plugin = False
        self._original: dict[str, Any] = {}
        self._counters: dict[str, Any] = {}
        self._changes: deque[dict[str, Any]] = deque(maxlen=1000)
        self._replaced_pool: Any = None
        self._our_pool: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Only configuration travels; runtime state (worker, callbacks) is per process.
        return {k: self.__dict__[k] for k in self._CONFIG_FIELDS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    def __repr__(self) -> str:
        level = self._applied.name if self._worker is not None else "not installed"
        return (
            f"<PressurePlugin {level} interval={self.interval:g}s "
            f"limit_bytes={self.limit_bytes} thresholds={self.thresholds}>"
        )

    @property
    def level(self) -> PressureLevel:
        """Level the plugin currently acts on (the monitor's, delayed by ``cooldown``)."""
        return self._applied

    # ------------------------------------------------------------------ lifecycle
    async def setup(self, worker: Worker) -> None:
        """Disable Dask's pause, start sampling, register metrics and gauges."""
        self._reset_runtime()
        self._worker = worker
        mm = worker.memory_manager
        data = worker.data
        self._original = {
            "memory_pause_fraction": mm.memory_pause_fraction,
            "memory_target_fraction": mm.memory_target_fraction,
            "data_n": data.n if is_spillable(data) else None,
        }
        self._counters = {
            "pauses": 0,
            "resumes": 0,
            "evictions": 0,
            "evicted_bytes": 0,
            "evict_failures": 0,
            "arrow_releases": 0,
            "critical_events": 0,
            "samples": 0,
            "tick_errors": 0,
            "min_spill_target_bytes": self._original["data_n"],
        }
        # Dask would resume a worker we paused as soon as *its* process-only reading
        # is under 80 %, so its pause is switched off; spill and terminate stay.
        mm.memory_pause_fraction = False
        if worker.status == Status.paused and self._original["memory_pause_fraction"]:
            # Paused by Dask's memory monitor before we took over: nobody else would
            # ever resume it now, so the plugin adopts that pause.
            self._paused_by_plugin = True

        switched = switch_default_pool(self.arrow_pool)
        if switched is not None:
            self._replaced_pool, self._our_pool = switched

        self._monitor = MemoryPressureMonitor(
            thresholds=self.thresholds,
            interval=self.interval,
            history=self.history,
            read_memory=self._make_reader(worker),
        )
        self._monitor.snapshot()

        worker.metrics[METRIC_LEVEL] = self._metric_level
        worker.metrics[METRIC_PERCENT] = self._metric_percent
        expose_worker_gauges(worker.address, lambda: float(self._applied), self._current_fraction)

        self._pc = PeriodicCallback(self._tick, self.interval * 1000)
        worker.periodic_callbacks[PLUGIN_NAME] = self._pc
        self._pc.start()
        # Act on the memory as it is now, before the first chunk runs: a job started on a
        # machine already under pressure must not run unchecked until the first interval.
        await self._tick()

    def teardown(self, worker: Worker) -> None:
        """Stop sampling, restore Dask's settings and resume a worker we paused."""
        if self._pc is not None:
            self._pc.stop()
        if worker.periodic_callbacks.get(PLUGIN_NAME) is self._pc:
            del worker.periodic_callbacks[PLUGIN_NAME]
        self._pc = None

        if self._original:
            mm = worker.memory_manager
            mm.memory_pause_fraction = self._original["memory_pause_fraction"]
            mm.memory_target_fraction = self._original["memory_target_fraction"]
            if self._original["data_n"] is not None and is_spillable(worker.data):
                worker.data.n = self._original["data_n"]
        if self._replaced_pool is not None:
            restore_default_pool(self._replaced_pool, self._our_pool)
            self._replaced_pool = self._our_pool = None
        # Only a paused worker is resumed: during close the status is "closing".
        if self._paused_by_plugin and worker.status == Status.paused:
            worker.status = Status.running
        self._paused_by_plugin = False

        for key, fn in (
            (METRIC_LEVEL, self._metric_level),
            (METRIC_PERCENT, self._metric_percent),
        ):
            if worker.metrics.get(key) == fn:
                del worker.metrics[key]
        remove_worker_gauges(worker.address)
        self._applied = PressureLevel.NORMAL
        self._worker = None

    # ------------------------------------------------------------------ sampling
    def _make_reader(self, worker: Worker) -> MemoryReader:
        worker_limit = worker.memory_manager.memory_limit
        custom = self.read_memory
        explicit = self.limit_bytes

        if custom is not None:

            def read_custom() -> tuple[int, int]:
                value = custom()
                used, limit = value if isinstance(value, tuple) else (value, None)
                if explicit is not None:
                    limit = explicit
                elif limit is None:
                    limit = worker_limit or read_memory_usage()[1]
                return int(used), int(limit)

            return read_custom

        watch_system = self.watch_system or not worker_limit

        def read_default() -> tuple[int, int]:
            readings: list[tuple[int, int]] = []
            if worker_limit:
                readings.append((worker.monitor.get_process_memory(), worker_limit))
            if watch_system:
                used, limit = read_memory_usage()
                readings.append((used, explicit if explicit is not None else limit))
            return max(readings, key=lambda r: r[0] / r[1] if r[1] > 0 else float("inf"))

        return read_default

    def _metric_level(self, worker: Worker) -> int:
        return int(self._applied)

    def _metric_percent(self, worker: Worker) -> float:
        return round(100.0 * self._current_fraction(), 2)

    def _current_fraction(self) -> float:
        last = self._monitor.last if self._monitor else None
        return last.fraction if last else 0.0

    async def _tick(self) -> None:
        # Tornado awaits us before rescheduling, but a manual call could overlap.
        if self._busy or self._monitor is None or self._worker is None:
            return
        self._busy = True
        try:
            sample = self._monitor.snapshot()
            self._counters["samples"] += 1
            old = self._applied
            new = self._decide(sample.level)
            if new != old:
                self._on_level_change(old, new, sample)
            set_spill_target(
                self._worker,
                self._original.get("data_n"),
                self.spill_factors.get(self._applied, 1.0),
                elevated=self.thresholds.elevated,
                headroom_cap=self.headroom_cap and self.read_memory is None,
                counters=self._counters,
            )
            if new >= PressureLevel.ELEVATED:
                # Repeated on every tick while under pressure: a value larger than
                # the shrunken target, or one that failed to spill last time, may
                # still sit in the fast store. A no-op when it already fits.
                evicted = await evict_to_target(
                    self._worker, self._counters, lambda: self._worker is None
                )
                if new >= PressureLevel.HIGH > old:
                    # Spilled objects may sit in reference cycles; collect once per
                    # episode rather than every tick, as gc blocks the event loop.
                    gc.collect()
                now = time.monotonic()
                if new > old or evicted or now - self._last_release >= ARROW_RELEASE_S:
                    release_arrow_memory(self._counters)
                    self._last_release = now
        except Exception:
            # At 10 samples/s a persistent failure would flood the worker log: keep
            # the first traceback, then one line a minute with the running count.
            self._counters["tick_errors"] = self._counters.get("tick_errors", 0) + 1
            now = time.monotonic()
            if now - self._last_error_log >= 60:
                logger.exception(
                    "chunkmill pressure plugin tick failed (%d so far)",
                    self._counters["tick_errors"],
                )
                self._last_error_log = now
        finally:
            self._busy = False

    def _decide(self, observed: PressureLevel) -> PressureLevel:
        """Rise at once; step down only after ``cooldown`` seconds below."""
        if observed >= self._applied:
            self._below_since = None
            return observed
        now = time.monotonic()
        if self._below_since is None:
            self._below_since = now
        if now - self._below_since >= self.cooldown:
            self._below_since = None
            return observed
        return self._applied

    # ------------------------------------------------------------- level changes
    def _on_level_change(
        self, old: PressureLevel, new: PressureLevel, sample: MemorySample
    ) -> None:
        worker = self._worker
        assert worker is not None
        self._applied = new
        self._changes.append(
            {
                "time": sample.time,
                "from": old.name,
                "to": new.name,
                "fraction": sample.fraction,
                "used_bytes": sample.used_bytes,
                "limit_bytes": sample.limit_bytes,
            }
        )
        logger.info(
            "Memory pressure %s -> %s (%.0f%% of %d bytes)",
            old.name,
            new.name,
            sample.fraction * 100,
            sample.limit_bytes,
        )
        if self._pc is not None:
            self._pc.callback_time = sampling_interval(new, self.interval) * 1000
        set_target_fraction(
            worker,
            self._original.get("memory_target_fraction"),
            self.spill_factors.get(new, 1.0),
        )
        if new >= PressureLevel.HIGH:
            if pause_worker(worker, self._counters):
                self._paused_by_plugin = True
        elif self._paused_by_plugin:
            resume_worker(worker, self._counters)
            self._paused_by_plugin = False
        log_pressure_event(worker, old, new, sample, self._counters)

    # ------------------------------------------------------------------ reporting
    def events(self) -> dict[str, Any]:
        """Counters and level history of this worker's plugin instance."""
        worker = self._worker
        monitor = self._monitor
        last = monitor.last if monitor else None
        out: dict[str, Any] = {
            "installed": worker is not None,
            "worker": worker.address if worker else None,
            "level": self._applied.name,
            "level_value": int(self._applied),
            "observed_level": monitor.level.name if monitor else None,
            "fraction": last.fraction if last else None,
            "used_bytes": last.used_bytes if last else None,
            "limit_bytes": last.limit_bytes if last else None,
            "paused_by_plugin": self._paused_by_plugin,
            "status": worker.status.name if worker else None,
            **self._counters,
            "level_changes": list(self._changes),
            "original_settings": dict(self._original),
            "arrow_pool": default_pool_name(),
        }
        if worker is not None and is_spillable(worker.data):
            data = worker.data
            out["spill_target_bytes"] = data.n
            out["fast_bytes"] = data.fast.total_weight
            spilled = getattr(data, "spilled_total", None)
            out["dask_spilled_bytes_now"] = int(spilled.memory) if spilled else 0
            metrics = getattr(data, "cumulative_metrics", {})
            out["dask_disk_write_bytes_total"] = int(metrics.get(("disk-write", "bytes"), 0))
            out["dask_disk_write_count_total"] = int(metrics.get(("disk-write", "count"), 0))
        return out


def pressure_events(dask_worker: Worker) -> dict[str, Any]:
    """Counters of the pressure plugin on ``dask_worker``; use ``client.run(pressure_events)``.

    Returns ``{"installed": False, "worker": address}`` when the plugin is not installed.
    """
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, PressurePlugin):
        return {"installed": False, "worker": dask_worker.address}
    return plugin.events()

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
           logs tells clients to stop submitting (see :mod:`pipeline.backpressure`).
lower      after ``cooldown`` seconds below the current level: restore the lower
           level's settings (NORMAL: the originals); resume once below HIGH.
========== ============================================================================

Every level change is logged as a ``chunkmill-pressure`` event. Dask's spill and
terminate stay active; only Dask's pause is disabled, because its monitor would
otherwise un-pause a worker this plugin paused about 100 ms later.

Install with ``client.register_plugin(PressurePlugin())``; inspect with
``client.run(pressure_events)``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin
from distributed.core import Status
from tornado.ioloop import PeriodicCallback

from pipeline.pressure import (
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
EVENT_TOPIC = "chunkmill-pressure"
METRIC_LEVEL = "chunkmill_pressure_level"
METRIC_PERCENT = "chunkmill_memory_percent"

#: Multiplier applied to the original SpillBuffer target and target fraction per level.
DEFAULT_SPILL_FACTORS: Mapping[PressureLevel, float] = {
    PressureLevel.NORMAL: 1.0,
    PressureLevel.ELEVATED: 0.5,
    PressureLevel.HIGH: 0.1,
    PressureLevel.CRITICAL: 0.0,
}

# Dask treats a target fraction of 0 as "unset" and falls back to the spill fraction,
# so the lowest target we hand it is this small positive number instead.
_MIN_TARGET_FRACTION = 0.01
# Yield to the event loop this often while evicting so heartbeats and comms keep going.
_EVICT_YIELD_S = 0.05
# While under pressure, hand Arrow's cached free pages back at most this often: they
# show up as "unmanaged" RSS (100+ MB after spilling a few tables) and can keep a
# worker above a threshold with nothing left to spill.
_ARROW_RELEASE_S = 1.0
# Sampling interval while at ELEVATED or above: as often as the nanny checks for its
# 95 % kill line, since RSS can climb from 80 % to 95 % within one default interval.
_PRESSURE_INTERVAL = 0.1

# --------------------------------------------------------------------- prometheus
_prom_lock = threading.Lock()
_prom_gauges: dict[str, Any] | None = None


def _prometheus_gauges() -> dict[str, Any]:
    """Process-wide gauges, created once.

    Several workers can share a process (``processes=False``) and a plugin can be
    re-registered, so the gauges carry a ``worker`` label and are registered only once;
    prometheus_client raises on a duplicate name.
    """
    global _prom_gauges
    with _prom_lock:
        if _prom_gauges is not None:
            return _prom_gauges
        try:
            import prometheus_client
        except ImportError:
            _prom_gauges = {}
            return _prom_gauges
        gauges: dict[str, Any] = {}
        specs = {
            "chunkmill_pressure_level": "chunkmill memory pressure level acted on "
            "(0 normal, 1 elevated, 2 high, 3 critical)",
            "chunkmill_memory_fraction": "Memory used / budget as seen by the chunkmill "
            "pressure plugin",
        }
        for name, doc in specs.items():
            try:
                gauges[name] = prometheus_client.Gauge(name, doc, labelnames=["worker"])
            except ValueError:
                # Already registered, e.g. this module was loaded twice under
                # different names (cloudpickle by value): reuse the existing one.
                existing = getattr(prometheus_client.REGISTRY, "_names_to_collectors", {})
                if name in existing:
                    gauges[name] = existing[name]
        _prom_gauges = gauges
        return gauges


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
    def setup(self, worker: Worker) -> None:
        """Disable Dask's pause, start sampling, register metrics and gauges."""
        self._reset_runtime()
        self._worker = worker
        mm = worker.memory_manager
        data = worker.data
        self._original = {
            "memory_pause_fraction": mm.memory_pause_fraction,
            "memory_target_fraction": mm.memory_target_fraction,
            "data_n": data.n if _is_spillable(data) else None,
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

        self._switch_arrow_pool()

        self._monitor = MemoryPressureMonitor(
            thresholds=self.thresholds,
            interval=self.interval,
            history=self.history,
            read_memory=self._make_reader(worker),
        )
        self._monitor.snapshot()

        worker.metrics[METRIC_LEVEL] = self._metric_level
        worker.metrics[METRIC_PERCENT] = self._metric_percent
        gauges = _prometheus_gauges()
        if "chunkmill_pressure_level" in gauges:
            gauges["chunkmill_pressure_level"].labels(worker=worker.address).set_function(
                lambda: float(self._applied)
            )
        if "chunkmill_memory_fraction" in gauges:
            gauges["chunkmill_memory_fraction"].labels(worker=worker.address).set_function(
                self._current_fraction
            )

        self._pc = PeriodicCallback(self._tick, self.interval * 1000)
        worker.periodic_callbacks[PLUGIN_NAME] = self._pc
        self._pc.start()

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
            if self._original["data_n"] is not None and _is_spillable(worker.data):
                worker.data.n = self._original["data_n"]
        self._restore_arrow_pool()
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
        for gauge in _prometheus_gauges().values():
            try:
                gauge.remove(worker.address)
            except KeyError:
                pass
        self._applied = PressureLevel.NORMAL
        self._worker = None

    def _switch_arrow_pool(self) -> None:
        if not self.arrow_pool or os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
            return
        try:
            import pyarrow as pa

            current = pa.default_memory_pool()
            if current.backend_name == self.arrow_pool:
                return
            pool = getattr(pa, f"{self.arrow_pool}_memory_pool")()
            # Buffers remember the pool they came from, so switching is safe with
            # live data: old buffers are still freed by the old pool.
            pa.set_memory_pool(pool)
        except (ImportError, AttributeError, NotImplementedError) as exc:
            logger.info("Arrow memory pool %r not available: %s", self.arrow_pool, exc)
            return
        self._replaced_pool, self._our_pool = current, pool

    def _restore_arrow_pool(self) -> None:
        if self._replaced_pool is None:
            return
        import pyarrow as pa

        # The pool is process-wide: leave it alone if someone switched it since.
        if pa.default_memory_pool().backend_name == self._our_pool.backend_name:
            pa.set_memory_pool(self._replaced_pool)
        self._replaced_pool = self._our_pool = None

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
            self._set_spill_target()
            if new >= PressureLevel.ELEVATED:
                # Repeated on every tick while under pressure: a value larger than
                # the shrunken target, or one that failed to spill last time, may
                # still sit in the fast store. A no-op when it already fits.
                evicted = await self._evict_to_target()
                if new >= PressureLevel.HIGH > old:
                    # Spilled objects may sit in reference cycles; collect once per
                    # episode rather than every tick, as gc blocks the event loop.
                    gc.collect()
                now = time.monotonic()
                if new > old or evicted or now - self._last_release >= _ARROW_RELEASE_S:
                    self._release_arrow()
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

    # ------------------------------------------------------------------- actions
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
            fast = new >= PressureLevel.ELEVATED
            interval = min(self.interval, _PRESSURE_INTERVAL) if fast else self.interval
            self._pc.callback_time = interval * 1000

        factor = self.spill_factors.get(new, 1.0)
        target = self._original.get("memory_target_fraction")
        if target:
            worker.memory_manager.memory_target_fraction = (
                target if factor >= 1.0 else max(target * factor, _MIN_TARGET_FRACTION)
            )

        if new >= PressureLevel.HIGH:
            if worker.status == Status.running:
                worker.status = Status.paused
                self._paused_by_plugin = True
                self._counters["pauses"] += 1
        elif self._paused_by_plugin:
            if worker.status == Status.paused:
                worker.status = Status.running
                self._counters["resumes"] += 1
            self._paused_by_plugin = False

        if new == PressureLevel.CRITICAL:
            self._counters["critical_events"] += 1
        event = {
            "worker": worker.address,
            "level": new.name,
            "level_value": int(new),
            "previous": old.name,
            "fraction": float(sample.fraction),
            "used_bytes": int(sample.used_bytes),
            "limit_bytes": int(sample.limit_bytes),
            "paused": worker.status == Status.paused,
            "time": float(sample.time),
        }
        try:
            worker.log_event(EVENT_TOPIC, event)
        except Exception:
            # Not connected to a scheduler (yet/anymore): the reaction still matters.
            logger.debug("could not log chunkmill-pressure event", exc_info=True)

    def _set_spill_target(self) -> None:
        """Set ``worker.data.n`` for the applied level, capped by process headroom."""
        worker = self._worker
        assert worker is not None
        n0 = self._original.get("data_n")
        data = worker.data
        if n0 is None or not _is_spillable(data):
            return
        factor = self.spill_factors.get(self._applied, 1.0)
        n = n0 if factor >= 1.0 else int(n0 * factor)
        limit = worker.memory_manager.memory_limit
        if self.headroom_cap and self.read_memory is None and limit:
            # Everything in the process that is not in the fast store (interpreter,
            # imports, running tasks, allocator caches) stays whatever we spill, so
            # only the rest of the budget below the ELEVATED line is for data.
            unmanaged = max(0, worker.monitor.get_process_memory() - data.fast.total_weight)
            n = min(n, max(0, int(self.thresholds.elevated * limit) - unmanaged))
        data.n = n
        low = self._counters.get("min_spill_target_bytes")
        self._counters["min_spill_target_bytes"] = n if low is None else min(low, n)

    async def _evict_to_target(self) -> int:
        """Evict least-recently-used values until the fast store fits ``data.n``."""
        worker = self._worker
        assert worker is not None
        data = worker.data
        if not _is_spillable(data):
            return 0
        evicted = 0
        last_yield = time.monotonic()
        while data.fast and data.fast.total_weight > data.n:
            weight = data.evict()
            if weight == -1:
                # Disk full, max-spill reached or unpicklable value: Dask logged it.
                self._counters["evict_failures"] += 1
                break
            evicted += weight
            self._counters["evictions"] += 1
            self._counters["evicted_bytes"] += weight
            if time.monotonic() - last_yield > _EVICT_YIELD_S:
                await asyncio.sleep(0)
                last_yield = time.monotonic()
                if self._worker is None:  # torn down while we yielded
                    break
        return evicted

    def _release_arrow(self) -> None:
        try:
            import pyarrow as pa
        except ImportError:
            return
        # Arrow's allocator keeps freed pages for reuse; Dask counts them as
        # unmanaged memory and they count towards the OOM killer's view too.
        pa.default_memory_pool().release_unused()
        self._counters["arrow_releases"] += 1

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
            "arrow_pool": _arrow_pool_name(),
        }
        if worker is not None and _is_spillable(worker.data):
            data = worker.data
            out["spill_target_bytes"] = data.n
            out["fast_bytes"] = data.fast.total_weight
            spilled = getattr(data, "spilled_total", None)
            out["dask_spilled_bytes_now"] = int(spilled.memory) if spilled else 0
            metrics = getattr(data, "cumulative_metrics", {})
            out["dask_disk_write_bytes_total"] = int(metrics.get(("disk-write", "bytes"), 0))
            out["dask_disk_write_count_total"] = int(metrics.get(("disk-write", "count"), 0))
        return out


def _arrow_pool_name() -> str | None:
    try:
        import pyarrow as pa
    except ImportError:
        return None
    return pa.default_memory_pool().backend_name


def _is_spillable(data: object) -> bool:
    # SpillBuffer (a zict.Buffer) exposes a weighted LRU as .fast and a settable .n;
    # a plain dict (no memory limit) or a third-party mapping may not.
    fast = getattr(data, "fast", None)
    return (
        fast is not None
        and hasattr(fast, "total_weight")
        and hasattr(data, "evict")
        and hasattr(data, "n")
    )


def pressure_events(dask_worker: Worker) -> dict[str, Any]:
    """Counters of the pressure plugin on ``dask_worker``; use ``client.run(pressure_events)``.

    Returns ``{"installed": False, "worker": address}`` when the plugin is not installed.
    """
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, PressurePlugin):
        return {"installed": False, "worker": dask_worker.address}
    return plugin.events()

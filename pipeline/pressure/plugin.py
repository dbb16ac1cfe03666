"""Worker plugin that reacts to memory pressure before Dask's own last resorts.

Dask's defaults spill at 70 % of the worker limit, pause at 80 % and kill at 95 %, all
measured on the worker process alone, and keep up to 60 % of the limit as managed data
whatever the process already uses. Fast chunk tasks (Arrow buffers, decompression) and
other processes in the same container can go from "fine" to "killed" between two
samples, so this plugin acts in steps driven by
:class:`~pipeline.pressure.monitor.MemoryPressureMonitor`:

========== ============================================================================
always     cap the SpillBuffer target (``worker.data.n``) so that unmanaged memory
           plus managed data stays under the ELEVATED line; zict enforces it on every
           insert, so no sampling race is involved (only with a worker memory limit).
ELEVATED   spill earlier: halve the spill target and the memory manager's target
           fraction, evict until the fast store fits, return Arrow's cached free pages
           and the readers' idle buffers to the OS (at most once a second), sample every
           100 ms.
HIGH       evict down to 10 % of the original target, ``gc.collect()`` once, and pause
           the worker (running tasks finish, no new ones start) if the job is the
           threat: free memory below ``pause_headroom`` x the worker's resident memory.
           Otherwise (another process holds the memory) the worker keeps running and the
           client sends one chunk per worker thread.
CRITICAL   as HIGH, evict everything evictable; a paused worker's event tells clients
           to stop submitting (see :mod:`pipeline.pressure.window`).
lower      after ``cooldown`` seconds below the current level: restore the lower
           level's settings (NORMAL: the originals); resume once below HIGH.
stalled    paused for ``stall_warning`` seconds (then twice as long, ...): a
           `StallWarning` naming the processes that hold the memory.
========== ============================================================================

Every change of level or pause is logged as a `PressureEvent` on the ``chunkmill-pressure``
topic, and the worker's memory as a `MemoryPoint` on ``chunkmill-memory`` once per
``interval`` (see :mod:`pipeline.pressure.events`). Dask's spill and terminate stay active;
only Dask's pause is disabled, because its monitor would otherwise un-pause a worker this
plugin paused about 100 ms later.

The reactions themselves are in :mod:`pipeline.pressure.actions`, the decisions (level
cooldown, pause or throttle) in :mod:`pipeline.pressure.policy`; this module applies them on the
worker's event loop and reports. Install with :func:`install_pressure_plugin`; inspect a worker with
``client.run(pressure_state)``.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin
from distributed.core import Status
from tornado.ioloop import PeriodicCallback

from pipeline import config
from pipeline.pressure.actions import (
    ARROW_RELEASE_S,
    DEFAULT_SPILL_FACTORS,
    evict_to_target,
    is_spillable,
    log_event,
    log_pressure_event,
    pause_worker,
    release_arrow_memory,
    resume_worker,
    sampling_interval,
    set_spill_target,
    set_target_fraction,
    top_processes,
)
from pipeline.pressure.arrow_pool import (
    default_pool_name,
    restore_default_pool,
    switch_default_pool,
)
from pipeline.pressure.events import (
    MEMORY_TOPIC,
    STALL_TOPIC,
    MemoryPoint,
    PressureEvent,
    PressureLevel,
    StallWarning,
)
from pipeline.pressure.gauges import expose_worker_gauges, remove_worker_gauges
from pipeline.pressure.monitor import (
    MemoryPressureMonitor,
    MemoryReader,
    MemorySample,
    PressureThresholds,
    read_memory_usage,
)
from pipeline.pressure.policy import PressurePolicy

if TYPE_CHECKING:
    from distributed import Client, Worker

logger = logging.getLogger("chunkmill.pressure")

__all__ = [
    "DEFAULT_SPILL_FACTORS",
    "METRIC_LEVEL",
    "METRIC_PERCENT",
    "PLUGIN_NAME",
    "PressurePlugin",
    "install_pressure_plugin",
    "pressure_state",
]

PLUGIN_NAME = "chunkmill-pressure"
METRIC_LEVEL = "chunkmill_pressure_level"
METRIC_PERCENT = "chunkmill_memory_percent"


def install_pressure_plugin(client: Client, limit: str | int | None = None, *,
                            replace: bool = True, **settings: Any) -> PressurePlugin:
    """Install chunkmill's memory-pressure plugin on every worker of ``client``'s cluster.

    The workers then spill, pause and report pressure exactly as during ``pipeline.ingest``
    (which calls this at the start of every run), also for your own computations on that
    cluster, e.g. a persisted ``pipeline.read(...)`` frame. Workers that join later get it too.

    ``limit`` is the memory the plugin treats as the machine's (``"12GB"``, bytes; default
    ``chunkmill.pressure.limit``, else all of it), e.g. the share of a notebook server the
    job may use. ``replace`` (default) swaps in these settings over an installed plugin;
    False keeps a running one and its counters. Other keyword arguments go to
    `PressurePlugin` (``thresholds``, ``interval``, ``cooldown``, ``pause_headroom``, ...).
    Returns the plugin as registered.
    """
    if limit is None:
        limit = config.get("pressure.limit")
    plugin = PressurePlugin(limit_bytes=config.parse_size(limit) if limit else None,
                            replace=replace, **settings)
    try:
        client.register_plugin(plugin)
    except OSError as exc:  # CommClosedError: a worker died while it was being installed
        # The scheduler keeps the plugin and gives it to every worker that (re)joins; the
        # others have it. A lost worker is Dask's to handle, not a reason to fail the run.
        logger.warning("chunkmill: a worker left while the pressure plugin was being "
                       "installed (%s); the others and any replacement have it", exc)
    return plugin


# ------------------------------------------------------------------------ plugin
class PressurePlugin(WorkerPlugin):
    """Memory-pressure reactions on every worker.

    Unset parameters come from ``chunkmill.pressure.*`` in the config of the process that
    constructs the plugin (normally the client); they travel with it to the workers.

    Parameters
    ----------
    thresholds
        Level thresholds.
    interval
        Seconds between samples at NORMAL, and between two `MemoryPoint` records. At
        ELEVATED and above the plugin samples every 0.1 s.
    limit_bytes
        Memory budget for the machine-wide reading (host RAM or cgroup usage). Default
        :data:`distributed.system.MEMORY_LIMIT`. Independently of this, if the worker
        has a memory limit, the worker's own RSS is compared against it; the level is
        the worse of the two, because a container OOM kill does not care which process
        owns the memory.
    read_memory
        Replaces both readings: a picklable callable returning used bytes, ``(used,
        limit)`` or ``(used, limit, process)`` (for tests; ``process`` stands for the
        worker's resident memory, else the real one is used). Its limit is overridden by
        ``limit_bytes`` and defaults to the worker's memory limit. Disables the headroom
        cap, which needs real process memory.
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
    pause_headroom
        At HIGH and above the worker is paused only while free memory (limit - used) is
        below this many times its own resident memory; else it runs throttled.
    stall_warning
        Seconds (or ``"30s"``) a pause may last before a `StallWarning` (repeated after
        twice as long, and so on); 0: never.
    headroom_cap
        Cap the spill target at ``elevated * memory_limit - unmanaged memory`` (see
        module docs). Dask's fixed 60 % target ignores what the process already uses:
        a 400 MB worker with 150 MB of imports and allocator caches could hold 240 MB
        of data and cross the 95 % kill line with the next result.
    replace
        By default re-registering is a no-op when the plugin is already installed
        (``idempotent``), so repeated runs against a long-lived cluster keep counters;
        pass True to replace the installed plugin with new settings.
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
        cooldown: float | None = None,
        pause_headroom: float | None = None,
        stall_warning: float | str | None = None,
        headroom_cap: bool = True,
        replace: bool = False,
        arrow_pool: str | None = "jemalloc",
    ) -> None:
        self.thresholds = thresholds if thresholds is not None else PressureThresholds()
        self.interval = float(interval if interval is not None
                              else config.get("pressure.interval"))
        if self.interval <= 0:
            raise ValueError(f"interval must be positive; got {self.interval}")
        self.cooldown = float(cooldown if cooldown is not None
                              else config.get("pressure.cooldown"))
        if self.cooldown < 0:
            raise ValueError(f"cooldown must be >= 0; got {self.cooldown}")
        self.pause_headroom = float(pause_headroom if pause_headroom is not None
                                    else config.get("pressure.pause-headroom"))
        self.stall_warning = config.parse_seconds(
            stall_warning if stall_warning is not None else config.get("pressure.stall-warning"))
        self.limit_bytes = int(limit_bytes) if limit_bytes is not None else None
        self.read_memory = read_memory
        self.watch_system = watch_system
        factors = dict(DEFAULT_SPILL_FACTORS)
        factors.update({PressureLevel(k): float(v) for k, v in (spill_factors or {}).items()})
        self.spill_factors = factors
        self.headroom_cap = headroom_cap
        self.idempotent = not replace
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
        "pause_headroom",
        "stall_warning",
        "headroom_cap",
        "idempotent",
        "arrow_pool",
    )

    def _reset_runtime(self) -> None:
        self._worker: Worker | None = None
        self._monitor: MemoryPressureMonitor | None = None
        self._read: Callable[[], tuple[int, int, int]] | None = None
        self._pc: PeriodicCallback | None = None
        self._busy = False
        self._applied = PressureLevel.NORMAL
        self._policy = PressurePolicy(self.cooldown, self.pause_headroom)
        self._paused_since: float | None = None
        self._next_stall = 0.0
        self._last_point = float("-inf")
        self._last_release = float("-inf")
        self._last_error_log = float("-inf")
        self._paused_by_plugin = False
        self._original: dict[str, Any] = {}
        self._counters: dict[str, Any] = {}
        self._changes: deque[PressureEvent] = deque(maxlen=1000)
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
            "stall_warnings": 0,
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
            self._paused_since = time.monotonic()
            self._next_stall = self.stall_warning

        switched = switch_default_pool(self.arrow_pool)
        if switched is not None:
            self._replaced_pool, self._our_pool = switched

        self._read = self._make_reader(worker)
        self._monitor = MemoryPressureMonitor(thresholds=self.thresholds, read_memory=self._read)

        worker.metrics[METRIC_LEVEL] = self._metric_level
        worker.metrics[METRIC_PERCENT] = self._metric_percent
        expose_worker_gauges(worker.address, lambda: float(self._applied), self._current_fraction)

        self._pc = PeriodicCallback(self._tick, self.interval * 1000)
        worker.periodic_callbacks[PLUGIN_NAME] = self._pc
        self._pc.start()
        # Act on the memory as it is now, before the first chunk runs: a job started on a
        # machine already under pressure must not run unchecked until the first interval.
        # This first tick also gives the memory timeline its first point.
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
    def _make_reader(self, worker: Worker) -> Callable[[], tuple[int, int, int]]:
        """``() -> (used, limit, worker's resident memory)`` for the monitor."""
        worker_limit = worker.memory_manager.memory_limit
        custom = self.read_memory
        explicit = self.limit_bytes
        rss = worker.monitor.get_process_memory

        if custom is not None:

            def read_custom() -> tuple[int, int, int]:
                value = custom()
                if isinstance(value, tuple):
                    used, limit, *process = value
                else:
                    used, limit, process = value, None, []
                if explicit is not None:
                    limit = explicit
                elif limit is None:
                    limit = worker_limit or read_memory_usage()[1]
                return int(used), int(limit), int(process[0] if process else rss())

            return read_custom

        watch_system = self.watch_system or not worker_limit

        def read_default() -> tuple[int, int, int]:
            own = rss()
            readings: list[tuple[int, int]] = []
            if worker_limit:
                readings.append((own, worker_limit))
            if watch_system:
                used, limit = read_memory_usage()
                readings.append((used, explicit if explicit is not None else limit))
            used, limit = max(readings, key=lambda r: r[0] / r[1] if r[1] > 0 else float("inf"))
            return used, limit, own

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
            now = time.monotonic()
            old = self._applied
            new = self._policy.next_level(sample.level, now)
            was_paused = self._paused_by_plugin
            if new != old:
                self._on_level_change(old, new)
            self._pause_or_resume(self._policy.pause(sample, self._paused_by_plugin, now))
            if new != old or self._paused_by_plugin != was_paused:
                self._record(old, new, sample)
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
            self._report(sample)
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

    # ------------------------------------------------------------- level changes
    def _on_level_change(self, old: PressureLevel, new: PressureLevel) -> None:
        worker = self._worker
        assert worker is not None
        self._applied = new
        if self._pc is not None:
            self._pc.callback_time = sampling_interval(new, self.interval) * 1000
        set_target_fraction(
            worker,
            self._original.get("memory_target_fraction"),
            self.spill_factors.get(new, 1.0),
        )

    def _pause_or_resume(self, pause: bool) -> None:
        worker = self._worker
        assert worker is not None
        if pause and not self._paused_by_plugin:
            if pause_worker(worker, self._counters):
                self._paused_by_plugin = True
                self._paused_since = time.monotonic()
                self._next_stall = self.stall_warning
        elif not pause and self._paused_by_plugin:
            resume_worker(worker, self._counters)
            self._paused_by_plugin = False
            self._paused_since = None

    def _record(self, old: PressureLevel, new: PressureLevel, sample: MemorySample) -> None:
        worker = self._worker
        assert worker is not None
        event = PressureEvent(sample.time, worker.address, old, new, float(sample.fraction),
                              int(sample.used_bytes), int(sample.limit_bytes),
                              worker.status == Status.paused)
        self._changes.append(event)
        logger.info("Memory pressure %s -> %s (%.0f%% of %d bytes)%s", old.name, new.name,
                    event.fraction * 100, event.limit_bytes, ", paused" if event.paused else "")
        log_pressure_event(worker, event, self._counters)

    # ------------------------------------------------------------------ reporting
    def _report(self, sample: MemorySample) -> None:
        """A memory point once per interval; a stall warning when a pause lasts."""
        worker = self._worker
        assert worker is not None
        now = time.monotonic()
        if now - self._last_point >= self.interval:
            self._last_point = now
            log_event(worker, MEMORY_TOPIC, self._point(sample).asdict())
        if (self._paused_by_plugin and self._paused_since is not None and self.stall_warning > 0
                and now - self._paused_since >= self._next_stall):
            self._next_stall *= 2
            self._counters["stall_warnings"] += 1
            warning = StallWarning(sample.time, worker.address, self._applied,
                                   now - self._paused_since, float(sample.fraction),
                                   int(sample.used_bytes), int(sample.limit_bytes),
                                   sample.process_bytes, top_processes())
            logger.info("%s", warning)  # the client logs it at WARNING
            log_event(worker, STALL_TOPIC, warning.asdict())

    def _point(self, sample: MemorySample) -> MemoryPoint:
        worker = self._worker
        assert worker is not None
        rss = int(sample.process_bytes or 0)
        limit = worker.memory_manager.memory_limit
        return MemoryPoint(sample.time, worker.address, rss, rss / limit if limit else None,
                           self._applied, float(sample.fraction))

    def state(self) -> dict[str, Any]:
        """Counters, level history and memory now of this worker's plugin instance."""
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
            "level_changes": [e.asdict() for e in self._changes],
            "original_settings": dict(self._original),
            "arrow_pool": default_pool_name(),
        }
        if last is not None and self._read is not None:
            # Memory as it is now, not as of the last tick: the run report's last point.
            used, limit, process = self._read()
            now = MemorySample(time.time(), used, limit, last.fraction, last.level, process)
            out["memory"] = self._point(now).asdict()
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


def pressure_state(dask_worker: Worker) -> dict[str, Any]:
    """The pressure plugin's state on ``dask_worker``; use ``client.run(pressure_state)``.

    Counters (``pauses``, ``evicted_bytes``, ...), the level now, ``level_changes`` (the
    worker's `PressureEvent` records as dicts) and ``memory`` (a `MemoryPoint` dict). Returns
    ``{"installed": False, "worker": address}`` when the plugin is not installed.
    """
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, PressurePlugin):
        return {"installed": False, "worker": dask_worker.address}
    return plugin.state()

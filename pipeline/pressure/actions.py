"""What the pressure plugin does to a Dask worker at each memory pressure level.

:class:`~pipeline.pressure.plugin.PressurePlugin` decides *when* the level changes; the
functions here are *what* it then does to the worker (see the level table in
:mod:`pipeline.pressure.plugin`):

=================================  ===========================================================
:func:`set_spill_target`           always: the SpillBuffer target for the level, capped by the
                                   process's headroom below the ELEVATED line
:func:`set_target_fraction`        the memory manager's target fraction for the level
:func:`evict_to_target`            ELEVATED and above: spill until the fast store fits
:func:`release_arrow_memory`       ELEVATED and above: hand Arrow's cached free pages and
                                   idle chunk read buffers back
:func:`sampling_interval`          ELEVATED and above: sample every 100 ms
:func:`pause_worker`               HIGH and above, when the job is the threat: running tasks
                                   finish, no new ones start
:func:`resume_worker`              back below HIGH, or the job is no longer the threat
:func:`log_pressure_event`         every change: the ``chunkmill-pressure`` event clients
                                   watch (see :mod:`pipeline.pressure.window`)
:func:`top_processes`              a long pause: what holds the memory
=================================  ===========================================================

Counters (``counters``) are the plugin's per-worker dict reported by
:func:`~pipeline.pressure.plugin.pressure_state`; the functions update it in place.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import psutil

from pipeline.pressure.events import EVENT_TOPIC, PressureEvent, PressureLevel, ProcessMemory

if TYPE_CHECKING:
    from distributed import Worker

logger = logging.getLogger("chunkmill.pressure")

__all__ = [
    "ARROW_RELEASE_S",
    "DEFAULT_SPILL_FACTORS",
    "evict_to_target",
    "is_spillable",
    "log_pressure_event",
    "pause_worker",
    "release_arrow_memory",
    "resume_worker",
    "sampling_interval",
    "set_spill_target",
    "set_target_fraction",
    "top_processes",
]

#: Multiplier applied to the original SpillBuffer target and target fraction per level.
DEFAULT_SPILL_FACTORS: Mapping[PressureLevel, float] = {
    PressureLevel.NORMAL: 1.0,
    PressureLevel.ELEVATED: 0.5,
    PressureLevel.HIGH: 0.1,
    PressureLevel.CRITICAL: 0.0,
}

# While under pressure, hand Arrow's cached free pages back at most this often: they
# show up as "unmanaged" RSS (100+ MB after spilling a few tables) and can keep a
# worker above a threshold with nothing left to spill.
ARROW_RELEASE_S = 1.0

# Dask treats a target fraction of 0 as "unset" and falls back to the spill fraction,
# so the lowest target we hand it is this small positive number instead.
_MIN_TARGET_FRACTION = 0.01
# Yield to the event loop this often while evicting so heartbeats and comms keep going.
_EVICT_YIELD_S = 0.05
# Sampling interval while at ELEVATED or above: as often as the nanny checks for its
# 95 % kill line, since RSS can climb from 80 % to 95 % within one default interval.
_PRESSURE_INTERVAL = 0.1


def is_spillable(data: object) -> bool:
    """Whether ``data`` (a worker's ``worker.data``) can be spilled to a target."""
    # SpillBuffer (a zict.Buffer) exposes a weighted LRU as .fast and a settable .n;
    # a plain dict (no memory limit) or a third-party mapping may not.
    fast = getattr(data, "fast", None)
    return (
        fast is not None
        and hasattr(fast, "total_weight")
        and hasattr(data, "evict")
        and hasattr(data, "n")
    )


def sampling_interval(level: PressureLevel, interval: float) -> float:
    """Seconds between samples at ``level``, given the configured (NORMAL) ``interval``."""
    fast = level >= PressureLevel.ELEVATED
    return min(interval, _PRESSURE_INTERVAL) if fast else interval


def set_target_fraction(worker: Worker, original: float | None, factor: float) -> None:
    """Scale the memory manager's target fraction: ``original * factor`` (never 0)."""
    if original:
        worker.memory_manager.memory_target_fraction = (
            original if factor >= 1.0 else max(original * factor, _MIN_TARGET_FRACTION)
        )


def set_spill_target(
    worker: Worker,
    original_n: int | None,
    factor: float,
    *,
    elevated: float,
    headroom_cap: bool,
    counters: dict[str, Any],
) -> None:
    """Set ``worker.data.n`` to ``original_n * factor``, capped by process headroom.

    ``elevated`` is the ELEVATED threshold as a fraction of the worker's memory limit;
    with ``headroom_cap`` unmanaged memory plus the fast store is kept under it.
    """
    data = worker.data
    if original_n is None or not is_spillable(data):
        return
    n = original_n if factor >= 1.0 else int(original_n * factor)
    limit = worker.memory_manager.memory_limit
    if headroom_cap and limit:
        # Everything in the process that is not in the fast store (interpreter,
        # imports, running tasks, allocator caches) stays whatever we spill, so
        # only the rest of the budget below the ELEVATED line is for data.
        unmanaged = max(0, worker.monitor.get_process_memory() - data.fast.total_weight)
        n = min(n, max(0, int(elevated * limit) - unmanaged))
    data.n = n
    low = counters.get("min_spill_target_bytes")
    counters["min_spill_target_bytes"] = n if low is None else min(low, n)


async def evict_to_target(
    worker: Worker, counters: dict[str, Any], torn_down: Callable[[], bool]
) -> int:
    """Evict least-recently-used values until the fast store fits ``data.n``.

    Returns the bytes evicted. Yields to the event loop now and then and stops early
    once ``torn_down()`` is true (the plugin was removed meanwhile).
    """
    data = worker.data
    if not is_spillable(data):
        return 0
    evicted = 0
    last_yield = time.monotonic()
    while data.fast and data.fast.total_weight > data.n:
        weight = data.evict()
        if weight == -1:
            # Disk full, max-spill reached or unpicklable value: Dask logged it.
            counters["evict_failures"] += 1
            break
        evicted += weight
        counters["evictions"] += 1
        counters["evicted_bytes"] += weight
        if time.monotonic() - last_yield > _EVICT_YIELD_S:
            await asyncio.sleep(0)
            last_yield = time.monotonic()
            if torn_down():  # the plugin was removed while we yielded
                break
    return evicted


def release_arrow_memory(counters: dict[str, Any]) -> None:
    """Return the free pages cached by Arrow's default memory pool, and the readers' idle
    caches (the text readers' chunk buffers), to the OS."""
    # Looked up, not imported: a worker that has not read anything yet holds no reader caches,
    # and importing the readers (pyarrow, fsspec) would slow down installing the plugin.
    readers_base = sys.modules.get("readers.base")
    if readers_base is not None:
        readers_base.release_idle_memory()
    try:
        import pyarrow as pa
    except ImportError:
        return
    # Arrow's allocator keeps freed pages for reuse; Dask counts them as
    # unmanaged memory and they count towards the OOM killer's view too.
    pa.default_memory_pool().release_unused()
    counters["arrow_releases"] += 1


def pause_worker(worker: Worker, counters: dict[str, Any]) -> bool:
    """Pause a running worker; True if this call paused it."""
    from distributed.core import Status  # a job run in this process has no worker to pause

    if worker.status == Status.running:
        worker.status = Status.paused
        counters["pauses"] += 1
        return True
    return False


def resume_worker(worker: Worker, counters: dict[str, Any]) -> None:
    """Resume ``worker`` if it is (still) paused."""
    from distributed.core import Status

    if worker.status == Status.paused:
        worker.status = Status.running
        counters["resumes"] += 1


def log_pressure_event(worker: Worker, event: PressureEvent, counters: dict[str, Any]) -> None:
    """Log a level change (or pause/resume) as a ``chunkmill-pressure`` event on the scheduler."""
    if event.new == PressureLevel.CRITICAL and event.old != PressureLevel.CRITICAL:
        counters["critical_events"] += 1
    log_event(worker, EVENT_TOPIC, event.asdict())


def log_event(worker: Worker, topic: str, message: dict[str, Any]) -> None:
    """``worker.log_event``, quietly doing nothing when not connected to a scheduler."""
    try:
        worker.log_event(topic, message)
    except Exception:
        # Not connected to a scheduler (yet/anymore): the reaction still matters.
        logger.debug("could not log a %s event", topic, exc_info=True)


def top_processes(n: int = 5) -> tuple[ProcessMemory, ...]:
    """The ``n`` processes of this machine (or container) with the most resident memory."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "memory_info"]):
        info = proc.info
        if info.get("memory_info") is not None:  # None: not ours to look at
            found.append(ProcessMemory(int(info["pid"]), str(info.get("name") or "?"),
                                       int(info["memory_info"].rss)))
    return tuple(sorted(found, key=lambda p: -p.rss_bytes)[:n])

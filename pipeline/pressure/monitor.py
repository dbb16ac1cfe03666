"""Memory pressure measurement, independent of any Dask cluster.

The monitor turns "how much memory is in use" into a discrete :class:`PressureLevel`
with hysteresis, so that consumers (the worker plugin, the client submission window)
react to level *changes* instead of flapping on every sample.

Everything here works in a plain Python session::

    >>> from pipeline.pressure.monitor import MemoryPressureMonitor
    >>> MemoryPressureMonitor().snapshot()  # doctest: +SKIP
    MemorySample(time=..., used_bytes=..., limit_bytes=..., fraction=0.12, level=NORMAL)

Configuration (read when objects are constructed, never at import time)::

    chunkmill:
      pressure:
        elevated: 0.60
        high: 0.80
        critical: 0.90
        hysteresis: 0.05
        interval: 0.5   # seconds between background samples
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import psutil

logger = logging.getLogger(__name__)

__all__ = [
    "CgroupMemory",
    "MemoryPressureMonitor",
    "MemorySample",
    "PressureLevel",
    "PressureThresholds",
    "default_interval",
    "read_cgroup_memory",
    "read_memory_usage",
]

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
DEFAULT_INTERVAL = 0.5

#: Signature of a level-change callback: ``fn(old_level, new_level, sample)``.
LevelCallback = Callable[["PressureLevel", "PressureLevel", "MemorySample"], Any]
#: A memory reader returns used bytes, or ``(used_bytes, limit_bytes)``.
MemoryReader = Callable[[], "int | tuple[int, int]"]


class PressureLevel(IntEnum):
    """Discrete memory pressure levels, ordered so that ``max()`` gives the worst."""

    NORMAL = 0
    ELEVATED = 1
    HIGH = 2
    CRITICAL = 3


def _config(name: str, default: float) -> float:
    # Imported lazily so that importing this module never touches dask's config
    # machinery; the value is therefore whatever is configured *now*.
    import dask.config

    value = dask.config.get(f"chunkmill.pressure.{name}", default=default)
    return float(value)


def default_interval() -> float:
    """Sampling interval in seconds from ``chunkmill.pressure.interval`` (default 0.5)."""
    return _config("interval", DEFAULT_INTERVAL)


@dataclass(frozen=True)
class PressureThresholds:
    """Fractions of the memory limit at which each level is entered.

    A level is left only once usage drops below its threshold minus ``hysteresis``,
    so that usage hovering around a threshold does not toggle pause/resume.
    Unspecified fields come from ``chunkmill.pressure.*`` in dask's config.
    """

    elevated: float = field(default_factory=partial(_config, "elevated", 0.60))
    high: float = field(default_factory=partial(_config, "high", 0.80))
    critical: float = field(default_factory=partial(_config, "critical", 0.90))
    hysteresis: float = field(default_factory=partial(_config, "hysteresis", 0.05))

    def __post_init__(self) -> None:
        if not 0 < self.elevated < self.high < self.critical:
            raise ValueError(
                "thresholds must satisfy 0 < elevated < high < critical; got "
                f"{self.elevated}, {self.high}, {self.critical}"
            )
        if not 0 <= self.hysteresis < self.elevated:
            raise ValueError(f"hysteresis must be in [0, elevated); got {self.hysteresis}")

    def threshold(self, level: PressureLevel) -> float:
        """Fraction at which ``level`` is entered (0.0 for NORMAL)."""
        return {
            PressureLevel.NORMAL: 0.0,
            PressureLevel.ELEVATED: self.elevated,
            PressureLevel.HIGH: self.high,
            PressureLevel.CRITICAL: self.critical,
        }[PressureLevel(level)]

    def classify(self, fraction: float) -> PressureLevel:
        """Level for ``fraction`` ignoring history (no hysteresis)."""
        if fraction >= self.critical:
            return PressureLevel.CRITICAL
        if fraction >= self.high:
            return PressureLevel.HIGH
        if fraction >= self.elevated:
            return PressureLevel.ELEVATED
        return PressureLevel.NORMAL

    def next_level(self, fraction: float, current: PressureLevel) -> PressureLevel:
        """Level after observing ``fraction`` while at ``current``, with hysteresis.

        Rising is immediate (pressure must be acted on at once); falling steps down
        one level at a time, each only once usage is below that level's exit point.
        """
        raw = self.classify(fraction)
        if raw >= current:
            return raw
        level = PressureLevel(current)
        while level > raw and fraction < self.threshold(level) - self.hysteresis:
            level = PressureLevel(level - 1)
        return level


@dataclass(frozen=True)
class MemorySample:
    """One observation. ``time`` is wall-clock (``time.time()``) seconds."""

    time: float
    used_bytes: int
    limit_bytes: int
    fraction: float
    level: PressureLevel


class CgroupMemory(NamedTuple):
    """Raw memory figures of the cgroup this process runs in."""

    version: int
    usage_bytes: int
    #: None when the cgroup has no limit ("max" or a v1 "unlimited" sentinel).
    limit_bytes: int | None
    inactive_file_bytes: int


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_stat(path: Path, *keys: str) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    stats = {}
    for line in lines:
        name, _, value = line.partition(" ")
        stats[name] = value
    for key in keys:
        if key in stats:
            try:
                return int(stats[key])
            except ValueError:
                return 0
    return 0


def read_cgroup_memory(root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT) -> CgroupMemory | None:
    """Read usage/limit of the cgroup mounted at ``root`` (v2 first, then v1).

    ``root`` is injectable so the parsing can be tested against a fake sysfs tree.
    Returns None when neither hierarchy exposes a readable usage file. The paths are
    the same ones :func:`distributed.system.memory_limit` reads, so usage and limit
    refer to the same cgroup.
    """
    base = Path(root)
    usage = _read_int(base / "memory.current")
    if usage is not None:
        limit = _read_int(base / "memory.max")
        # docker stats subtracts inactive_file: reclaimable page cache would otherwise
        # make every I/O-heavy container look like it is about to be OOM-killed.
        inactive = _read_stat(base / "memory.stat", "inactive_file")
        return CgroupMemory(2, usage, limit, inactive)

    v1 = base / "memory"
    usage = _read_int(v1 / "memory.usage_in_bytes")
    if usage is not None:
        limit = _read_int(v1 / "memory.limit_in_bytes")
        # total_* covers the whole hierarchy, which is what usage_in_bytes counts too.
        inactive = _read_stat(v1 / "memory.stat", "total_inactive_file", "inactive_file")
        return CgroupMemory(1, usage, limit, inactive)
    return None


def read_memory_usage(
    *,
    cgroup_root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT,
    system_limit: int | None = None,
) -> tuple[int, int]:
    """Return ``(used_bytes, limit_bytes)`` for this machine or container.

    ``limit`` is :data:`distributed.system.MEMORY_LIMIT` (host RAM capped by cgroup
    v1/v2 limits and RLIMIT_RSS) unless ``system_limit`` is given. ``used`` is the
    cgroup's usage minus inactive file cache when the cgroup is actually limited
    below host RAM; otherwise host-wide ``total - available``, because an unlimited
    cgroup's usage says nothing about how close the host is to running out.
    """
    vm = psutil.virtual_memory()
    if system_limit is None:
        from distributed.system import MEMORY_LIMIT

        system_limit = MEMORY_LIMIT
    limit = int(system_limit)

    cg = read_cgroup_memory(cgroup_root)
    if cg is not None and cg.limit_bytes is not None and 0 < cg.limit_bytes < vm.total:
        used = max(cg.usage_bytes - cg.inactive_file_bytes, 0)
        limit = min(limit, cg.limit_bytes)
    else:
        used = vm.total - vm.available
    return int(used), limit


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class MemoryPressureMonitor:
    """Samples memory usage and tracks a :class:`PressureLevel` with hysteresis.

    Parameters
    ----------
    limit_bytes
        Budget that fractions are computed against. Default: the limit returned by
        ``read_memory`` if it returns a tuple, else :data:`distributed.system.MEMORY_LIMIT`.
    thresholds
        Level thresholds; default from ``chunkmill.pressure.*`` config.
    interval
        Seconds between samples of the background thread (:meth:`start`); default
        ``chunkmill.pressure.interval`` or 0.5.
    history
        Number of samples kept (bounded, oldest dropped).
    read_memory
        Callable returning used bytes or ``(used, limit)``; default
        :func:`read_memory_usage`. Replaceable so tests can inject values.
    """

    def __init__(
        self,
        *,
        limit_bytes: int | None = None,
        thresholds: PressureThresholds | None = None,
        interval: float | None = None,
        history: int = 600,
        read_memory: MemoryReader | None = None,
    ) -> None:
        if interval is None:
            interval = default_interval()
        if interval <= 0:
            raise ValueError(f"interval must be positive; got {interval}")
        if history < 1:
            raise ValueError(f"history must be >= 1; got {history}")
        self.limit_bytes = limit_bytes
        self.thresholds = thresholds if thresholds is not None else PressureThresholds()
        self.interval = float(interval)
        self.read_memory: MemoryReader = read_memory or read_memory_usage
        self._history: deque[MemorySample] = deque(maxlen=history)
        self._level = PressureLevel.NORMAL
        self._callbacks: list[LevelCallback] = []
        # Sampling may happen from the background thread and a caller concurrently.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ sampling
    def _measure(self) -> tuple[int, int]:
        value = self.read_memory()
        if isinstance(value, tuple):
            used, limit = value
        else:
            used, limit = value, None
        if self.limit_bytes is not None:
            limit = self.limit_bytes
        elif limit is None:
            from distributed.system import MEMORY_LIMIT

            limit = MEMORY_LIMIT
        return int(used), int(limit)

    def snapshot(self) -> MemorySample:
        """Sample memory now, update the level, record the sample and fire callbacks.

        Callbacks run in the calling thread, after the internal lock is released, so
        they may call back into the monitor.
        """
        used, limit = self._measure()
        fraction = used / limit if limit > 0 else 1.0
        with self._lock:
            old = self._level
            new = self.thresholds.next_level(fraction, old)
            sample = MemorySample(time.time(), used, limit, fraction, new)
            self._level = new
            self._history.append(sample)
            callbacks = list(self._callbacks) if new != old else []
        for fn in callbacks:
            try:
                fn(old, new, sample)
            except Exception:
                # A broken consumer must not stop sampling for the others.
                logger.exception("memory pressure callback %r failed", fn)
        return sample

    # ---------------------------------------------------------------- background
    def start(self) -> Self:
        """Sample every ``interval`` seconds in a daemon thread (no-op if running)."""
        if self.running:
            return self
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="chunkmill-memory-pressure", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the background thread and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the background sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.snapshot()
            except Exception:
                # e.g. a transient /proc read error: keep the thread alive.
                logger.exception("memory pressure sampling failed")
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- callbacks
    def add_callback(self, fn: LevelCallback) -> None:
        """Call ``fn(old_level, new_level, sample)`` whenever the level changes."""
        with self._lock:
            self._callbacks.append(fn)

    def remove_callback(self, fn: LevelCallback) -> None:
        """Remove a callback added with :meth:`add_callback` (no error if absent)."""
        with self._lock:
            try:
                self._callbacks.remove(fn)
            except ValueError:
                pass

    # -------------------------------------------------------------------- views
    @property
    def level(self) -> PressureLevel:
        """Level as of the latest sample (NORMAL before the first one)."""
        return self._level

    @property
    def history(self) -> list[MemorySample]:
        """Copy of the recorded samples, oldest first."""
        with self._lock:
            return list(self._history)

    @property
    def last(self) -> MemorySample | None:
        """Most recent sample, or None before the first one."""
        with self._lock:
            return self._history[-1] if self._history else None

    def _window(self, window_s: float | None) -> list[MemorySample]:
        samples = self.history
        if window_s is None or not samples:
            return samples
        cutoff = samples[-1].time - window_s
        return [s for s in samples if s.time >= cutoff]

    def average(self, window_s: float | None = None) -> float:
        """Mean memory *fraction* over the last ``window_s`` seconds (all if None).

        Returns 0.0 when there are no samples.
        """
        samples = self._window(window_s)
        if not samples:
            return 0.0
        return sum(s.fraction for s in samples) / len(samples)

    def trend(self, window_s: float | None = None) -> float:
        """Least-squares slope of used bytes over time, in bytes per second.

        Positive means memory is growing. Returns 0.0 with fewer than two samples.
        """
        samples = self._window(window_s)
        n = len(samples)
        if n < 2:
            return 0.0
        t0 = samples[0].time
        ts = [s.time - t0 for s in samples]
        ys = [float(s.used_bytes) for s in samples]
        mean_t = sum(ts) / n
        mean_y = sum(ys) / n
        var_t = sum((t - mean_t) ** 2 for t in ts)
        if var_t == 0:
            return 0.0
        cov = sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True))
        return cov / var_t

    def __repr__(self) -> str:
        last = self.last
        if last is None:
            usage = "no samples"
        else:
            usage = (
                f"used={_fmt_bytes(last.used_bytes)}/{_fmt_bytes(last.limit_bytes)} "
                f"({last.fraction:.0%})"
            )
        state = "running" if self.running else "stopped"
        return (
            f"<MemoryPressureMonitor level={self._level.name} {usage} "
            f"interval={self.interval:g}s {state}>"
        )

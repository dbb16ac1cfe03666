"""Memory pressure measurement, independent of any Dask cluster.

The monitor turns "how much memory is in use" into a discrete :class:`PressureLevel`
with hysteresis, so that its consumer (the worker plugin) reacts to level *changes*
instead of flapping on every sample. It samples when asked (`MemoryPressureMonitor.snapshot`);
the plugin asks on the worker's event loop at ``chunkmill.pressure.interval``.

Everything here works in a plain Python session::

    >>> from pipeline.pressure import MemoryPressureMonitor
    >>> MemoryPressureMonitor().snapshot()  # doctest: +SKIP
    MemorySample(time=..., used_bytes=..., limit_bytes=..., fraction=0.12, level=NORMAL, ...)

Thresholds come from ``chunkmill.pressure.*`` in Dask's config (defaults in
``pipeline/chunkmill.yaml``), read when objects are constructed, never at import time.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from pipeline import config
from pipeline.pressure.events import PressureLevel

__all__ = [
    "CgroupMemory",
    "MemoryPressureMonitor",
    "MemorySample",
    "PressureLevel",
    "PressureThresholds",
    "read_cgroup_memory",
    "read_memory_usage",
]

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"

#: A memory reader returns used bytes, ``(used_bytes, limit_bytes)``, or
#: ``(used_bytes, limit_bytes, process_bytes)`` where the last is the consumer's own resident
#: memory (the worker process), for readings injected by tests.
MemoryReader = Callable[[], "int | tuple[int, int] | tuple[int, int, int]"]


def _threshold(name: str) -> Any:
    return field(default_factory=lambda: float(config.get(f"pressure.{name}")))


@dataclass(frozen=True)
class PressureThresholds:
    """Fractions of the memory limit at which each level is entered.

    A level is left only once usage drops below its threshold minus ``hysteresis``,
    so that usage hovering around a threshold does not toggle pause/resume.
    Unspecified fields come from ``chunkmill.pressure.*`` in dask's config.
    """

    elevated: float = _threshold("elevated")
    high: float = _threshold("high")
    critical: float = _threshold("critical")
    hysteresis: float = _threshold("hysteresis")

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
    process_bytes: int | None = None
    """The consumer's own resident memory, when the reader gave it (tests); else None."""


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


@functools.cache
def system_memory_limit() -> int:
    """:data:`distributed.system.MEMORY_LIMIT` (host RAM capped by cgroup v1/v2 limits and
    RLIMIT_RSS), without importing distributed when it is not imported yet.

    Importing ``distributed.system`` imports all of distributed (a large share of a small
    job's start-up), so its module file, which needs only psutil, is loaded on its own.
    """
    loaded = sys.modules.get("distributed.system")
    if loaded is None:
        # Found on sys.path, not through sys.meta_path, where the CLI waits for distributed's
        # import (config.dask_settings_before_distributed).
        spec = (importlib.machinery.PathFinder.find_spec("distributed")
                or importlib.util.find_spec("distributed"))
        assert spec is not None and spec.origin is not None
        path = os.path.join(os.path.dirname(spec.origin), "system.py")
        own = importlib.util.spec_from_file_location("_chunkmill_distributed_system", path)
        assert own is not None and own.loader is not None
        loaded = importlib.util.module_from_spec(own)
        own.loader.exec_module(loaded)
    return int(loaded.MEMORY_LIMIT)


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
        system_limit = system_memory_limit()
    limit = int(system_limit)

    cg = read_cgroup_memory(cgroup_root)
    if cg is not None and cg.limit_bytes is not None and 0 < cg.limit_bytes < vm.total:
        used = max(cg.usage_bytes - cg.inactive_file_bytes, 0)
        limit = min(limit, cg.limit_bytes)
    else:
        used = vm.total - vm.available
    return int(used), limit


class MemoryPressureMonitor:
    """Samples memory usage and tracks a :class:`PressureLevel` with hysteresis.

    Parameters
    ----------
    limit_bytes
        Budget that fractions are computed against. Default: the limit returned by
        ``read_memory`` if it returns a tuple, else :data:`distributed.system.MEMORY_LIMIT`.
    thresholds
        Level thresholds; default from ``chunkmill.pressure.*`` config.
    read_memory
        Callable returning used bytes, ``(used, limit)`` or ``(used, limit, process)``;
        default :func:`read_memory_usage`. Replaceable so tests can inject values.
    """

    def __init__(
        self,
        *,
        limit_bytes: int | None = None,
        thresholds: PressureThresholds | None = None,
        read_memory: MemoryReader | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.thresholds = thresholds if thresholds is not None else PressureThresholds()
        self.read_memory: MemoryReader = read_memory or read_memory_usage
        self._level = PressureLevel.NORMAL
        self._last: MemorySample | None = None

    def _measure(self) -> tuple[int, int, int | None]:
        value = self.read_memory()
        if isinstance(value, tuple):
            used, limit, *rest = value
            process = rest[0] if rest else None
        else:
            used, limit, process = value, None, None
        if self.limit_bytes is not None:
            limit = self.limit_bytes
        elif limit is None:
            limit = system_memory_limit()
        return int(used), int(limit), None if process is None else int(process)

    def snapshot(self) -> MemorySample:
        """Sample memory now, update the level and return the sample."""
        used, limit, process = self._measure()
        fraction = used / limit if limit > 0 else 1.0
        self._level = self.thresholds.next_level(fraction, self._level)
        self._last = MemorySample(time.time(), used, limit, fraction, self._level, process)
        return self._last

    @property
    def level(self) -> PressureLevel:
        """Level as of the latest sample (NORMAL before the first one)."""
        return self._level

    @property
    def last(self) -> MemorySample | None:
        """Most recent sample, or None before the first one."""
        return self._last

    def __repr__(self) -> str:
        last = self._last
        usage = "no samples" if last is None else (
            f"used={config.format_size(last.used_bytes)}/{config.format_size(last.limit_bytes)} "
            f"({last.fraction:.0%})")
        return f"<MemoryPressureMonitor level={self._level.name} {usage}>"

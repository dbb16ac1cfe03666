"""What the pressure plugin tells clients, as plain records: levels, level changes, memory
samples and stall warnings.

This module covers the names and shapes every consumer shares: the plugin logs each record
with ``worker.log_event(topic, record.asdict())``; clients get them pushed with
``client.subscribe_topic(topic, handler)`` (or the scheduler's recent history with
``client.get_events(topic)``) and read them back with ``from_dict``. The run report and its
plots hold the same records. It imports nothing from Dask, so reports load without a cluster.

============================  ==============================================================
``chunkmill-pressure``        `PressureEvent`: a worker's level changed, or it was paused or
                              resumed at the same level
``chunkmill-memory``          `MemoryPoint`: a worker's memory now, once per sampling interval
``chunkmill-pressure-stall``  `StallWarning`: a worker has been paused for a long time, and
                              which processes of its machine hold the memory
============================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from dask.utils import format_bytes

__all__ = ["EVENT_TOPIC", "MEMORY_TOPIC", "STALL_TOPIC", "MemoryPoint", "PressureEvent",
           "PressureLevel", "ProcessMemory", "StallWarning", "level_of"]

EVENT_TOPIC = "chunkmill-pressure"
MEMORY_TOPIC = "chunkmill-memory"
STALL_TOPIC = "chunkmill-pressure-stall"


class PressureLevel(IntEnum):
    """Discrete memory pressure levels, ordered so that ``max()`` gives the worst."""

    NORMAL = 0
    ELEVATED = 1
    HIGH = 2
    CRITICAL = 3


def level_of(value: Any) -> PressureLevel:
    """A level from its name or number; anything unknown is NORMAL (records from elsewhere)."""
    if isinstance(value, str):
        return PressureLevel.__members__.get(value.upper(), PressureLevel.NORMAL)
    try:
        return PressureLevel(max(0, min(int(value), int(PressureLevel.CRITICAL))))
    except (TypeError, ValueError):
        return PressureLevel.NORMAL


def _as_json(record: Any) -> dict[str, Any]:
    """Fields of a record with levels as names (what travels and what reports save)."""
    return {name: (value.name if isinstance(value, PressureLevel) else value)
            for name, value in ((f, getattr(record, f)) for f in record.__dataclass_fields__)}


@dataclass(frozen=True, slots=True)
class PressureEvent:
    """A worker's pressure plugin changed level, or paused or resumed the worker."""

    time: float
    """Wall-clock seconds (``time.time()`` on the worker)."""
    worker: str
    """Address of the worker."""
    old: PressureLevel
    new: PressureLevel
    """The level acted on after the change (equal to ``old`` for a pause or resume alone)."""
    fraction: float | None = None
    """Memory used / limit, the reading the level comes from (None in reports saved by
    versions that did not record it, as for the next three)."""
    used_bytes: int | None = None
    limit_bytes: int | None = None
    paused: bool | None = None
    """Whether the plugin paused the worker: at HIGH and above only when the job's own
    footprint is the threat (see the README's Memory section); else it runs throttled."""

    def asdict(self) -> dict[str, Any]:
        return _as_json(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PressureEvent:
        return cls(time=float(data["time"]), worker=str(data.get("worker") or ""),
                   old=level_of(data.get("old")), new=level_of(data.get("new")),
                   fraction=_opt(float, data.get("fraction")),
                   used_bytes=_opt(int, data.get("used_bytes")),
                   limit_bytes=_opt(int, data.get("limit_bytes")),
                   paused=_opt(bool, data.get("paused")))


@dataclass(frozen=True, slots=True)
class MemoryPoint:
    """One worker's memory at one time: a point of the run report's memory timeline."""

    time: float
    worker: str
    memory_bytes: int
    """Resident memory of the worker process."""
    memory_fraction: float | None
    """``memory_bytes`` / the worker's memory limit (None without a limit)."""
    level: PressureLevel
    """The level the plugin acts on."""
    pressure_fraction: float | None = None
    """Memory used / limit as the plugin reads it (machine, container or worker)."""

    def asdict(self) -> dict[str, Any]:
        return _as_json(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemoryPoint:
        return cls(time=float(data["time"]), worker=str(data.get("worker") or ""),
                   memory_bytes=int(data.get("memory_bytes") or 0),
                   memory_fraction=_opt(float, data.get("memory_fraction")),
                   level=level_of(data.get("level")),
                   pressure_fraction=_opt(float, data.get("pressure_fraction")))


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """A process of the worker's machine (or container) and its resident memory."""

    pid: int
    name: str
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class StallWarning:
    """A worker has been paused by memory pressure for ``paused_s`` seconds."""

    time: float
    worker: str
    level: PressureLevel
    paused_s: float
    fraction: float
    used_bytes: int
    limit_bytes: int
    process_bytes: int | None
    """Resident memory of the paused worker process itself."""
    top: tuple[ProcessMemory, ...] = field(default_factory=tuple)
    """The processes holding the most memory on the worker's machine, largest first."""

    def asdict(self) -> dict[str, Any]:
        data = _as_json(self)
        data["top"] = [{"pid": p.pid, "name": p.name, "rss_bytes": p.rss_bytes} for p in self.top]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StallWarning:
        return cls(time=float(data["time"]), worker=str(data.get("worker") or ""),
                   level=level_of(data.get("level")), paused_s=float(data["paused_s"]),
                   fraction=float(data["fraction"]), used_bytes=int(data["used_bytes"]),
                   limit_bytes=int(data["limit_bytes"]),
                   process_bytes=_opt(int, data.get("process_bytes")),
                   top=tuple(ProcessMemory(int(p["pid"]), str(p["name"]), int(p["rss_bytes"]))
                             for p in data.get("top") or ()))

    def __str__(self) -> str:
        own = (f"; this worker holds {format_bytes(self.process_bytes)}"
               if self.process_bytes is not None else "")
        top = ", ".join(f"{p.name} (pid {p.pid}) {format_bytes(p.rss_bytes)}" for p in self.top)
        return (f"worker {self.worker} paused for {self.paused_s:.0f}s by memory pressure "
                f"({self.level.name}: {format_bytes(self.used_bytes)} of "
                f"{format_bytes(self.limit_bytes)} used, {self.fraction:.0%}{own}); "
                f"largest processes: {top or 'unknown'}. It resumes when memory is freed.")


def _opt(kind: type, value: Any) -> Any:
    return None if value is None else kind(value)

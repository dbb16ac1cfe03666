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

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Self

from pipeline import config

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


class _Record:
    """``asdict``/``from_dict`` for the records here: plain JSON, levels as names."""

    __slots__ = ()

    def asdict(self) -> dict[str, Any]:
        return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The record back from ``asdict``; fields missing from records saved by older
        versions take their defaults."""
        return cls(**{name: _from_json(hint, data.get(name))
                      for name, (hint, required) in _fields(cls).items()
                      if required or name in data})


@functools.cache
def _fields(cls: type) -> dict[str, tuple[Any, bool]]:
    """Each field's type and whether it has no default."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)}


def _to_json(value: Any) -> Any:
    if isinstance(value, PressureLevel):
        return value.name
    if isinstance(value, tuple):
        return [dataclasses.asdict(v) for v in value]
    return value


def _from_json(hint: Any, value: Any) -> Any:
    if hint is PressureLevel:
        return level_of(value)
    if value is None:
        return None
    if isinstance(hint, types.UnionType):  # X | None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:  # tuple[ProcessMemory, ...]
        kind = typing.get_args(hint)[0]
        return tuple(kind(**item) for item in value)
    return hint(value)


@dataclass(frozen=True, slots=True)
class PressureEvent(_Record):
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


@dataclass(frozen=True, slots=True)
class MemoryPoint(_Record):
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


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """A process of the worker's machine (or container) and its resident memory."""

    pid: int
    name: str
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class StallWarning(_Record):
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

    def __str__(self) -> str:
        own = (f"; this worker holds {config.format_size(self.process_bytes)}"
               if self.process_bytes is not None else "")
        top = ", ".join(f"{p.name} (pid {p.pid}) {config.format_size(p.rss_bytes)}"
                        for p in self.top)
        return (f"worker {self.worker} paused for {self.paused_s:.0f}s by memory pressure "
                f"({self.level.name}: {config.format_size(self.used_bytes)} of "
                f"{config.format_size(self.limit_bytes)} used, {self.fraction:.0%}{own}); "
                f"largest processes: {top or 'unknown'}. It resumes when memory is freed.")

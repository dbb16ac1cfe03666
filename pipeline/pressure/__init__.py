"""Memory pressure: the monitor, the worker plugin, its reactions and the records it pushes.

``monitor`` measures memory and turns it into a level with hysteresis; ``plugin`` is the Dask
worker plugin that acts on the level (``actions``: spill, pause, release) and pushes
``events`` (level changes, memory points, stall warnings) to clients; ``window`` is the
client's rule for how many chunks to keep in flight; ``gauges`` and ``arrow_pool`` are the
plugin's Prometheus gauges and Arrow allocator choice.

Names load on first use, so reading a run report does not import Dask's distributed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.pressure.events import MemoryPoint, PressureEvent, PressureLevel, StallWarning
    from pipeline.pressure.monitor import MemoryPressureMonitor, PressureThresholds
    from pipeline.pressure.plugin import PressurePlugin, install_pressure_plugin, pressure_state

__all__ = ["MemoryPoint", "MemoryPressureMonitor", "PressureEvent", "PressureLevel",
           "PressurePlugin", "PressureThresholds", "StallWarning", "install_pressure_plugin",
           "pressure_state"]

_LAZY = {"MemoryPoint": "events", "PressureEvent": "events", "PressureLevel": "events",
         "StallWarning": "events", "MemoryPressureMonitor": "monitor",
         "PressureThresholds": "monitor", "PressurePlugin": "plugin",
         "install_pressure_plugin": "plugin", "pressure_state": "plugin"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"pipeline.pressure.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline.pressure' has no attribute {name!r}")

"""Prometheus gauges of the pressure plugin, shared by every worker in the process.

Without ``prometheus_client`` installed the functions here do nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["expose_worker_gauges", "prometheus_gauges", "remove_worker_gauges"]

LEVEL_GAUGE = "chunkmill_pressure_level"
FRACTION_GAUGE = "chunkmill_memory_fraction"

_prom_lock = threading.Lock()
_prom_gauges: dict[str, Any] | None = None


def prometheus_gauges() -> dict[str, Any]:
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
            LEVEL_GAUGE: "chunkmill memory pressure level acted on "
            "(0 normal, 1 elevated, 2 high, 3 critical)",
            FRACTION_GAUGE: "Memory used / budget as seen by the chunkmill pressure plugin",
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


def expose_worker_gauges(
    worker_address: str, level: Callable[[], float], fraction: Callable[[], float]
) -> None:
    """Report ``level()`` and ``fraction()`` under the ``worker=worker_address`` label."""
    gauges = prometheus_gauges()
    if LEVEL_GAUGE in gauges:
        gauges[LEVEL_GAUGE].labels(worker=worker_address).set_function(level)
    if FRACTION_GAUGE in gauges:
        gauges[FRACTION_GAUGE].labels(worker=worker_address).set_function(fraction)


def remove_worker_gauges(worker_address: str) -> None:
    """Drop the ``worker=worker_address`` series of every gauge."""
    for gauge in prometheus_gauges().values():
        try:
            gauge.remove(worker_address)
        except KeyError:
            pass

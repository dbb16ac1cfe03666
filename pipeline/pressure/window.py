"""Client-side back-pressure: size the submission window from worker pressure levels.

Workers running :class:`~pipeline.pressure_plugin.PressurePlugin` report their level as
the ``chunkmill_pressure_level`` heartbeat metric. The driver keeps at most
:meth:`InflightWindow.allowed` chunk tasks in flight::

    window = InflightWindow(client)
    for chunk in chunks:
        while len(inflight) >= window.allowed():
            wait_for_one(inflight)
        inflight.add(client.submit(process, chunk))

Only synchronous :class:`distributed.Client` objects are supported: an asynchronous
client's ``scheduler_info()`` carries no per-worker data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.pressure.monitor import PressureLevel
from pipeline.pressure.plugin import METRIC_LEVEL

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["InflightWindow", "cluster_pressure", "worker_pressure"]

#: Fraction of the base window allowed at each level; CRITICAL means stop submitting.
WINDOW_FRACTIONS: dict[PressureLevel, float] = {
    PressureLevel.NORMAL: 1.0,
    PressureLevel.ELEVATED: 0.75,
    PressureLevel.HIGH: 0.5,
    PressureLevel.CRITICAL: 0.0,
}


def _level_of(value: Any) -> PressureLevel:
    try:
        return PressureLevel(max(0, min(int(value), int(PressureLevel.CRITICAL))))
    except (TypeError, ValueError):
        return PressureLevel.NORMAL


def worker_pressure(client: Client) -> dict[str, PressureLevel]:
    """Pressure level per worker address, from the last heartbeat of each worker.

    Workers without the plugin (no metric yet) count as NORMAL.
    """
    info = client.scheduler_info(n_workers=-1)
    return {
        addr: _level_of(ws.get("metrics", {}).get(METRIC_LEVEL, 0))
        for addr, ws in info.get("workers", {}).items()
    }


def cluster_pressure(client: Client) -> PressureLevel:
    """Worst pressure level reported by any worker; NORMAL when none reports one.

    The worst level rather than an average: one worker near its OOM kill is enough
    reason to slow down, since the scheduler may place the next task on it.
    """
    return max(worker_pressure(client).values(), default=PressureLevel.NORMAL)


class InflightWindow:
    """Number of tasks the client may keep in flight given cluster memory pressure.

    Parameters
    ----------
    client
        Synchronous distributed client (used for polling and to size the window).
    base
        Window at NORMAL pressure; default ``2 * total worker threads`` (at least 1),
        enough to keep every thread busy while the next chunk is being submitted.
    poll_interval
        Minimum seconds between two scheduler polls; :meth:`level` returns the cached
        value in between, so calling it in a tight submission loop is cheap.
    get_level
        Replaces :func:`cluster_pressure` (for tests or other pressure sources).
    """

    def __init__(
        self,
        client: Client | None = None,
        base: int | None = None,
        *,
        poll_interval: float = 0.5,
        get_level: Callable[[], PressureLevel] | None = None,
    ) -> None:
        if client is None and get_level is None:
            raise ValueError("need a client or a get_level callable")
        if base is None:
            if client is None:
                raise ValueError("base is required without a client")
            threads = sum(client.nthreads().values())
            base = 2 * threads
        self.base = max(1, int(base))
        self.poll_interval = float(poll_interval)
        self._client = client
        self._get_level = get_level or (lambda: cluster_pressure(client))  # type: ignore[arg-type]
        self._level = PressureLevel.NORMAL
        self._polled_at = float("-inf")
        self._lock = threading.Lock()

    @staticmethod
    def size_for(base: int, level: PressureLevel) -> int:
        """Window for ``level``: full, 3/4, 1/2 (at least 1), or 0 at CRITICAL."""
        level = PressureLevel(level)
        if level >= PressureLevel.CRITICAL:
            return 0
        return max(1, int(base * WINDOW_FRACTIONS[level]))

    def level(self, *, refresh: bool = False) -> PressureLevel:
        """Cluster pressure, polling the scheduler at most every ``poll_interval`` s."""
        with self._lock:
            now = time.monotonic()
            if refresh or now - self._polled_at >= self.poll_interval:
                try:
                    self._level = self._get_level()
                except Exception:
                    # Scheduler briefly unreachable: keep the last known level
                    # instead of failing the submission loop.
                    pass
                self._polled_at = now
            return self._level

    def allowed(self, level: PressureLevel | None = None) -> int:
        """Tasks allowed in flight at ``level`` (polled, throttled, when None)."""
        if level is None:
            level = self.level()
        return self.size_for(self.base, level)

    def has_room(self, inflight: int) -> bool:
        """True if one more task may be submitted with ``inflight`` already running."""
        return inflight < self.allowed()

    def __repr__(self) -> str:
        return (
            f"<InflightWindow base={self.base} level={self._level.name} "
            f"allowed={self.size_for(self.base, self._level)}>"
        )

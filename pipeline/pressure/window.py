"""How many chunk tasks the client keeps in flight, given the workers' pressure.

The client (`pipeline.execution.watch.ClusterWatch`) learns each worker's level and whether
its plugin paused it from the pushed `PressureEvent` records, and submits at most the smallest
of the workers' windows: the worst worker governs, since the scheduler may place the next task
on it.
"""

from __future__ import annotations

from pipeline.pressure.events import PressureLevel

__all__ = ["WINDOW_FRACTIONS", "window_size"]

#: Fraction of the base window at each level for a worker the plugin paused (or that is not
#: under pressure); CRITICAL means stop submitting.
WINDOW_FRACTIONS: dict[PressureLevel, float] = {
    PressureLevel.NORMAL: 1.0,
    PressureLevel.ELEVATED: 0.75,
    PressureLevel.HIGH: 0.5,
    PressureLevel.CRITICAL: 0.0,
}


def window_size(base: int, level: PressureLevel, *, paused: bool = True, threads: int = 1) -> int:
    """Tasks in flight for one worker's ``level``: full, 3/4, 1/2 (at least 1), or 0 at CRITICAL.

    A worker at HIGH or above that its plugin left running (``paused=False``: memory is held
    by other processes and the job's footprint is small against what is free) runs throttled:
    one task per worker thread (``threads`` of the whole cluster), never none.
    """
    level = PressureLevel(level)
    if level >= PressureLevel.HIGH and not paused:
        return max(1, min(base, threads))
    if level >= PressureLevel.CRITICAL:
        return 0
    return max(1, int(base * WINDOW_FRACTIONS[level]))

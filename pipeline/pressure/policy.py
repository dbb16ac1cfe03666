"""When the pressure plugin changes level and when it pauses its worker: pure decisions over
samples and a clock, so they are tested without a cluster.

Levels rise at once (pressure must be acted on now) and step down only after ``cooldown``
seconds below: without it, spilling everything at ELEVATED drops usage at once, the original
target is restored, the store refills and the worker oscillates between levels.

At HIGH and above the worker is paused only while the job itself is the threat
(`job_is_the_threat`); otherwise it keeps running and the client throttles it to one chunk per
worker thread. A pause ends below HIGH, or once the job has not been the threat for
``cooldown`` seconds.
"""

from __future__ import annotations

from pipeline.pressure.events import PressureLevel
from pipeline.pressure.monitor import MemorySample

__all__ = ["PressurePolicy", "job_is_the_threat"]


def job_is_the_threat(sample: MemorySample, headroom: float) -> bool:
    """At HIGH and above: pause the worker (True) or let it run throttled (False)?

    Pausing is right when the job's own growth is what threatens the machine. When another
    process holds the memory and what is still free is several times what the worker holds,
    stopping would stall the job for as long as that process lives and free nothing. So: pause
    when free memory (limit - used) is below ``headroom`` x the worker's resident memory. A
    reading without the worker's memory (``process_bytes`` None) pauses.
    """
    if sample.process_bytes is None:
        return True
    return sample.limit_bytes - sample.used_bytes < headroom * sample.process_bytes


class PressurePolicy:
    """The level to act on and whether to pause, sample after sample (times in seconds of any
    monotonic clock)."""

    def __init__(self, cooldown: float, pause_headroom: float) -> None:
        self.cooldown = cooldown
        self.pause_headroom = pause_headroom
        self.level = PressureLevel.NORMAL
        """The level acted on."""
        self._below_since: float | None = None
        self._calm_since: float | None = None

    def next_level(self, observed: PressureLevel, now: float) -> PressureLevel:
        """Rise at once; step down only after ``cooldown`` seconds below."""
        if observed >= self.level:
            self._below_since = None
            self.level = observed
        elif self._below_since is None:
            self._below_since = now
        if observed < self.level and now - self._below_since >= self.cooldown:
            self._below_since = None
            self.level = observed
        return self.level

    def pause(self, sample: MemorySample, paused: bool, now: float) -> bool:
        """Whether the worker should be paused at the current level, given it is ``paused``."""
        if self.level < PressureLevel.HIGH:
            self._calm_since = None
            return False
        if job_is_the_threat(sample, self.pause_headroom):
            self._calm_since = None
            return True
        if not paused:
            return False
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since >= self.cooldown:
            self._calm_since = None
            return False
        return True

"""CPU cost of sampling memory with MemoryPressureMonitor at the pressure plugin's interval.

Runs the process idle for ``--seconds``, then with a thread taking a ``snapshot()`` every
interval (as the plugin's periodic callback does on a worker) for the same time, and reports
the extra process CPU time as a percentage of one core. Also times ``snapshot()`` in a tight
loop for a per-sample figure.

    python benchmarks/bench_monitor.py              # default interval, 20 s per phase
    python benchmarks/bench_monitor.py --interval 0.1 --seconds 10
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

# Runnable as a plain script from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import config  # noqa: E402
from pipeline.pressure.monitor import MemoryPressureMonitor  # noqa: E402


def cpu_over(seconds: float) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) spent sleeping ``seconds`` in this thread."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return time.process_time() - cpu0, time.perf_counter() - wall0


def per_snapshot_us(n: int = 2000) -> float:
    monitor = MemoryPressureMonitor()
    monitor.snapshot()  # first call imports distributed for MEMORY_LIMIT
    t0 = time.perf_counter()
    for _ in range(n):
        monitor.snapshot()
    return (time.perf_counter() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument(
        "--interval", type=float, default=None, help="sampling interval (default: config/0.5)"
    )
    args = parser.parse_args(argv)
    interval = args.interval if args.interval is not None else config.get("pressure.interval")

    snap_us = per_snapshot_us()

    idle_cpu, idle_wall = cpu_over(args.seconds)

    monitor = MemoryPressureMonitor()
    monitor.snapshot()
    stop = threading.Event()
    samples = 0

    def sample() -> None:
        nonlocal samples
        while not stop.wait(interval):
            monitor.snapshot()
            samples += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    busy_cpu, busy_wall = cpu_over(args.seconds)
    stop.set()
    sampler.join()

    idle_pct = 100 * idle_cpu / idle_wall
    busy_pct = 100 * busy_cpu / busy_wall
    print(f"snapshot():          {snap_us:8.1f} us per call")
    print(f"interval:            {interval:8.3f} s ({samples} samples in {busy_wall:.1f} s)")
    print(f"idle process:        {idle_pct:8.4f} % of a core")
    print(f"with monitor:        {busy_pct:8.4f} % of a core")
    print(f"monitor cost:        {busy_pct - idle_pct:8.4f} % of a core (measured)")
    print(
        f"monitor cost:        {100 * snap_us * 1e-6 / interval:8.4f} % of a core (from snapshot())"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

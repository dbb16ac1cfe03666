"""Tests for pipeline.pressure.monitor: levels, hysteresis, cgroup parsing, real memory."""

from __future__ import annotations

import time
from pathlib import Path

import dask
import psutil
import pytest
from balloon import Balloon

from pipeline.pressure.monitor import (
    MemoryPressureMonitor,
    PressureLevel,
    PressureThresholds,
    read_cgroup_memory,
    read_memory_usage,
)

GiB = 1 << 30


class Feed:
    """Injected memory reader returning whatever the test sets."""

    def __init__(self, used: int = 0, limit: int | None = 1000) -> None:
        self.used = used
        self.limit = limit

    def __call__(self) -> int | tuple[int, int]:
        return self.used if self.limit is None else (self.used, self.limit)


def levels_for(monitor: MemoryPressureMonitor, feed: Feed, fractions: list[float]) -> list[str]:
    out = []
    for f in fractions:
        feed.used = int(f * 1000)
        out.append(monitor.snapshot().level.name)
    return out


# ---------------------------------------------------------------- thresholds
def test_threshold_defaults_and_classify() -> None:
    t = PressureThresholds()
    assert (t.elevated, t.high, t.critical, t.hysteresis) == (0.60, 0.80, 0.90, 0.05)
    # the defaults are chunkmill.yaml's, not literals of their own
    assert t.high == dask.config.get("chunkmill.pressure.high")
    assert t.classify(0.0) is PressureLevel.NORMAL
    assert t.classify(0.599) is PressureLevel.NORMAL
    assert t.classify(0.60) is PressureLevel.ELEVATED
    assert t.classify(0.80) is PressureLevel.HIGH
    assert t.classify(0.95) is PressureLevel.CRITICAL
    assert t.classify(1.5) is PressureLevel.CRITICAL


def test_thresholds_read_config_at_construction_time() -> None:
    before = PressureThresholds()
    with dask.config.set({"chunkmill.pressure.high": 0.7, "chunkmill.pressure.hysteresis": 0.1}):
        inside = PressureThresholds()
        explicit = PressureThresholds(high=0.85)
        monitor = MemoryPressureMonitor(read_memory=Feed())
    assert before.high == 0.80
    assert (inside.high, inside.hysteresis, inside.elevated) == (0.7, 0.1, 0.6)
    assert explicit.high == 0.85
    assert monitor.thresholds.high == 0.7


@pytest.mark.parametrize(
    "kwargs",
    [
        {"elevated": 0.8, "high": 0.7},
        {"high": 0.95, "critical": 0.9},
        {"elevated": 0.0},
        {"hysteresis": -0.1},
        {"hysteresis": 0.7},
    ],
)
def test_thresholds_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PressureThresholds(**kwargs)


def test_hysteresis_rises_immediately_and_falls_late() -> None:
    feed = Feed()
    m = MemoryPressureMonitor(read_memory=feed)
    seq = [0.10, 0.61, 0.58, 0.56, 0.549, 0.85, 0.79, 0.76, 0.74, 0.92, 0.86, 0.84, 0.10]
    assert levels_for(m, feed, seq) == [
        "NORMAL",
        "ELEVATED",
        "ELEVATED",  # 0.58 >= 0.60 - 0.05: still elevated
        "ELEVATED",
        "NORMAL",  # below 0.55
        "HIGH",  # rising skips straight to the level
        "HIGH",
        "HIGH",
        "ELEVATED",  # below 0.75
        "CRITICAL",
        "CRITICAL",  # 0.86 >= 0.85
        "HIGH",  # 0.84 < 0.85 but >= 0.75
        "NORMAL",  # a big drop leaves several levels at once
    ]


def test_zero_hysteresis_tracks_classify() -> None:
    feed = Feed()
    m = MemoryPressureMonitor(read_memory=feed, thresholds=PressureThresholds(hysteresis=0.0))
    assert levels_for(m, feed, [0.85, 0.79, 0.59]) == ["HIGH", "ELEVATED", "NORMAL"]


# ------------------------------------------------------------------- monitor
def test_sample_fields_and_limits() -> None:
    feed = Feed(used=300, limit=1000)
    m = MemoryPressureMonitor(read_memory=feed)
    s = m.snapshot()
    assert (s.used_bytes, s.limit_bytes, s.fraction, s.level) == (300, 1000, 0.3, 0)
    assert s.process_bytes is None
    assert abs(s.time - time.time()) < 5
    assert m.last is s and m.level is PressureLevel.NORMAL
    # A reader may also give the consumer's own memory (tests of the plugin's pause rule).
    s3 = MemoryPressureMonitor(read_memory=lambda: (850, 1000, 40)).snapshot()
    assert (s3.fraction, s3.level, s3.process_bytes) == (0.85, PressureLevel.HIGH, 40)

    # An explicit limit wins over the reader's; a bare int reading uses it too.
    assert MemoryPressureMonitor(read_memory=feed, limit_bytes=400).snapshot().fraction == 0.75
    m2 = MemoryPressureMonitor(read_memory=Feed(used=100, limit=None), limit_bytes=200)
    assert m2.snapshot().fraction == 0.5
    # No limit anywhere: distributed's MEMORY_LIMIT.
    from distributed.system import MEMORY_LIMIT

    assert MemoryPressureMonitor(read_memory=Feed(limit=None)).snapshot().limit_bytes == (
        MEMORY_LIMIT
    )


def test_repr_is_readable() -> None:
    m = MemoryPressureMonitor(read_memory=Feed(used=700 * 2**20, limit=GiB))
    assert "no samples" in repr(m)
    m.snapshot()
    text = repr(m)
    assert "ELEVATED" in text and "700.00 MiB/1.00 GiB" in text and "68%" in text


def test_default_reader_real_machine() -> None:
    sample = MemoryPressureMonitor().snapshot()
    vm = psutil.virtual_memory()
    assert 0 < sample.used_bytes <= vm.total
    assert 0 < sample.limit_bytes <= vm.total
    assert 0 < sample.fraction < 1


# -------------------------------------------------------------------- cgroup
def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_cgroup_v2_parsing(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "memory.current": "2147483648\n",
            "memory.max": "4294967296\n",
            "memory.stat": "anon 1000\nfile 900000000\ninactive_file 536870912\nactive_file 1\n",
        },
    )
    cg = read_cgroup_memory(root)
    assert cg == (2, 2 * GiB, 4 * GiB, GiB // 2)
    used, limit = read_memory_usage(cgroup_root=root, system_limit=8 * GiB)
    assert (used, limit) == (2 * GiB - GiB // 2, 4 * GiB)
    # The smaller of distributed's limit (e.g. RLIMIT_RSS) and the cgroup's wins.
    assert read_memory_usage(cgroup_root=root, system_limit=3 * GiB) == (3 * GiB // 2, 3 * GiB)


def test_cgroup_v2_unlimited_falls_back_to_host(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"memory.current": "123\n", "memory.max": "max\n"})
    cg = read_cgroup_memory(root)
    assert cg is not None and cg.limit_bytes is None and cg.inactive_file_bytes == 0
    used, limit = read_memory_usage(cgroup_root=root, system_limit=7 * GiB)
    vm = psutil.virtual_memory()
    assert limit == 7 * GiB
    # Host-wide total - available, not the cgroup's 123 bytes.
    assert abs(used - (vm.total - vm.available)) < 512 * 2**20


def test_cgroup_v1_parsing(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "memory/memory.usage_in_bytes": "1073741824\n",
            "memory/memory.limit_in_bytes": "2147483648\n",
            "memory/memory.stat": "cache 5\ninactive_file 7\ntotal_inactive_file 268435456\n",
        },
    )
    cg = read_cgroup_memory(root)
    assert cg == (1, GiB, 2 * GiB, GiB // 4)
    assert read_memory_usage(cgroup_root=root, system_limit=64 * GiB) == (
        GiB - GiB // 4,
        2 * GiB,
    )


def test_cgroup_v1_unlimited_sentinel_and_missing(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "v1",
        {
            "memory/memory.usage_in_bytes": "1000\n",
            "memory/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    used, _ = read_memory_usage(cgroup_root=root, system_limit=GiB)
    assert used > 1000  # sentinel is above host RAM: host-wide figure is used
    assert read_cgroup_memory(tmp_path / "nothing-here") is None
    garbage = write_tree(tmp_path / "bad", {"memory.current": "not a number"})
    assert read_cgroup_memory(garbage) is None


def test_inactive_file_larger_than_usage_clamps_to_zero(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {"memory.current": "100\n", "memory.max": "1000\n", "memory.stat": "inactive_file 500\n"},
    )
    assert read_memory_usage(cgroup_root=root, system_limit=GiB) == (0, 1000)


# --------------------------------------------------------------- real memory
@pytest.mark.timeout(60)
def test_real_balloon_drives_level_high_and_back_down() -> None:
    used0, _ = read_memory_usage()
    # 4 GiB rather than 2 of headroom: other jobs on a shared box move host memory by
    # a GB or more, which must not keep the level up after the balloon is gone.
    limit = used0 + 4 * GiB
    # Aim for 95 % of the budget: HIGH or CRITICAL both pass, and other processes freeing
    # half a GB meanwhile (a previous test's cluster shutting down) still leaves it >= HIGH.
    balloon_bytes = int(0.95 * limit) - used0
    assert balloon_bytes > 3 * GiB

    monitor = MemoryPressureMonitor(limit_bytes=limit)
    transitions: list[tuple[str, str]] = []

    def sample() -> PressureLevel:
        old = monitor.level
        new = monitor.snapshot().level
        if new != old:
            transitions.append((old.name, new.name))
        return new

    assert sample() is PressureLevel.NORMAL
    balloon = Balloon(balloon_bytes)
    try:
        deadline = time.monotonic() + 15
        while sample() < PressureLevel.HIGH and time.monotonic() < deadline:
            time.sleep(0.05)
        peak = monitor.last
        assert peak is not None
        assert monitor.level >= PressureLevel.HIGH, peak
        assert peak.fraction > 0.78, peak
    finally:
        balloon.close()
    # Back below HIGH once the balloon is gone. NORMAL needs usage under 55 % of the budget
    # again, which other jobs on a shared box growing by half a GB meanwhile can deny.
    deadline = time.monotonic() + 15
    while sample() >= PressureLevel.HIGH and time.monotonic() < deadline:
        time.sleep(0.05)
    assert monitor.level < PressureLevel.HIGH, monitor.last

    # The balloon inflates over ~0.5 s, so ELEVATED may be seen on the way up.
    assert transitions[0][0] == "NORMAL"
    assert any(new in ("HIGH", "CRITICAL") for _, new in transitions), transitions
    assert transitions[-1][1] in ("NORMAL", "ELEVATED")

"""The pressure records (one shape each, from the plugin to the run report and its plots) and the
pure rules built on them: when to pause rather than throttle."""

from __future__ import annotations

import json

import pytest

from pipeline.pressure.events import (
    MemoryPoint,
    PressureEvent,
    PressureLevel,
    ProcessMemory,
    StallWarning,
    level_of,
)
from pipeline.pressure.monitor import MemorySample
from pipeline.pressure.policy import PressurePolicy, job_is_the_threat
from pipeline.report.run_report import RunReport

EVENT = PressureEvent(1000.5, "tcp://w:1", PressureLevel.ELEVATED, PressureLevel.HIGH, 0.85,
                      850, 1000, True)
POINT = MemoryPoint(1000.5, "tcp://w:1", 300, 0.3, PressureLevel.HIGH, 0.85)


def test_records_travel_as_plain_json_and_come_back_equal() -> None:
    assert EVENT.asdict() == {"time": 1000.5, "worker": "tcp://w:1", "old": "ELEVATED",
                              "new": "HIGH", "fraction": 0.85, "used_bytes": 850,
                              "limit_bytes": 1000, "paused": True}
    stall = StallWarning(1.0, "tcp://w:1", PressureLevel.CRITICAL, 31.0, 0.95, 950, 1000, 40,
                         (ProcessMemory(7, "python3", 900),))
    for record in (EVENT, POINT, stall):
        assert type(record).from_dict(json.loads(json.dumps(record.asdict()))) == record
    assert "paused for 31s" in str(stall) and "python3 (pid 7) 900 B" in str(stall)


def test_run_report_holds_the_records_and_saves_level_names() -> None:
    report = RunReport("r", "out", 1000.0, pressure_events=[EVENT], memory_timeline=[POINT])
    saved = json.loads(report.to_json())
    assert saved["pressure_events"] == [EVENT.asdict()]
    assert saved["memory_timeline"][0]["level"] == "HIGH"
    back = RunReport.from_dict(saved)
    assert back.pressure_events == [EVENT] and back.memory_timeline == [POINT]


def test_reports_saved_by_older_versions_still_load() -> None:
    old = {"run_id": "r", "out": "o", "started": 1.0,
           "pressure_events": [{"time": 2.0, "worker": "tcp://w:1", "old": "NORMAL",
                                "new": "CRITICAL"}],
           "memory_timeline": [{"time": 2.0, "worker": "tcp://w:1", "memory_bytes": 5,
                                "memory_fraction": None, "level": "CRITICAL"}]}
    report = RunReport.from_dict(old)
    (event,) = report.pressure_events
    assert (event.new, event.fraction, event.paused) == (PressureLevel.CRITICAL, None, None)
    assert report.memory_timeline[0].pressure_fraction is None


def test_level_names_are_defined_once() -> None:
    assert [level.name for level in PressureLevel] == ["NORMAL", "ELEVATED", "HIGH", "CRITICAL"]
    assert level_of("high") is level_of(2) is PressureLevel.HIGH
    assert level_of(None) is PressureLevel.NORMAL
    assert level_of(9) is PressureLevel.CRITICAL and level_of("bogus") is PressureLevel.NORMAL


@pytest.mark.parametrize(("used", "limit", "process", "pause"), [
    (850, 1000, 10, False),     # 150 free, 4 x 10 = 40: another process holds the memory
    (960, 1000, 10, False),     # 40 free, exactly 4 x 10: still room for the job
    (960, 1000, 11, True),      # 40 free < 44: the job is the threat
    (1100, 1000, 1, True),      # over the budget: nothing is free
    (850, 1000, None, True),    # the worker's own memory unknown: be safe
])
def test_pause_only_when_the_job_is_the_threat(used: int, limit: int, process: int | None,
                                               pause: bool) -> None:
    sample = MemorySample(0.0, used, limit, used / limit, PressureLevel.HIGH, process)
    assert job_is_the_threat(sample, headroom=4) is pause


def sample(used: int, process: int, limit: int = 1000) -> MemorySample:
    from pipeline.pressure.monitor import PressureThresholds

    level = PressureThresholds().classify(used / limit)
    return MemorySample(0.0, used, limit, used / limit, level, process)


def test_policy_levels_fall_after_cooldown_and_pauses_end_after_calm() -> None:
    policy = PressurePolicy(cooldown=1.0, pause_headroom=4)
    s = sample(850, 10)  # HIGH, room to spare: throttled
    assert (policy.next_level(s.level, 0.0), policy.pause(s, False, 0.0)) == (
        PressureLevel.HIGH, False)
    s = sample(960, 100)  # the job grew: pause at once
    assert (policy.next_level(s.level, 0.1), policy.pause(s, False, 0.1)) == (
        PressureLevel.CRITICAL, True)
    s = sample(960, 5)  # no longer the threat: the pause holds for the cooldown, then ends
    assert policy.pause(s, True, 0.2) is True
    assert policy.pause(s, True, 1.1) is True
    assert policy.pause(s, True, 1.2) is False
    s = sample(100, 5)  # memory freed: the level steps down only after the cooldown
    assert policy.next_level(s.level, 2.0) is PressureLevel.CRITICAL
    assert policy.next_level(s.level, 2.9) is PressureLevel.CRITICAL
    assert policy.next_level(s.level, 3.0) is PressureLevel.NORMAL
    assert policy.pause(s, True, 3.0) is False  # below HIGH: resume


def test_the_client_window_follows_pushed_events_and_forgets_silent_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.execution import watch as watch_module

    watch = watch_module.ClusterWatch(RunReport("r", "out", 0.0))
    watch._threads = 2

    def push(worker: str, new: PressureLevel, paused: bool, t: float) -> None:
        watch._on_event((t, PressureEvent(t, worker, PressureLevel.NORMAL, new, 0.9, 9, 10,
                                          paused).asdict()))

    push("a", PressureLevel.HIGH, False, 1.0)
    assert watch.window(8) == 2  # throttled: one chunk per worker thread
    push("b", PressureLevel.CRITICAL, True, 2.0)
    assert watch.window(8) == 0  # a paused CRITICAL worker stops submission
    push("b", PressureLevel.ELEVATED, False, 1.5)  # older, from history after a push
    assert watch.window(8) == 0 and len(watch.report.pressure_events) == 3
    push("b", PressureLevel.CRITICAL, True, 2.0)  # the same record twice: kept once
    assert len(watch.report.pressure_events) == 3
    watch.tick()
    assert watch.level is PressureLevel.CRITICAL
    # b falls silent (it died): after STALE_S it no longer holds the window at 0
    later = watch_module.time.monotonic() + watch_module.STALE_S + 1
    monkeypatch.setattr(watch_module.time, "monotonic", lambda: later)
    watch._heard["a"] = later
    assert watch.window(8) == 2

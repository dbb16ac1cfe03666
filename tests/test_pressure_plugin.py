"""Tests for pipeline.pressure.plugin on real clusters, and of the client's side of it
(pipeline.execution.watch, pipeline.pressure.window) on the events the plugin pushes."""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import dask
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from balloon import Balloon
from distributed import Client, LocalCluster, wait

from pipeline.execution.watch import ClusterWatch
from pipeline.pressure.events import (
    EVENT_TOPIC,
    STALL_TOPIC,
    PressureEvent,
    PressureLevel,
    StallWarning,
)
from pipeline.pressure.monitor import read_memory_usage
from pipeline.pressure.plugin import PLUGIN_NAME, PressurePlugin, pressure_state
from pipeline.pressure.window import window_size
from pipeline.report.run_report import RunReport
from readers._text import READ_BUFFERS

GiB = 1 << 30
ROWS = 1_250_000  # two int64 columns: 20 MB per table

# Shared with the in-process worker: the plugin's reader is pickled by reference.
FAKE: dict[str, Any] = {"used": 100, "limit": 1000, "process": None}


def fake_read() -> tuple[int, ...]:
    """Injected readings; ``process`` (the worker's own memory) only when a test sets it."""
    if FAKE["process"] is None:
        return FAKE["used"], FAKE["limit"]
    return FAKE["used"], FAKE["limit"], FAKE["process"]


def make_table(i: int, rows: int = ROWS) -> pa.Table:
    """A fresh (unsliced) Arrow table; the second column is allocated by Arrow's pool."""
    import numpy as np

    x = pa.array(np.arange(i * rows, (i + 1) * rows, dtype=np.int64))
    return pa.table({"x": x, "y": pc.multiply(x, 2)})


def check_table(table: pa.Table, i: int, rows: int = ROWS) -> None:
    assert table.num_rows == rows
    first, last = i * rows, (i + 1) * rows - 1
    assert table["x"][0].as_py() == first and table["x"][-1].as_py() == last
    assert pc.sum(table["y"]).as_py() == (first + last) * rows  # 2 * arithmetic sum


def until(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``pred`` until truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def worker_state(dask_worker: Any) -> dict[str, Any]:
    data = dask_worker.data
    mm = dask_worker.memory_manager
    return {
        "status": dask_worker.status.name,
        "n": data.n,
        "fast": data.fast.total_weight,
        "target": mm.memory_target_fraction,
        "pause": mm.memory_pause_fraction,
        "metrics": sorted(k for k in dask_worker.metrics if k.startswith("chunkmill")),
        "pid": os.getpid(),
    }


def watching(client: Client) -> ClusterWatch:
    """The client's view of the cluster as an ingest has it, from the pushed events."""
    watch = ClusterWatch(RunReport("test", "out", time.time() - 60))
    watch.attach(client)
    return watch


def one(d: dict[str, Any]) -> Any:
    (value,) = d.values()
    return value


def scrape_metrics(client: Client, addr: str) -> str:
    info = client.scheduler_info()["workers"][addr]
    host = info["host"]
    port = info["services"]["dashboard"]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


# --------------------------------------------------- deterministic (in-process)
@pytest.fixture
def inproc() -> Iterator[Client]:
    FAKE.update(used=100, limit=1000, process=None)
    # The in-process worker's memory is this test process's, which grows over a whole suite:
    # Dask's own spilling by process memory would evict what these tests hold and count.
    with (
        dask.config.set({"distributed.worker.memory.spill": False}),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            memory_limit="1GB",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.mark.timeout(60)
def test_pressure_at_install_applies_before_the_first_interval(inproc: Client) -> None:
    """A job started on a machine already under pressure is paused by the time the plugin is
    registered, not one sampling interval later (a short job could finish unchecked)."""
    READ_BUFFERS.give(READ_BUFFERS.take(1 << 20))  # an idle chunk buffer this worker keeps
    assert len(READ_BUFFERS) >= 1
    FAKE["used"] = 950
    inproc.register_plugin(PressurePlugin(interval=3600, read_memory=fake_read))
    ev = one(inproc.run(pressure_state))
    assert (ev["level"], ev["status"], ev["pauses"]) == ("CRITICAL", "paused", 1)
    assert ev["arrow_releases"] >= 1 and len(READ_BUFFERS) == 0
    assert [(c["old"], c["new"], c["paused"]) for c in ev["level_changes"]] == [
        ("NORMAL", "CRITICAL", True)]


@pytest.mark.timeout(60)
def test_plugin_levels_drive_spill_pause_and_resume(inproc: Client) -> None:
    c = inproc
    addr = one(c.run(lambda dask_worker: dask_worker.address))
    before = one(c.run(worker_state))
    assert before["pause"] == 0.8 and before["n"] == 600_000_000

    c.register_plugin(PressurePlugin(interval=0.05, read_memory=fake_read, cooldown=0))
    st = one(c.run(worker_state))
    assert st["pause"] is False  # Dask's own pause is off, spill/terminate untouched
    assert st["metrics"] == ["chunkmill_memory_percent", "chunkmill_pressure_level"]

    def level() -> str:
        return one(c.run(pressure_state))["level"]

    # Held results: 5 x 20 MB in the fast store.
    held = c.map(make_table, range(5))
    wait(held)
    assert one(c.run(worker_state))["fast"] > 95_000_000

    FAKE["used"] = 650
    assert until(lambda: level() == "ELEVATED")
    st = one(c.run(worker_state))
    assert (st["n"], st["target"], st["status"]) == (300_000_000, 0.3, "running")

    FAKE["used"] = 850
    assert until(lambda: level() == "HIGH")
    st = one(c.run(worker_state))
    assert st["status"] == "paused" and st["n"] == 60_000_000
    assert until(lambda: one(c.run(worker_state))["fast"] <= 60_000_000)
    assert until(lambda: c.scheduler_info()["workers"][addr]["status"] == "paused")
    ev = one(c.run(pressure_state))
    assert ev["pauses"] == 1 and ev["evictions"] >= 2 and ev["evicted_bytes"] >= 40_000_000
    assert ev["arrow_releases"] >= 1 and ev["dask_disk_write_bytes_total"] >= 40_000_000

    # A paused worker starts nothing new.
    blocked = c.submit(make_table, 10)
    time.sleep(0.5)
    assert blocked.status == "pending"

    FAKE["used"] = 950
    assert until(lambda: level() == "CRITICAL")
    assert until(lambda: one(c.run(worker_state))["fast"] == 0)  # everything evictable
    events = until(lambda: [PressureEvent.from_dict(m) for _, m in c.get_events(EVENT_TOPIC)
                            if m["new"] == "CRITICAL"])
    assert events and events[0].worker == addr and events[0].paused is True
    assert (events[0].old, events[0].used_bytes, events[0].limit_bytes) == (
        PressureLevel.HIGH, 950, 1000)
    # The level reaches the client as a pushed event: a paused CRITICAL worker stops submission.
    watch = watching(c)
    assert until(lambda: watch.window(8) == 0)
    watch.tick()
    assert watch.level == PressureLevel.CRITICAL
    # ... and travels with heartbeats to the scheduler (dashboard, scheduler_info).
    assert until(lambda: c.scheduler_info()["workers"][addr]["metrics"].get(
        "chunkmill_pressure_level") == 3)
    metrics = c.scheduler_info()["workers"][addr]["metrics"]
    assert metrics["chunkmill_memory_percent"] == pytest.approx(95.0)
    text = scrape_metrics(c, addr)
    assert f'chunkmill_pressure_level{{worker="{addr}"}} 3.0' in text
    assert f'chunkmill_memory_fraction{{worker="{addr}"}} 0.95' in text

    # Hysteresis on the way down: 0.80 leaves CRITICAL (< 0.85) but stays HIGH.
    FAKE["used"] = 800
    assert until(lambda: level() == "HIGH")
    time.sleep(0.3)
    assert blocked.status == "pending"
    FAKE["used"] = 700  # < 0.75: ELEVATED, resume
    assert until(lambda: level() == "ELEVATED")
    check_table(blocked.result(timeout=20), 10)
    assert one(c.run(worker_state))["status"] == "running"

    FAKE["used"] = 100
    assert until(lambda: level() == "NORMAL")
    st = one(c.run(worker_state))
    assert (st["n"], st["target"], st["pause"]) == (600_000_000, 0.6, False)
    ev = one(c.run(pressure_state))
    assert (ev["pauses"], ev["resumes"], ev["critical_events"]) == (1, 1, 1)
    assert watch.window(8) == 8  # back to the full window, from the pushed events alone
    watch.collect(c)  # pushed after it subscribed, or from the scheduler's history before
    assert [e.asdict() for e in watch.report.pressure_events] == ev["level_changes"]
    assert [(ch["old"], ch["new"]) for ch in ev["level_changes"]] == [
        ("NORMAL", "ELEVATED"),
        ("ELEVATED", "HIGH"),
        ("HIGH", "CRITICAL"),
        ("CRITICAL", "HIGH"),
        ("HIGH", "ELEVATED"),
        ("ELEVATED", "NORMAL"),
    ]
    for i, f in enumerate(held):  # spilled results still come back intact
        check_table(f.result(), i)

    # Idempotent install: re-registering keeps the running instance and its counters.
    samples = ev["samples"]
    c.register_plugin(PressurePlugin(interval=0.05, read_memory=fake_read))
    assert one(c.run(pressure_state))["samples"] >= samples
    # replace=True swaps in a fresh instance.
    c.register_plugin(PressurePlugin(interval=0.05, read_memory=fake_read, replace=True))
    assert one(c.run(pressure_state))["pauses"] == 0

    # Teardown restores Dask's settings and removes the metrics.
    c.unregister_worker_plugin(PLUGIN_NAME)
    st = one(c.run(worker_state))
    assert (st["pause"], st["n"], st["target"], st["metrics"]) == (0.8, 600_000_000, 0.6, [])
    assert one(c.run(pressure_state)) == {"installed": False, "worker": addr}
    assert f'chunkmill_pressure_level{{worker="{addr}"}}' not in scrape_metrics(c, addr)


@pytest.mark.timeout(60)
def test_teardown_resumes_a_worker_it_paused(inproc: Client) -> None:
    c = inproc
    FAKE["used"] = 990
    c.register_plugin(PressurePlugin(interval=0.05, read_memory=fake_read))
    assert until(lambda: one(c.run(worker_state))["status"] == "paused")
    c.unregister_worker_plugin(PLUGIN_NAME)
    st = one(c.run(worker_state))
    assert st["status"] == "running" and st["pause"] == 0.8
    check_table(c.submit(make_table, 3).result(timeout=20), 3)


@pytest.mark.timeout(60)
def test_cooldown_delays_stepping_down(inproc: Client) -> None:
    c = inproc
    FAKE["used"] = 850
    c.register_plugin(PressurePlugin(interval=0.05, read_memory=fake_read, cooldown=1.0))
    assert until(lambda: one(c.run(pressure_state))["level"] == "HIGH")
    FAKE["used"] = 100
    assert until(lambda: one(c.run(pressure_state))["observed_level"] == "NORMAL")
    t0 = time.monotonic()
    ev = one(c.run(pressure_state))
    assert ev["level"] == "HIGH" and ev["status"] == "paused"  # still holding
    assert until(lambda: one(c.run(pressure_state))["level"] == "NORMAL", timeout=10)
    assert time.monotonic() - t0 > 0.7
    assert one(c.run(worker_state))["status"] == "running"
    FAKE["used"] = 930  # rising is never delayed
    assert until(lambda: one(c.run(pressure_state))["level"] == "CRITICAL", timeout=1)


@pytest.mark.timeout(60)
def test_small_footprint_runs_throttled_instead_of_pausing(inproc: Client) -> None:
    """Issue 20 item 10: another process holds the memory, the job's own footprint is small
    against what is free: the worker keeps running and the client sends one chunk per thread;
    once the job is the threat (free < pause_headroom x its memory), it pauses."""
    c = inproc
    # 85 % used, 150 free, the worker holds 10: 150 >= 4 x 10, so not the threat.
    FAKE.update(used=850, process=10)
    c.register_plugin(PressurePlugin(interval=0.05, read_memory=fake_read, cooldown=0.3))
    watch = watching(c)
    ev = one(c.run(pressure_state))
    assert (ev["level"], ev["status"], ev["pauses"]) == ("HIGH", "running", 0)
    assert until(lambda: watch.window(8) == 1)  # one chunk per worker thread, not none
    check_table(c.submit(make_table, 1, 100).result(timeout=20), 1, 100)
    FAKE["used"] = 960  # CRITICAL and still only 40 free x ... 4 x 10 = 40: not below
    assert until(lambda: one(c.run(pressure_state))["level"] == "CRITICAL")
    assert one(c.run(worker_state))["status"] == "running" and watch.window(8) == 1

    FAKE["process"] = 100  # the job grew: 40 free < 4 x 100: pause at once, same level
    assert until(lambda: one(c.run(worker_state))["status"] == "paused")
    assert until(lambda: watch.window(8) == 0)
    FAKE["process"] = 5  # no longer the threat: resume after the cooldown, still CRITICAL
    assert until(lambda: one(c.run(worker_state))["status"] == "running")
    watch.collect(c)
    assert [(e.old.name, e.new.name, e.paused) for e in watch.report.pressure_events] == [
        ("NORMAL", "HIGH", False), ("HIGH", "CRITICAL", False), ("CRITICAL", "CRITICAL", True),
        ("CRITICAL", "CRITICAL", False)]
    assert watch.report.pauses == 1 and one(c.run(pressure_state))["resumes"] == 1


@pytest.mark.timeout(60)
def test_long_pause_warns_with_level_and_largest_processes(
        inproc: Client, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 20 item 10: a pause that lasts is not silent. The client logs a WARNING (under
    chunkmill.pressure) naming the level and the processes holding the machine's memory."""
    c = inproc
    watch = watching(c)
    FAKE.update(used=950, process=500)
    caplog.set_level(logging.WARNING, logger="chunkmill")
    c.register_plugin(PressurePlugin(interval=0.05, read_memory=fake_read, stall_warning=0.3))
    assert one(c.run(worker_state))["status"] == "paused"
    warned = until(lambda: [r for r in caplog.records if r.name == "chunkmill.pressure"
                            and r.levelno == logging.WARNING])
    assert warned, caplog.text
    text = warned[0].getMessage()
    assert "paused for" in text and "CRITICAL" in text and "largest processes:" in text
    (_, pushed), *_ = c.get_events(STALL_TOPIC)
    stall = StallWarning.from_dict(pushed)
    assert stall.level == PressureLevel.CRITICAL and stall.process_bytes == 500
    # The largest processes of the worker's machine (here, this one), largest first.
    assert 1 <= len(stall.top) <= 5 and stall.top[0].rss_bytes > 0
    assert [p.rss_bytes for p in stall.top] == sorted((p.rss_bytes for p in stall.top),
                                                      reverse=True)
    assert f"{stall.top[0].name} (pid {stall.top[0].pid})" in text
    assert any("paused for" in note for note in watch.report.notes)
    # Repeated after twice as long each time, not on every sample.
    stalls = until(lambda: [StallWarning.from_dict(m) for _, m in c.get_events(STALL_TOPIC)][1:])
    paused = [w.paused_s for _, m in c.get_events(STALL_TOPIC)
              for w in [StallWarning.from_dict(m)]]
    assert stalls and all(p >= 0.3 * 2**i for i, p in enumerate(paused)), paused
    FAKE.update(used=100)
    assert until(lambda: one(c.run(worker_state))["status"] == "running")
    watch.collect(c)


@pytest.mark.timeout(120)
def test_install_on_your_own_cluster_for_a_persisted_read(tmp_path: Any) -> None:
    """Issue 15 must-have 7: one public call puts the plugin on every worker of a user's
    cluster, and a persisted ``pipeline.read`` frame spills and pauses under it."""
    import pipeline

    src = tmp_path / "events.csv"
    src.write_text("id,event,value\n" + "".join(f"{i},{'abc'[i % 3]},{i * 0.5}\n"
                                                 for i in range(30_000)))
    FAKE.update(used=100, limit=1000, process=None)
    # The in-process worker's memory is this test process's, which grows over a whole suite:
    # Dask's own spilling by process memory would evict what these tests hold and count.
    with (
        dask.config.set({"distributed.worker.memory.spill": False}),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, memory_limit="1GB",
                     dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        plugin = pipeline.install_pressure_plugin(c, limit="1GB", interval=0.05,
                                                  read_memory=fake_read, cooldown=0)
        assert plugin.limit_bytes == 10**9  # the limit overrides the reading's own
        states = c.run(pressure_state)
        assert len(states) == 2 and all(s["installed"] for s in states.values())
        assert all(s["limit_bytes"] == 10**9 for s in states.values())

        df = pipeline.read([str(src)], chunk_size="64KB").persist()
        wait(df)
        assert sum(s["fast_bytes"] for s in c.run(pressure_state).values()) > 0

        FAKE["used"] = 960 * 10**6  # 96 % of the 1 GB limit: spill everything, pause
        assert until(lambda: all(s["level"] == "CRITICAL" and s["status"] == "paused"
                                 for s in c.run(pressure_state).values()))
        assert until(lambda: all(s["fast_bytes"] == 0 for s in c.run(pressure_state).values()))
        assert sum(s["dask_disk_write_bytes_total"] for s in c.run(pressure_state).values()) > 0
        FAKE["used"] = 100
        assert until(lambda: all(s["status"] == "running" for s in c.run(pressure_state).values()))
        assert len(df) == 30_000 and int(df["id"].sum().compute()) == sum(range(30_000))


@pytest.mark.timeout(60)
def test_plugin_without_worker_memory_limit() -> None:
    # No limit: worker.data is a plain dict (nothing to spill); only the machine-wide
    # reading applies and pausing still works.
    FAKE.update(used=100, limit=1000, process=None)
    # The in-process worker's memory is this test process's, which grows over a whole suite:
    # Dask's own spilling by process memory would evict what these tests hold and count.
    with (
        dask.config.set({"distributed.worker.memory.spill": False}),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            memory_limit=0,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as c,
    ):
        assert one(c.run(lambda dask_worker: type(dask_worker.data).__name__)) == "dict"
        c.register_plugin(PressurePlugin(interval=0.05))
        ev = one(c.run(pressure_state))
        assert ev["installed"] and ev["limit_bytes"] > 0 and "spill_target_bytes" not in ev
        c.register_plugin(
            PressurePlugin(interval=0.05, read_memory=fake_read, cooldown=0, replace=True)
        )
        FAKE["used"] = 950
        assert until(lambda: one(c.run(lambda dask_worker: dask_worker.status.name)) == "paused")
        FAKE["used"] = 100
        check_table(c.submit(make_table, 7, 100).result(timeout=20), 7, 100)
        assert one(c.run(pressure_state))["resumes"] == 1


def test_install_survives_a_worker_dying_meanwhile(caplog: pytest.LogCaptureFixture) -> None:
    """The scheduler keeps the plugin for every worker that (re)joins: a worker killed while it
    is being installed is no reason to fail the run."""
    from distributed.comm.core import CommClosedError

    import pipeline

    class DyingCluster:
        def register_plugin(self, plugin: PressurePlugin) -> None:
            raise CommClosedError("in <TCP (closed) Scheduler Broadcast>: Stream is closed")

    plugin = pipeline.install_pressure_plugin(DyingCluster(), limit="2GB")
    assert plugin.limit_bytes == 2 * 10**9 and not plugin.idempotent  # replace by default
    assert "a worker left while the pressure plugin was being installed" in caplog.text


def test_plugin_pickles_configuration_only() -> None:
    import pickle

    plugin = PressurePlugin(interval=0.2, limit_bytes=123, read_memory=fake_read)
    clone = pickle.loads(pickle.dumps(plugin))
    assert (clone.interval, clone.limit_bytes, clone.read_memory) == (0.2, 123, fake_read)
    assert clone.name == PLUGIN_NAME and clone.idempotent is True
    assert PressurePlugin(replace=True).idempotent is False
    assert "not installed" in repr(clone)


def test_window_size_rule() -> None:
    base = 8
    assert [window_size(base, lv) for lv in PressureLevel] == [8, 6, 4, 0]
    assert window_size(1, PressureLevel.HIGH) == 1  # never below 1 unless CRITICAL
    assert window_size(1, PressureLevel.ELEVATED) == 1
    # A worker at HIGH+ that the plugin left running: one chunk per worker thread.
    assert window_size(base, PressureLevel.CRITICAL, paused=False, threads=3) == 3
    assert window_size(base, PressureLevel.HIGH, paused=False, threads=20) == 8
    assert window_size(base, PressureLevel.ELEVATED, paused=False, threads=3) == 6


# ------------------------------------------------------ real processes, memory
@pytest.mark.timeout(120)
def test_real_spill_under_400mb_limit_keeps_workers_alive() -> None:
    n_tables = 50  # 50 x 20 MB = 1 GB held, against 2 x 400 MB of worker memory
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit="400MB",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as c,
    ):
        c.register_plugin(PressurePlugin(interval=0.1))
        before = c.run(worker_state)
        assert all(s["pause"] is False for s in before.values())

        futures = c.map(make_table, range(n_tables))
        wait(futures, timeout=90)
        assert all(f.status == "finished" for f in futures)

        # The data really went to disk, according to Dask's own spill counters.
        ev = c.run(pressure_state)
        spilled_now = sum(e["dask_spilled_bytes_now"] for e in ev.values())
        written = sum(e["dask_disk_write_bytes_total"] for e in ev.values())
        assert spilled_now > 400_000_000 and written > 400_000_000
        # ...and the plugin made it spill earlier than Dask's fixed 60 % target would:
        # the headroom cap accounts for the ~150 MB the worker process itself uses.
        for e in ev.values():
            assert e["min_spill_target_bytes"] < e["original_settings"]["data_n"] - 50_000_000
            assert e["arrow_pool"] == "jemalloc"

        # Nobody died or restarted: same addresses and pids, no nanny kill events.
        after = c.run(worker_state)
        assert after.keys() == before.keys()
        assert {a: s["pid"] for a, s in after.items()} == {a: s["pid"] for a, s in before.items()}
        assert not c.get_events("worker-restart-memory")

        # Every table reads back intact from where it was spilled: checked on the worker that
        # holds it (a failed check raises here), not shipped whole to this process (1 GB).
        checks = c.map(check_table, futures, range(n_tables))
        wait(checks, timeout=90)
        assert [f.result() for f in checks] == [None] * n_tables
        assert c.run(worker_state).keys() == before.keys()

        for info in c.scheduler_info()["workers"].values():
            assert "chunkmill_pressure_level" in info["metrics"]
            assert "chunkmill_memory_percent" in info["metrics"]


@pytest.mark.timeout(120)
def test_outside_memory_pressure_pauses_and_resumes_worker() -> None:
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            memory_limit="1GB",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as c,
    ):
        addr = next(iter(c.scheduler_info()["workers"]))
        used0, _ = read_memory_usage()
        # 4 GiB rather than 2 of headroom: other jobs on a shared box move host memory by
        # a GB or more, which must neither start us above ELEVATED nor block the resume.
        limit = used0 + 4 * GiB
        # Any free memory counts as too little: pause at HIGH, whatever other processes free
        # meanwhile (test_small_footprint_runs_throttled_instead_of_pausing covers the rule).
        c.register_plugin(PressurePlugin(interval=0.1, limit_bytes=limit, pause_headroom=1000))
        watch = watching(c)

        # Metrics travel with heartbeats and are served on the worker's /metrics.
        metrics = until(
            lambda: c.scheduler_info()["workers"][addr]["metrics"].get("chunkmill_memory_percent")
        )
        assert metrics and 0 < metrics < 60
        assert c.scheduler_info()["workers"][addr]["metrics"]["chunkmill_pressure_level"] == 0
        assert "chunkmill_memory_fraction{" in scrape_metrics(c, addr)
        check_table(c.submit(make_table, 0, 1000).result(timeout=20), 0, 1000)

        # Another process eats memory: aim for 95 % of the budget, so that other processes
        # freeing memory meanwhile (a previous test's cluster) still leave it >= HIGH.
        balloon = Balloon(int(0.95 * limit) - read_memory_usage()[0])
        try:
            assert until(lambda: c.scheduler_info()["workers"][addr]["status"] == "paused")
            ev = one(c.run(pressure_state))
            assert ev["level"] in ("HIGH", "CRITICAL") and ev["pauses"] == 1, ev
            assert watch.window(8) < 8

            futures = c.map(make_table, range(1, 5), [1000] * 4)
            time.sleep(1.0)
            assert all(f.status == "pending" for f in futures)  # nothing runs while paused
        finally:
            balloon.close()

        assert until(lambda: c.scheduler_info()["workers"][addr]["status"] == "running")
        for i, f in enumerate(futures, start=1):
            check_table(f.result(timeout=30), i, 1000)
        ev = one(c.run(pressure_state))
        assert ev["resumes"] == 1 and ev["paused_by_plugin"] is False
        assert ev["level"] in ("NORMAL", "ELEVATED")
        watch.collect(c)
        levels = [e.new.name for e in watch.report.pressure_events]
        assert "HIGH" in levels or "CRITICAL" in levels
        assert levels[-1] in ("NORMAL", "ELEVATED")
        assert watch.report.pauses == 1

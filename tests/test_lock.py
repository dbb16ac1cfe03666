"""The output lock: exactly one holder among runs started together; a dead holder frees it."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import thorough

from pipeline.errors import OutputLocked
from pipeline.output.lock import OutputLock
from pipeline.output.store import open_store

CONTENDERS = 16
# Each trial is a race of all contenders released by one barrier: 15 of them (240 tries at
# the lock) by default, 40 with CHUNKMILL_THOROUGH=1.
TRIALS = 40 if thorough() else 15


def _contend(out: str, start: mp.Barrier, held: mp.Barrier, done: mp.Barrier,
             holders: mp.Array, trials: int) -> None:
    for trial in range(trials):
        lock = OutputLock(open_store(out))
        start.wait()
        try:
            lock.acquire()
        except OutputLocked:
            pass
        held.wait()  # every contender has tried while the winner still holds it
        if lock.held:
            with holders.get_lock():
                holders[trial] += 1
        done.wait()
        lock.release()


def test_exactly_one_of_many_runs_started_together_holds_the_lock(tmp_path) -> None:
    out = str(tmp_path / "o")
    ctx = mp.get_context("fork")
    start, held, done = (ctx.Barrier(CONTENDERS) for _ in range(3))
    holders = ctx.Array("i", TRIALS)
    procs = [ctx.Process(target=_contend, args=(out, start, held, done, holders, TRIALS))
             for _ in range(CONTENDERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert list(holders) == [1] * TRIALS
    assert not os.path.exists(os.path.join(out, "_chunkmill", "lock.json"))


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path) -> None:
    out = str(tmp_path / "o")
    store = open_store(out)
    # An old-style lock file naming a pid that is gone.
    os.makedirs(os.path.join(out, "_chunkmill"))
    with open(os.path.join(out, "_chunkmill", "lock.json"), "w") as f:
        json.dump({"pid": 2**22 + 12345, "host": os.uname().nodename, "started": 1.0}, f)
    with OutputLock(store) as lock:
        assert lock.held and lock.owner()["pid"] == os.getpid()
    # A holder killed with SIGKILL: the kernel releases its lock.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pipeline.output.lock import OutputLock
        from pipeline.output.store import open_store
        OutputLock(open_store({out!r})).acquire()
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked, match=f"pid {holder.pid}"):
            OutputLock(store).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with OutputLock(store) as lock:
        assert lock.held


def test_one_process_cannot_hold_the_lock_twice(tmp_path) -> None:
    store = open_store(str(tmp_path / "o"))
    with OutputLock(store), pytest.raises(OutputLocked, match="in use by another"):
        OutputLock(store).acquire()

"""One live run per OUT: an OS lock on ``OUT/_chunkmill/lock.json``, held for the whole run.

The lock is ``flock`` on the open lock file, not the file's existence: taking it is one atomic
system call, two runs can never both hold it, and the kernel lets go when the holder dies
(``kill -9`` included), so a lock left by a dead run is free without anyone deciding that it
is stale. The file's JSON (pid, host, start time) only names the holder in messages and
``chunkmill status``. The holder removes the file when it is done; a run that locked a file
which was removed meanwhile (its inode is no longer the path's) lets go and tries again.

Object stores have no exclusive create and no locks: there the lock is not taken
(documented: do not start two runs into one bucket prefix).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any

from pipeline.errors import OutputLocked
from pipeline.output.layout import STATE_DIR
from pipeline.output.store import Store

LOCK = "lock.json"


class OutputLock:
    """One live run per OUT: `acquire` raises `OutputLocked` while another run holds it."""

    def __init__(self, store: Store, run_id: str | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.path = store.path(STATE_DIR, LOCK)
        self.held = False
        self._fd: int | None = None
        self._me: dict[str, Any] | None = None
        """What this run wrote into a lock object on an object store."""

    def owner(self) -> dict[str, Any] | None:
        """What the lock file says about its holder (None when empty or unreadable)."""
        try:
            with open(self.path) as f:
                owner = json.load(f)
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _me_record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "run": self.run_id}

    def live(self) -> dict[str, Any] | None:
        """The holder's record while a run holds the lock, else None; takes nothing a run
        could notice (see `_probe`)."""
        if not self.store.local:
            owner = self._remote_owner()
            return owner if owner and not self._stale(owner) else None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if _probe(fd):
                return None
        finally:
            os.close(fd)
        return self.owner() or {}

    def acquire(self) -> None:
        if not self.store.local:
            self._acquire_remote()
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                _lock(fd)
            except BlockingIOError:
                os.close(fd)
                raise OutputLocked(self._busy_message()) from None
            except BaseException:
                os.close(fd)
                raise
            if self._still_the_file(fd):
                break
            os.close(fd)  # the holder removed it between our open and lock: lock the new one
        me = self._me_record()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        self.held = True

    def _acquire_remote(self) -> None:
        """An object written with a conditional create (S3 ``If-None-Match: *``)."""
        me = self._me_record()
        for _ in range(2):
            try:
                self.store.create_exclusive(self.path, json.dumps(me).encode())
            except NotImplementedError:
                self.held = True  # a store without exclusive create: the README's rule only
                return
            except FileExistsError:
                owner = self._remote_owner()
                if owner and not self._stale(owner):
                    raise OutputLocked(
                        f"{self.store.url} is in use by another chunkmill run (pid "
                        f"{owner.get('pid')} on {owner.get('host')}, started "
                        f"{time.ctime(owner.get('started', 0))}); wait for it, or delete "
                        f"{self.store.uri(self.path)} if that run is gone") from None
                self.store.remove(self.path)
                continue
            self.held, self._me = True, me
            return
        raise OutputLocked(f"{self.store.url}: could not take the lock")

    def _remote_owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.store.read_bytes(self.path))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    @staticmethod
    def _stale(owner: dict[str, Any]) -> bool:
        """A remote lock of a process of this host that is gone (another host's processes
        cannot be seen: their locks are trusted)."""
        if owner.get("host") != socket.gethostname():
            return False
        import psutil  # only here: `chunkmill status` imports this module

        try:
            pid = int(owner.get("pid", -1))
            proc = psutil.Process(pid)
            return proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() > owner.get(
                "started", 0) + 1
        except (psutil.NoSuchProcess, ValueError, TypeError):
            return True

    def _still_the_file(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def _busy_message(self) -> str:
        owner = None
        for _ in range(20):  # the holder writes its name right after locking
            owner = self.owner()
            if owner:
                break
            time.sleep(0.01)
        who = "another chunkmill run"
        if owner:
            who += (f" (pid {owner.get('pid')} on {owner.get('host')}, started "
                    f"{time.ctime(owner.get('started') or 0)})")
        return f"{self.store.url} is in use by {who}; wait for it or stop it"

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.remove(self.path)  # while still locked: a waiting run then locks a new file
            except FileNotFoundError:
                pass
            finally:
                os.close(self._fd)  # closing the last descriptor releases the flock
                self._fd = None
        elif self.held and self._me is not None:
            if self._remote_owner() == self._me:
                self.store.remove(self.path)
            self._me = None
        self.held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


PROBE_RETRIES = 10
"""Tries of a run to lock, ``PROBE_WAIT`` apart, before it calls OUT locked: a ``status``
probing the lock holds it (shared) for a few microseconds."""
PROBE_WAIT = 0.01


def _lock(fd: int) -> None:
    """Lock ``fd`` exclusively; `BlockingIOError` if another run holds it."""
    for attempt in range(PROBE_RETRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == PROBE_RETRIES - 1:
                raise
            time.sleep(PROBE_WAIT)


def _probe(fd: int) -> bool:
    """True if no run holds the lock of ``fd``. flock has no "test" call: this takes a shared
    lock and drops it at once; a run starting in that instant retries (`_lock`)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True

"""One live run per OUT: the lock file under ``OUT/_chunkmill/``."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import psutil

from pipeline.errors import OutputLocked
from pipeline.output.layout import STATE_DIR
from pipeline.output.store import Store

LOCK = "lock.json"


class OutputLock:
    """One live run per OUT. A lock left by a dead process (same host) is taken over."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.path(STATE_DIR, LOCK)
        self.held = False
        self._me: dict[str, Any] | None = None
        """What this run wrote into a lock object on an object store."""

    def _owner(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        if not self.store.local:
            self._acquire_remote()
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and not self._stale(owner):
                    raise OutputLocked(
                        f"{self.store.url} is in use by another chunkmill run (pid "
                        f"{owner.get('pid')} on {owner.get('host')}, started "
                        f"{time.ctime(owner.get('started', 0))}); wait for it or stop it"
                    ) from None
                os.remove(self.path)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise OutputLocked(f"{self.store.url}: could not take the lock")

    def _acquire_remote(self) -> None:
        """An object written with a conditional create (S3 ``If-None-Match: *``)."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
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
            return json.loads(self.store.read_bytes(self.path))
        except (OSError, ValueError):
            return None

    @staticmethod
    def _stale(owner: dict[str, Any]) -> bool:
        if owner.get("host") != socket.gethostname():
            return False  # cannot see another host's processes: trust the lock
        pid = int(owner.get("pid", -1))
        try:
            proc = psutil.Process(pid)
            return proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() > owner.get(
                "started", 0) + 1
        except psutil.NoSuchProcess:
            return True

    def release(self) -> None:
        if self.held and self.store.local:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                os.remove(self.path)
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

"""Run state under ``OUT/_chunkmill/``: the output lock and the journal of committed files.

Commit protocol for one file (all its chunks verified):

1. append ``committing`` with the new fragment list and the previous one (fsync);
2. rename every staged fragment into place; delete previous fragments not in the new list;
3. append ``committed`` (fsync).

A run killed anywhere leaves either the old or the new fragments visible, never both for long:
on the next run, a ``committing`` entry without its ``committed`` marks the file as not done,
and its listed fragments count as previous fragments, so the re-run replaces them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pyarrow as pa

from pipeline.errors import OutputLocked
from pipeline.sink import STATE_DIR, Store

JOURNAL = "journal.jsonl"
LOCK = "lock.json"


@dataclass(slots=True)
class FileRecord:
    """The last committed state of one input file."""

    file_id: str
    fingerprint: str
    config: str
    fragments: list[str]
    catalog: dict[str, Any]


class Journal:
    """Append-only JSON lines; the last complete entry per file wins."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.path(STATE_DIR, JOURNAL)

    def entries(self) -> Iterator[dict[str, Any]]:
        if not self.store.exists(self.path):
            return
        with (open(self.path, "rb") if self.store.local else
              self.store.fs.open(self.path, "rb")) as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:  # a torn last line from a killed run
                    continue

    def load(self) -> tuple[dict[str, FileRecord], dict[str, list[str]]]:
        """(committed files by id, fragments of interrupted commits by id).

        A file whose last word is ``failed`` keeps its fragments (nothing written is lost) but
        is not done: its record has an empty fingerprint, so the next run tries it again.
        """
        done: dict[str, FileRecord] = {}
        pending: dict[str, list[str]] = {}
        for e in self.entries():
            fid = e.get("file_id")
            event = e.get("event")
            if event == "committing":
                pending[fid] = list(e.get("fragments", [])) + list(e.get("previous", []))
            elif event == "committed" and fid in pending:
                pending.pop(fid)
                done[fid] = FileRecord(fid, e["fingerprint"], e["config"], e["fragments"],
                                       e.get("catalog", {}))
            elif event == "failed":
                prev = done.get(fid)
                done[fid] = FileRecord(fid, "", "", prev.fragments if prev else [],
                                       e.get("catalog", {}))
            elif event == "forget":
                done.pop(fid, None)
        return done, pending

    def append(self, *entries: dict[str, Any]) -> None:
        data = b"".join(json.dumps(e, default=str, separators=(",", ":")).encode() + b"\n"
                        for e in entries)
        self.store.makedirs(os.path.dirname(self.path))
        if self.store.local:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        else:  # object stores have no append: rewrite (small: one line per file)
            old = self.store.fs.cat_file(self.path) if self.store.exists(self.path) else b""
            self.store.write_bytes_atomic(self.path, old + data)


class OutputLock:
    """One live run per OUT. A lock left by a dead process (same host) is taken over."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.path(STATE_DIR, LOCK)
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        if not self.store.local:
            self.held = True  # object stores have no exclusive create; documented limitation
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
        self.held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SchemaStore:
    """The schema each table of OUT was last written with (``_chunkmill/schemas.json``).

    A later run unifies its files with it, so new fragments keep the table's established types
    when the new data fits them (an int column stays double once it has been double).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.path(STATE_DIR, "schemas.json")

    def load(self) -> dict[str, pa.Schema]:
        if not self.store.exists(self.path):
            return {}
        with (open(self.path, "rb") if self.store.local else
              self.store.fs.open(self.path, "rb")) as f:
            raw = json.load(f)
        return {table: pa.ipc.read_schema(pa.py_buffer(base64.b64decode(blob)))
                for table, blob in raw.items()}

    def save(self, schemas: dict[str, pa.Schema]) -> None:
        raw = {table: base64.b64encode(schema.serialize().to_pybytes()).decode()
               for table, schema in sorted(schemas.items())}
        self.store.write_bytes_atomic(self.path, json.dumps(raw, indent=1).encode())

"""The journal of committed files under ``OUT/_chunkmill/``.

Commit protocol for one file (all its chunks verified):

1. append ``committing`` with the new fragment list and the previous one (fsync);
2. rename every staged fragment into place; delete previous fragments not in the new list;
3. append ``committed`` (fsync).

A run killed anywhere leaves either the old or the new fragments visible, never both for long:
on the next run, a ``committing`` entry without its ``committed`` marks the file as not done,
and its listed fragments count as previous fragments, so the re-run replaces them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.output.layout import STATE_DIR
from pipeline.output.store import Store

JOURNAL = "journal.jsonl"


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

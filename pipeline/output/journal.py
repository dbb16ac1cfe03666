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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class JournalState:
    """What the journal says about OUT when a run starts."""

    done: dict[str, FileRecord]
    """The last committed (or failed) state of each file, by id."""
    interrupted: dict[str, list[str]]
    """Fragments (new and previous) of each file whose commit did not finish."""
    staged: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    """Chunks of not yet committed files whose fragments were staged and verified, by file id
    and chunk index (their ``staged`` journal entries): a re-run reuses them."""
    sharing: dict[str, set[str]] = field(init=False)
    """Fragments that hold rows of several files (bundles), with those files' ids."""

    def __post_init__(self) -> None:
        users: dict[str, set[str]] = {}
        for record in self.done.values():
            for rel in record.fragments:
                users.setdefault(rel, set()).add(record.file_id)
        for fid, rels in self.interrupted.items():
            for rel in rels:
                users.setdefault(rel, set()).add(fid)
        self.sharing = {rel: ids for rel, ids in users.items() if len(ids) > 1}

    def fragments_of(self, file_id: str) -> list[str]:
        """Every fragment that may hold the file's rows: committed, and of an interrupted
        commit."""
        record = self.done.get(file_id)
        return (record.fragments if record else []) + self.interrupted.get(file_id, [])

    def linked(self, seeds: Iterable[str]) -> set[str]:
        """``seeds`` that share a fragment with another file, and every file linked to them
        through shared fragments (they must be committed together)."""
        group: set[str] = set()
        frontier = [fid for fid in seeds
                    if any(r in self.sharing for r in self.fragments_of(fid))]
        while frontier:
            fid = frontier.pop()
            if fid in group:
                continue
            group.add(fid)
            for rel in self.fragments_of(fid):
                frontier.extend(self.sharing.get(rel, ()))
        return group

    def previous(self, file_id: str) -> list[str]:
        """Fragments a new commit of the file replaces: its record's, then an interrupted
        commit's."""
        prev = list(self.done[file_id].fragments) if file_id in self.done else []
        return prev + [p for p in self.interrupted.get(file_id, []) if p not in prev]


class Journal:
    """Append-only JSON lines; the last complete entry per file wins."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.path(STATE_DIR, JOURNAL)

    def entries(self) -> Iterator[dict[str, Any]]:
        if not self.store.exists(self.path):
            return
        with self.store.open_read(self.path) as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:  # a torn last line from a killed run
                    continue

    def load(self) -> JournalState:
        """Committed files by id, the fragments of interrupted commits by id, and the staged
        chunks of files not committed yet.

        A file whose last word is ``failed`` keeps its fragments (nothing written is lost) but
        is not done: its record has an empty fingerprint, so the next run tries it again.
        """
        done: dict[str, FileRecord] = {}
        pending: dict[str, list[str]] = {}
        staged: dict[str, dict[int, dict[str, Any]]] = {}
        for e in self.entries():
            fid = e.get("file_id")
            event = e.get("event")
            if event == "staged":
                staged.setdefault(fid, {})[int(e["index"])] = e
            elif event in ("committed", "failed", "forget"):
                staged.pop(fid, None)
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
        return JournalState(done, pending, staged)

    def append(self, *entries: dict[str, Any]) -> None:
        """Add ``entries`` durably, in one write."""
        self.store.append(self.path, b"".join(
            json.dumps(e, default=str, separators=(",", ":")).encode() + b"\n" for e in entries))

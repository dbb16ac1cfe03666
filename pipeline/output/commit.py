"""Committing verified files: a commit plan as plain data, then its application to OUT.

For a batch of files whose chunks are all verified (`plan_commit` decides, `apply_commit`
does):

1. append one ``committing`` entry per file to the journal, with its new fragments and the
   previous ones it replaces (one fsync for the batch);
2. rename every staged fragment into place (a fragment shared by a bundle's files once);
3. only then delete previous fragments that no new record lists and no other file's record
   still uses, and stale file-level ``_errors`` rows;
4. append the ``committed`` (and ``forget``) entries.

A run killed anywhere is finished by the next run: a ``committing`` entry without its
``committed`` marks the file as not done, and its fragments count as previous fragments of the
file's next commit (see `JournalState`), so nothing is lost (renames come before removals)
and nothing doubles (fragment names are deterministic per file and chunk).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pipeline.faults import crash_point
from pipeline.output.journal import FileRecord, Journal, JournalState
from pipeline.output.layout import ERRORS_DIR
from pipeline.output.store import Store
from pipeline.output.writer import Fragment


@dataclass(frozen=True, slots=True)
class CommitItem:
    """One file to commit: its new record and the staged fragments that hold its rows."""

    file_id: str
    fingerprint: str
    config: str
    catalog: dict[str, Any]
    staged: tuple[Fragment, ...]
    listed: bool = True
    """An input of this run (False: a gone file whose rows a bundle carried over)."""
    keep_file_error: bool = False
    """Its file-level ``_errors`` row is from this run (unreadable now, rows carried)."""


@dataclass(frozen=True, slots=True)
class CommitPlan:
    """Everything one commit does, in order; computed without touching OUT."""

    committing: tuple[dict[str, Any], ...]
    renames: tuple[tuple[str, str], ...]
    """(staged path, final path), each staged fragment once."""
    removals: tuple[str, ...]
    """Paths deleted after every rename: replaced fragments, stale file-level errors."""
    committed: tuple[dict[str, Any], ...]
    records: tuple[FileRecord, ...] = field(default=())
    forgotten: tuple[str, ...] = ()


def plan_commit(items: Sequence[CommitItem], forgets: Sequence[str], state: JournalState,
                run_id: str, store: Store) -> CommitPlan:
    """The commit of ``items`` (and the dropping of ``forgets``' rows) over ``state``.

    ``store`` only turns relative paths into paths; nothing is read or written.
    """
    finals = {it.file_id: list(dict.fromkeys(store.rel(f.final) for f in it.staged))
              for it in items}
    previous = {fid: state.previous(fid) for fid in [*finals, *forgets]}
    committing = tuple({"event": "committing", "file_id": it.file_id, "run": run_id,
                        "fragments": finals[it.file_id], "previous": previous[it.file_id]}
                       for it in items)
    renames: dict[str, str] = {}
    for it in items:
        for fragment in it.staged:
            renames.setdefault(fragment.staged, fragment.final)
    batch = set(previous)
    keep = {rel for rels in finals.values() for rel in rels}
    removals = []
    for rel in sorted({rel for rels in previous.values() for rel in rels} - keep):
        # A fragment another file's record still lists is never deleted under it. Only
        # fragments shared when the run began can have other users: ask just those.
        users = state.sharing.get(rel, set()) - batch
        if not any(rel in state.done[fid].fragments for fid in users if fid in state.done):
            removals.append(store.path(rel))
    removals += [store.path(ERRORS_DIR, f"{it.file_id}-file.parquet")
                 for it in items if not it.keep_file_error]
    committed = tuple({"event": "committed", "file_id": it.file_id, "run": run_id,
                       "fingerprint": it.fingerprint, "config": it.config,
                       "fragments": finals[it.file_id],
                       "catalog": {k: v for k, v in it.catalog.items() if k != "run_id"}}
                      for it in items)
    committed += tuple({"event": "forget", "file_id": fid, "run": run_id} for fid in forgets)
    records = tuple(FileRecord(it.file_id, it.fingerprint, it.config, finals[it.file_id],
                               it.catalog) for it in items)
    return CommitPlan(committing, tuple(renames.items()), tuple(removals), committed, records,
                      tuple(forgets))


def commit_steps(plan: CommitPlan, store: Store, journal: Journal) -> list[Callable[[], None]]:
    """The commit's writes to OUT, one callable each, in the order that keeps a crash
    resumable: journal, renames, removals, journal."""
    return ([partial(journal.append, *plan.committing)]
            + [partial(store.replace, staged, final) for staged, final in plan.renames]
            + [partial(store.remove, path) for path in plan.removals]
            + [partial(journal.append, *plan.committed)])


def apply_commit(plan: CommitPlan, store: Store, journal: Journal, state: JournalState) -> None:
    """Carry out ``plan`` on OUT, then record it in ``state``."""
    halfway = 1 + len(plan.renames) // 2
    for i, step in enumerate(commit_steps(plan, store, journal)):
        if i == halfway:
            crash_point("mid_commit")
        step()
    record_commit(plan, state)


def record_commit(plan: CommitPlan, state: JournalState) -> None:
    """What the journal now says, applied to the run's in-memory copy of it."""
    for record in plan.records:
        state.done[record.file_id] = record
        state.interrupted.pop(record.file_id, None)
        state.staged.pop(record.file_id, None)
    for fid in plan.forgotten:
        state.done.pop(fid, None)
        state.interrupted.pop(fid, None)
        state.staged.pop(fid, None)


__all__ = ["CommitItem", "CommitPlan", "plan_commit", "commit_steps", "apply_commit",
           "record_commit"]

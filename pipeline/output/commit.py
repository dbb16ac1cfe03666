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

Delta tables (``table_format="delta"``): steps 2 and 3 become one Delta transaction per table
(`TableChange`: adds of the new fragments, already in place, and removes of the previous
ones), so readers of the table never see a file half replaced; only ``_errors`` fragments
are still renamed and deleted. The journal entries also carry each file's Delta ``txn``
version per table (see `pipeline.output.delta`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pipeline.faults import crash_point
from pipeline.output.delta import DeltaOut, TableChange, table_of
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
    tables: tuple[TableChange, ...] = ()
    """Delta tables: one transaction each, between the renames and the removals."""
    run_id: str = ""


def plan_commit(items: Sequence[CommitItem], forgets: Sequence[str], state: JournalState,
                run_id: str, store: Store, table_format: str = "hive",
                file_errors: Set[str] | None = None) -> CommitPlan:
    """The commit of ``items`` (and the dropping of ``forgets``' rows) over ``state``.

    ``store`` only turns relative paths into paths; nothing is read or written.
    ``file_errors``: the names of the file-level ``_errors`` fragments OUT holds, when known
    (only those are removed); None removes each committed file's, whether it exists or not.
    """
    delta = table_format == "delta"
    finals = {it.file_id: list(dict.fromkeys(store.rel(f.final) for f in it.staged))
              for it in items}
    previous = {fid: state.previous(fid) for fid in [*finals, *forgets]}
    committing = tuple({"event": "committing", "file_id": it.file_id, "run": run_id,
                        "fragments": finals[it.file_id], "previous": previous[it.file_id]}
                       for it in items)
    renames: dict[str, str] = {}
    for it in items:
        for fragment in it.staged:
            if fragment.staged != fragment.final:  # Delta fragments are written in place
                renames.setdefault(fragment.staged, fragment.final)
    batch = set(previous)
    keep = {rel for rels in finals.values() for rel in rels}
    removals = []
    for rel in sorted({rel for rels in previous.values() for rel in rels} - keep):
        # A fragment another file's record still lists is never deleted under it. Only
        # fragments shared when the run began can have other users: ask just those.
        users = state.sharing.get(rel, set()) - batch
        if not any(rel in state.done[fid].fragments for fid in users if fid in state.done):
            removals.append(rel)
    tables: tuple[TableChange, ...] = ()
    if delta:
        tables = _table_changes(items, forgets, finals, previous, removals, state)
        committing = tuple(dict(e, delta=_versions_of(tables, e["file_id"]))
                           for e in committing)
        committing += tuple({"event": "forgetting", "file_id": fid, "run": run_id,
                             "delta": _versions_of(tables, fid)} for fid in forgets)
        removals = [rel for rel in removals if table_of(rel) == ERRORS_DIR]
    removals = [store.path(rel) for rel in removals]
    removals += [store.path(ERRORS_DIR, name) for name in
                 (file_error_name(it.file_id) for it in items if not it.keep_file_error)
                 if file_errors is None or name in file_errors]
    committed = tuple({"event": "committed", "file_id": it.file_id, "run": run_id,
                       "fingerprint": it.fingerprint, "config": it.config,
                       "fragments": finals[it.file_id],
                       "catalog": {k: v for k, v in it.catalog.items() if k != "run_id"}}
                      for it in items)
    committed += tuple({"event": "forget", "file_id": fid, "run": run_id} for fid in forgets)
    records = tuple(FileRecord(it.file_id, it.fingerprint, it.config, finals[it.file_id],
                               it.catalog) for it in items)
    return CommitPlan(committing, tuple(renames.items()), tuple(removals), committed, records,
                      tuple(forgets), tables, run_id)


def file_error_name(file_id: str) -> str:
    """The name, in ``_errors/``, of the fragment holding a failed file's one row."""
    return f"{file_id}-file.parquet"


def _table_changes(items: Sequence[CommitItem], forgets: Sequence[str],
                   finals: dict[str, list[str]], previous: dict[str, list[str]],
                   removals: list[str], state: JournalState) -> tuple[TableChange, ...]:
    """One `TableChange` per Delta table the commit touches, each file's ``txn`` version one
    past the highest the journal knows."""
    names: dict[str, None] = {}
    touching: dict[str, set[str]] = {}
    for fid in [*finals, *forgets]:
        for rel in [*finals.get(fid, ()), *previous.get(fid, ())]:
            table = table_of(rel)
            if table != ERRORS_DIR:
                names.setdefault(table)
                touching.setdefault(table, set()).add(fid)
    adds: dict[str, dict[str, Any]] = {}
    for it in items:
        for fragment in it.staged:
            if fragment.table != ERRORS_DIR:
                adds.setdefault(fragment.table, {}).setdefault(fragment.final, fragment)
    return tuple(TableChange(
        table, tuple(adds.get(table, {}).values()),
        tuple(rel for rel in removals if table_of(rel) == table),
        tuple((fid, state.delta.get((table, fid), -1) + 1) for fid in sorted(touching[table])))
        for table in names)


def _versions_of(tables: Sequence[TableChange], file_id: str) -> dict[str, int]:
    return {change.table: v for change in tables for fid, v in change.versions if fid == file_id}


def commit_steps(plan: CommitPlan, store: Store, journal: Journal,
                 delta: DeltaOut | None = None) -> list[Callable[[], None]]:
    """The commit's writes to OUT, one callable each, in the order that keeps a crash
    resumable: journal, renames, Delta transactions, removals, journal."""
    if plan.tables and delta is None:
        raise ValueError("a commit plan for Delta tables needs their DeltaOut")
    return ([partial(journal.append, *plan.committing)]
            + [partial(store.replace, staged, final) for staged, final in plan.renames]
            + [partial(_commit_table, delta, change, plan.run_id) for change in plan.tables]
            + [partial(store.remove, path) for path in plan.removals]
            + [partial(journal.append, *plan.committed)])


def _commit_table(delta: DeltaOut | None, change: TableChange, run_id: str) -> None:
    assert delta is not None
    delta.commit(change, run_id)


def apply_commit(plan: CommitPlan, store: Store, journal: Journal, state: JournalState,
                 delta: DeltaOut | None = None) -> None:
    """Carry out ``plan`` on OUT, then record it in ``state``."""
    halfway = 1 + (len(plan.renames) + len(plan.tables)) // 2
    for i, step in enumerate(commit_steps(plan, store, journal, delta)):
        if i == halfway:
            crash_point("mid_commit")
        step()
    record_commit(plan, state)


def record_commit(plan: CommitPlan, state: JournalState) -> None:
    """What the journal now says, applied to the run's in-memory copy of it."""
    for change in plan.tables:
        for fid, version in change.versions:
            state.delta[change.table, fid] = max(version, state.delta.get((change.table, fid),
                                                                          -1))
    for record in plan.records:
        state.done[record.file_id] = record
        state.interrupted.pop(record.file_id, None)
        state.staged.pop(record.file_id, None)
    for fid in plan.forgotten:
        state.done.pop(fid, None)
        state.interrupted.pop(fid, None)
        state.staged.pop(fid, None)


__all__ = ["CommitItem", "CommitPlan", "plan_commit", "commit_steps", "apply_commit",
           "record_commit", "file_error_name"]

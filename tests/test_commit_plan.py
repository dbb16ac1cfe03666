"""Commit plans under simulated crashes: whatever step a commit dies at, the next run's commit
leaves every file's rows visible exactly once (none lost, none doubled, pruned ones gone).

The model: OUT on fsspec's ``memory://`` (the real `Store`, `Journal` and commit code), a
fragment's content is the set of file ids whose rows it holds, files are either alone (one or
more fragments of their own) or members of a bundle (one fragment shared by all members).
Run 1 commits everything; run 2 changes some groups (new chunk counts, a bundle rewritten under
the same or a new name, members carried over or pruned) and is killed after ``k`` of its
commit's steps; run 3 redoes what the journal says is not done, as the runner would, with the
files possibly changed once more, and carried rows read back from wherever the journal says
they are (`carry_source`): a commit that deleted them too early loses them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.execution.bundles import carry_source
from pipeline.output.commit import CommitItem, commit_steps, plan_commit, record_commit
from pipeline.output.journal import Journal
from pipeline.output.store import open_store
from pipeline.output.writer import Fragment


@dataclass
class Group:
    files: list[str]
    bundle: bool
    fragments: dict[str, frozenset[str]]
    """Final fragment name -> the files whose rows it holds."""


def _layout(group_id: int, files: list[str], version: int, chunks: int, renamed: bool,
            keep: list[str]) -> dict[str, frozenset[str]]:
    if len(files) > 1:  # a bundle: one shared fragment, named by its members (or renamed)
        name = f"bundle-{group_id}" + (f"-v{version}" if renamed else "")
        return {name: frozenset(keep)}
    return {f"{files[0]}-{c:03d}": frozenset(files) for c in range(chunks)}


def _stage(store, run: str, fragments: dict[str, frozenset[str]]) -> dict[str, Fragment]:
    staged = {}
    for name, owners in fragments.items():
        path = store.path("_chunkmill", "staging", run, "t", f"{name}.{uuid.uuid4().hex[:6]}")
        with store.open_write(path) as f:
            f.write(",".join(sorted(owners)).encode())
        staged[name] = Fragment("t", "", path, store.path("t", f"{name}.parquet"), len(owners))
    return staged


def _items(store, run: str, groups: list[Group], fingerprint: str, carried: set[str],
           ) -> list[CommitItem]:
    items = []
    for g in groups:
        staged = _stage(store, run, g.fragments)
        for fid in g.files:
            mine = tuple(fr for name, fr in staged.items() if fid in g.fragments[name])
            if mine or not g.bundle:
                items.append(CommitItem(fid, fingerprint if fid not in carried else "old",
                                        "cfg", {"path": fid}, tuple(staged.values())
                                        if g.bundle else mine, listed=fid not in carried))
    return items


def _visible(store) -> dict[str, frozenset[str]]:
    out = {}
    for path in store.glob(store.path("t", "*.parquet")):
        owners = frozenset(store.read_bytes(path).decode().split(",")) - {""}
        out[path.rsplit("/", 1)[1].removesuffix(".parquet")] = owners
    return out


def _commit(store, journal, state, run, groups, fingerprint, carried, forgets, stop=1.0):
    items = _items(store, run, groups, fingerprint, carried)
    plan = plan_commit(items, forgets, state, run, store)
    steps = commit_steps(plan, store, journal)
    done = round(stop * len(steps))
    for step in steps[:done]:
        step()
    if done == len(steps):
        record_commit(plan, state)
    return done == len(steps)


scenario = st.fixed_dictionaries({
    "sizes": st.lists(st.integers(1, 3), min_size=1, max_size=4),
    "chunks": st.lists(st.integers(1, 3), min_size=4, max_size=4),
    "changes": st.lists(st.tuples(st.booleans(), st.integers(1, 3), st.booleans(),
                                  st.sampled_from(["keep", "carry", "prune"])),
                        min_size=4, max_size=4),
    "stop": st.floats(0, 1),  # where run 2 dies, as a share of its commit's steps
    "again": st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=4, max_size=4),
})


_CARRY_RENAMED = {"sizes": [2], "chunks": [1] * 4, "changes": [(True, 1, True, "carry")] * 4,
                  "stop": 0.5, "again": [(1, False)] * 4}
_GROW_THEN_SHRINK = {"sizes": [1], "chunks": [1] * 4, "changes": [(True, 3, False, "keep")] * 4,
                     "stop": 0.75, "again": [(1, False)] * 4}
_PRUNE = {"sizes": [3, 1], "chunks": [1, 2, 1, 1], "changes": [(True, 1, True, "prune")] * 4,
          "stop": 0.6, "again": [(2, True)] * 4}


@settings(max_examples=60, deadline=None)
@given(scenario)
@example(_CARRY_RENAMED)  # old fragments removed before the renames would lose carried rows
@example(_GROW_THEN_SHRINK)  # an interrupted commit's fragments must count as previous
@example(_PRUNE)
def test_a_commit_killed_at_any_step_is_finished_exactly_once(s: dict) -> None:
    store = open_store(f"memory://commit-{uuid.uuid4().hex}")
    journal = Journal(store)
    state = journal.load()
    groups, n = [], 0
    for gid, size in enumerate(s["sizes"]):
        files = [f"f{n + i}" for i in range(size)]
        n += size
        groups.append(Group(files, size > 1, _layout(gid, files, 1, s["chunks"][gid], False,
                                                     files)))
    _commit(store, journal, state, "r1", groups, "v1", set(), [])

    # Run 2: some groups change; in a changed bundle its last member is gone from the inputs
    # and either carried over (kept) or pruned (with --prune).
    changed, carried, forgets, expected = [], set(), [], {}
    for gid, g in enumerate(groups):
        change, chunks, renamed, gone = s["changes"][gid]
        if not change:
            expected.update({name: owners for name, owners in g.fragments.items()})
            continue
        keep = list(g.files)
        if g.bundle and gone != "keep":
            if gone == "carry":
                carried.add(g.files[-1])
            else:
                keep.remove(g.files[-1])
                forgets.append(g.files[-1])
        new = Group(keep, g.bundle, _layout(gid, g.files, 2, chunks, renamed, keep))
        changed.append(new)
        expected.update(new.fragments)
    finished = _commit(store, journal, state, "r2", changed, "v2", carried, forgets,
                       stop=s["stop"])

    # Run 3: a fresh look at the journal, then redo every group not fully committed; its
    # files may have changed again since, and carried rows come from where the journal says.
    state = journal.load()

    def content(rel: str) -> frozenset[str]:
        path = store.path(rel)
        return frozenset(store.read_bytes(path).decode().split(",")) if store.exists(path) \
            else frozenset()

    redo_forgets = [f for f in forgets if f in state.done]
    redo = []
    for gid, g in enumerate(changed):
        if not any(f not in carried and (f not in state.done or state.done[f].fingerprint != "v2"
                                         or f in state.interrupted) for f in g.files):
            continue
        keep = [f for f in g.files if f not in carried]
        for fid in g.files:
            if fid in carried and any(fid in content(rel) for rel in carry_source(
                    state, fid, lambda rel: store.exists(store.path(rel)))):
                keep.append(fid)
        chunks, renamed = s["again"][gid]
        for name in g.fragments:
            expected.pop(name)
        new = Group(g.files, g.bundle, _layout(100 + gid, g.files, 3, chunks, renamed, keep))
        expected.update({name: frozenset(o | (carried & set(g.files))) for name, o in
                         new.fragments.items()})
        redo.append(new)
    if finished:
        assert not redo and not redo_forgets  # a finished commit leaves nothing to redo
    _commit(store, journal, state, "r3", redo, "v2", carried, redo_forgets)
    visible = _visible(store)
    assert visible == expected  # exactly the new layout: nothing stale, nothing missing
    rows: dict[str, int] = {}
    for owners in visible.values():
        for fid in owners:
            rows[fid] = rows.get(fid, 0) + 1
    for g in groups:
        for fid in g.files:
            if fid in forgets:
                assert fid not in rows and fid not in state.done
            else:  # each file's rows are in exactly its own fragments, once
                assert rows[fid] == sum(fid in o for o in expected.values())
                assert fid in state.done
                assert all(store.exists(store.path(rel)) for rel in state.done[fid].fragments)


def test_two_runs_committing_one_file_at_once_both_count_as_previous() -> None:
    # Two Delta runs commit the same input file: run A's Delta commit wins, and run B reads
    # the journal again before A's "committed" line is there. B's new commit must replace
    # A's fragments too (they were lost from the journal's view once, and the file's rows
    # were in the table twice).
    store = open_store(f"memory://race-{uuid.uuid4().hex}")
    journal = Journal(store)
    journal.append({"event": "committing", "file_id": "f", "run": "A", "fragments": ["t/a"],
                    "previous": [], "delta": {"t": 0}})
    journal.append({"event": "committing", "file_id": "f", "run": "B", "fragments": ["t/b"],
                    "previous": [], "delta": {"t": 0}})
    state = journal.load()
    assert state.previous("f") == ["t/a", "t/b"] and state.delta["t", "f"] == 0
    journal.append({"event": "committing", "file_id": "f", "run": "B", "fragments": ["t/b"],
                    "previous": ["t/a", "t/b"], "delta": {"t": 1}})
    journal.append({"event": "committed", "file_id": "f", "run": "A", "fingerprint": "x",
                    "config": "c", "fragments": ["t/a"]})
    state = journal.load()
    # A is done; B's commit, journaled after A's, is still unfinished
    assert state.done["f"].fragments == ["t/a"] and state.interrupted["f"] == ["t/b", "t/a"]
    journal.append({"event": "committed", "file_id": "f", "run": "B", "fingerprint": "x",
                    "config": "c", "fragments": ["t/b"]})
    state = journal.load()
    assert state.done["f"].fragments == ["t/b"] and "f" not in state.interrupted

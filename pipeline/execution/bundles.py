"""Which files go into bundles (the client side): pure decisions over the journal and the plan.

Small files (one chunk, at most ``small_file_size``, a reader that allows it) are packed into
bundles of up to ``chunk_size`` bytes, at least ``min_bundles`` of them so every worker thread
gets one. Files that shared a fragment in OUT stay in one bundle whatever their size now, since
one commit must replace that fragment: a member that changed is read with its bundle mates,
and the rows of mates that are gone (or unreadable this time) are carried over, or dropped
with ``--prune``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pipeline.execution.bundle_task import Carry
from pipeline.execution.work import BundleRun, FileRun
from pipeline.output.journal import JournalState
from readers import get_reader
from readers.base import ChunkSpec


def riders(state: JournalState, present: set[str], changed: set[str], gone_too: bool
           ) -> tuple[set[str], set[str]]:
    """(files committed together with the changed ones, unchanged inputs to read again).

    ``present`` are this run's input file ids, ``changed`` those not skipped as unchanged;
    with ``gone_too`` (``--prune``) files no longer among the inputs count as changed too.
    """
    seeds = set(changed)
    if gone_too:
        seeds |= {fid for fid in state.done if fid not in present}
    group = state.linked(seeds)
    return group, {fid for fid in group if fid in present and fid not in seeds}


def group_bundles(todo: list[FileRun], state: JournalState, group: set[str], present: set[str],
                  failed: set[str], *, small_file_size: int, chunk_size: int, min_bundles: int,
                  prune: bool, carry_source: Callable[[str], list[str]],
                  whole_file: Callable[[FileRun], list[ChunkSpec]]
                  ) -> tuple[list[FileRun], list[BundleRun]]:
    """Split the runs into ones of their own and bundles of small files.

    ``carry_source(file_id)`` says where a gone file's rows are now; ``whole_file(run)`` plans
    a file as one chunk (a bundle member that grew past one chunk is read whole).
    """
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for fid in group:  # files that shared a fragment stay together
        for rel in state.fragments_of(fid):
            if rel in state.sharing:
                parent[root(fid)] = root("@" + rel)
    groups: dict[str, tuple[list[FileRun], list[Carry], list[str]]] = {}
    alone: list[FileRun] = []
    singles: list[tuple[list[Any], int]] = []
    for run in todo:
        fid = run.file_id
        chunks = run.chunks.chunks
        bundles = get_reader(run.planned.reader).bundles
        small = (bundles and len(chunks) == 1 and small_file_size > 0
                 and run.size <= small_file_size)
        if fid in parent and bundles:
            if len(chunks) > 1:  # grew since: read it as one chunk
                run.chunks.chunks = whole_file(run)
            groups.setdefault(root(fid), ([], [], []))[0].append(run)
        elif small:
            singles.append(([([run], [], [])], run.size))
        else:
            alone.append(run)
    for fid in group - (present - failed):
        if fid not in state.done or fid not in parent:
            continue
        entry = groups.setdefault(root(fid), ([], [], []))
        if prune and fid not in present:
            entry[2].append(fid)
        else:  # gone, or unreadable this time: its rows stay
            entry[1].append(Carry(fid, carry_source(fid), retry=fid in failed))
    items = [([entry], sum(r.size for r in entry[0]) + 1) for entry in groups.values()] + singles
    bundles_out = []
    for entries in pack(items, chunk_size, min_bundles):
        runs = [r for e in entries for r in e[0]]
        carries = [c for e in entries for c in e[1]]
        forget = [f for e in entries for f in e[2]]
        if len(runs) == 1 and not carries and not forget:
            alone.extend(runs)  # a bundle of one is just a file
        else:
            bundles_out.append(BundleRun(runs, carries, forget))
    return alone, bundles_out


def pack(items: list[tuple[list[Any], int]], max_bytes: int, min_bundles: int
         ) -> list[list[Any]]:
    """Group ``(members, bytes)`` items into bundles, in order; an item's members stay together.

    As many bundles as ``max_bytes`` needs, and at least ``min_bundles`` of them so every
    worker thread gets one, of about equal size: an item goes to the bundle whose share of
    the whole its middle falls in. Filling each bundle to the limit instead left a last bundle
    of a few files (10,000 files of 10 KB in four bundles made a fifth of two: one more task
    and a 20 KB fragment). No bundle passes ``max_bytes`` unless one item alone does.
    """
    total = sum(size for _, size in items)
    count = max(1, min_bundles, -(-total // max(1, max_bytes)))
    while True:
        bundles = _shares(items, max_bytes, total / count)
        # Shares close to the limit: a bundle closed early at the limit left the rest for
        # one bundle more. Smaller shares then.
        if len(bundles) <= count or count >= len(items):
            return bundles
        count += 1


def _shares(items: list[tuple[list[Any], int]], max_bytes: int, share: float
            ) -> list[list[Any]]:
    bundles: list[list[Any]] = []
    current: list[Any] = []
    size = done = 0
    for members, nbytes in items:
        if current and (size + nbytes > max_bytes
                        or done + nbytes / 2 > share * (len(bundles) + 1)):
            bundles.append(current)
            current, size = [], 0
        current.extend(members)
        size += nbytes
        done += nbytes
    if current:
        bundles.append(current)
    return bundles


def carry_source(state: JournalState, file_id: str, exists: Callable[[str], bool]
                 ) -> list[str]:
    """Where a gone file's rows are: its record's fragments, or those of a commit that was
    interrupted after its renames (previous fragments go only after all renames)."""
    record = state.done[file_id].fragments
    if all(exists(rel) for rel in record):
        return list(record)
    return [rel for rel in state.interrupted.get(file_id, []) if rel not in record]


def file_ids(runs: Iterable[FileRun]) -> set[str]:
    return {r.file_id for r in runs}


__all__ = ["riders", "group_bundles", "pack", "carry_source"]

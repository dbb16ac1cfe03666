"""The journal of committed files under ``OUT/_chunkmill/``.

Commit protocol for one file (all its chunks verified):

1. append ``committing`` with the new fragment list and the previous one (fsync);
2. rename every staged fragment into place; delete previous fragments not in the new list;
3. append ``committed`` (fsync).

A run killed anywhere leaves either the old or the new fragments visible, never both for long:
on the next run, a ``committing`` entry without its ``committed`` marks the file as not done,
and its listed fragments count as previous fragments, so the re-run replaces them.

Where it lives: on a local disk, one file appended with ``O_APPEND`` (``journal.jsonl``). On an
object store, where an append is a rewrite of the whole object, every append is an object of
its own under ``journal/``, named so that names sort in time order (nanoseconds, then a
writer token and a counter), and read back in that order. A run that finds more than
`COMPACT_AT` of them writes one object holding them all, named to sort right after the last one
it covers, whose first line lists the objects it covers; readers skip covered objects that are
still there, and the run then deletes them.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from json.encoder import c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring_ascii as _string
from typing import Any

from pipeline.output.layout import STATE_DIR
from pipeline.output.store import Store

JOURNAL = "journal.jsonl"
SEGMENTS = "journal"
COMPACT_AT = 200
"""Journal objects on an object store beyond which a run compacts them into one."""
LOCAL_COMPACT_AT = 10_000
"""Dead entries (see `Journal.compact`) from which a run rewrites a local journal."""


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
    delta: dict[tuple[str, str], int] = field(default_factory=dict)
    """(table, file id) -> the highest Delta transaction version any ``committing`` entry
    gave the file's commit to that Delta table (``--table-format delta``)."""
    entries: int = 0
    """Entries the journal holds."""
    dead: int = 0
    """... of which staged chunks of files committed (or failed, forgotten) since: see
    `Journal.compact`."""
    ends: dict[str, int] = field(default_factory=dict)
    """Position among the entries of each file's last commit, failure or forgetting: the
    entries before it of that file's staged chunks are the dead ones."""
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
        self.dir = store.path(STATE_DIR, SEGMENTS)
        self._token = uuid.uuid4().hex[:8]
        self._seq = 0

    def entries(self) -> Iterator[dict[str, Any]]:
        if self.store.local:
            if self.store.exists(self.path):
                with self.store.open_read(self.path) as f:
                    yield from _parse(f)
            return
        for _, lines in self._segments():
            yield from lines

    def _segments(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """The journal objects not covered by a compaction, in order, with their entries."""
        names = sorted(posixpath.basename(p) for p in self.store.glob(
            posixpath.join(self.dir, "*.jsonl")))
        read: list[tuple[str, list[dict[str, Any]]]] = []
        for name in names:
            try:
                with self.store.open_read(posixpath.join(self.dir, name)) as f:
                    read.append((name, list(_parse(f))))
            except FileNotFoundError:  # compacted away since the listing
                continue
        covered = {c for _, lines in read if lines and lines[0].get("event") == "compacted"
                   for c in lines[0].get("covers", ())}
        return [(name, [e for e in lines if e.get("event") != "compacted"])
                for name, lines in read if name not in covered]

    def compact(self, minimum: int = COMPACT_AT, exclusive: bool = False,
                state: JournalState | None = None) -> int:
        """Shrink the journal; returns how many objects (object store) or entries (local
        file) it folded or dropped.

        On an object store, more than ``minimum`` objects are folded into one. A local file is
        rewritten without its dead entries, only by a run that holds OUT's lock
        (``exclusive``: an append by a concurrent run would be lost) and only when they are at
        least `LOCAL_COMPACT_AT` and half the file. Dead: a chunk's ``staged`` entry followed
        by its file's ``committed``, ``failed`` or ``forget`` (`load` drops it there anyway);
        they are most of a journal, one per chunk ever read. ``state``: what `load` just
        read, which counts them (else the file is read once more to count).
        """
        if self.store.local:
            if not exclusive or not self.store.exists(self.path):
                return 0
            state = state or self.load()
            if state.dead < LOCAL_COMPACT_AT or 2 * state.dead < state.entries:
                return 0
            return self._compact_file(state.ends)
        segments = self._segments()
        if len(segments) <= minimum:
            return 0
        last = segments[-1][0]
        name = f"{last[:-len('.jsonl')]}.z{self._token}.jsonl"
        head = {"event": "compacted", "covers": [n for n, _ in segments]}
        entries = [e for _, lines in segments for e in lines]
        ends = _last_ends(entries)
        body = [head] + [e for i, e in enumerate(entries) if not _dead(i, e, ends)]
        self.store.write_bytes_atomic(posixpath.join(self.dir, name), _lines(body))
        for covered, _ in segments:
            self.store.remove(posixpath.join(self.dir, covered))
        return len(segments)

    def _compact_file(self, ends: dict[str, int]) -> int:
        """The local journal rewritten without its dead entries (see `compact`; ``ends`` as
        `load` found them), by a temporary file renamed over it: a kill leaves the old
        journal or the new one."""
        dead = 0
        tmp = self.store.temp_name(self.path)
        # Streamed, the kept lines as they were: the journal may be far bigger than memory
        # wants to hold.
        with self.store.open_read(self.path) as f, self.store.open_write(tmp) as out:
            for i, (line, e) in enumerate(_parsed_lines(f)):
                if _dead(i, e, ends):
                    dead += 1
                else:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
        self.store.sync(tmp)
        self.store.replace(tmp, self.path)
        return dead

    def load(self, entries: Iterable[dict[str, Any]] | None = None) -> JournalState:
        """Committed files by id, the fragments of interrupted commits by id, and the staged
        chunks of files not committed yet.

        ``entries``: the journal's, if already read. A file whose last word is ``failed``
        keeps its fragments (nothing written is lost) but is not done: its record has an
        empty fingerprint, so the next run tries it again.
        """
        done: dict[str, FileRecord] = {}
        pending: dict[str, dict[str | None, list[str]]] = {}
        staged: dict[str, dict[int, dict[str, Any]]] = {}
        delta: dict[tuple[str, str], int] = {}
        dead, since_end, ends = 0, Counter[str](), {}
        count = 0
        for count, e in enumerate(self.entries() if entries is None else entries, 1):
            fid = e.get("file_id")
            event = e.get("event")
            if event == "staged":
                since_end[fid] += 1
            elif event in _ENDS:
                dead += since_end.pop(fid, 0)
                ends[fid] = count - 1
            for table, version in (e.get("delta") or {}).items():
                delta[table, fid] = max(int(version), delta.get((table, fid), -1))
            if event == "staged":
                staged.setdefault(fid, {})[int(e["index"])] = e
            elif event in ("committed", "failed", "forget"):
                staged.pop(fid, None)
            if event == "committing":
                # Per run: two Delta runs may be committing one file at the same time, and
                # the loser must still see (and replace) the winner's fragments.
                runs = pending.setdefault(fid, {})
                runs.pop(e.get("run"), None)
                runs[e.get("run")] = [*e.get("fragments", []), *e.get("previous", [])]
            elif event == "committed" and e.get("run") in pending.get(fid, {}):
                # This commit replaced what the commits journaled before its own listed;
                # commits journaled after it (another run's, racing) are still unfinished.
                runs = pending[fid]
                order = list(runs)
                for run in order[:order.index(e.get("run")) + 1]:
                    runs.pop(run)
                if not runs:
                    pending.pop(fid)
                done[fid] = FileRecord(fid, e["fingerprint"], e["config"], e["fragments"],
                                       e.get("catalog", {}))
            elif event == "failed":
                prev = done.get(fid)
                done[fid] = FileRecord(fid, "", "", prev.fragments if prev else [],
                                       e.get("catalog", {}))
            elif event == "forget":
                done.pop(fid, None)
        interrupted = {fid: list(dict.fromkeys(rel for rels in runs.values() for rel in rels))
                       for fid, runs in pending.items()}
        return JournalState(done, interrupted, staged, delta, entries=count, dead=dead,
                            ends=ends)

    def append(self, *entries: dict[str, Any], sync: bool = True) -> None:
        """Add ``entries`` in one write (one object on an object store), durably unless
        ``sync`` is False: on a local disk those may then be lost with the machine (not with
        the process) until the next durable append, whose fsync covers them too."""
        if not entries:
            return
        if self.store.local:
            self.store.append(self.path, _lines(entries), sync)
            return
        self._seq += 1
        name = f"{time.time_ns():020d}-{self._token}-{self._seq:06d}.jsonl"
        self.store.create_exclusive(posixpath.join(self.dir, name), _lines(entries))


def _json_encoder() -> Callable[[Any], str]:
    """``json.dumps(o, default=str, separators=(",", ":"))`` without building an encoder per
    call (``dumps`` makes a new one each time, most of its cost for a small entry)."""
    encoder = json.JSONEncoder(default=str, separators=(",", ":"))
    try:  # the arguments JSONEncoder.iterencode gives it (Python 3.11 to 3.13)
        one = c_make_encoder(None, encoder.default, _string, None, ":", ",", False, False, True)
    except TypeError:  # no C encoder, or another signature: the documented way
        return encoder.encode
    return lambda o: "".join(one(o, 0))


_encode = _json_encoder()


class StagedEntry(dict):
    """A ``staged`` entry, one per chunk, as `staging.staged_entry` makes it: its keys come in
    the order `_line` writes them, its counts are ints and its ids and token text, so it is
    written field by field, several times faster than by the generic encoder (which was a
    fifth of the client's work per chunk with a million chunks: `benchmarks/bench_scale.py`).
    """

    __slots__ = ()


def _line(e: dict[str, Any]) -> str:
    """``e`` as one line of JSON, exactly as ``json.dumps(e, default=str, separators=(",",
    ":"))`` writes it."""
    if type(e) is not StagedEntry:
        return _encode(e)
    fragments, facts = e["fragments"], e["facts"]
    return (f'{{"event":"staged","file_id":{_string(e["file_id"])},"run":{_string(e["run"])},'
            f'"index":{e["index"]},"chunk_id":{_string(e["chunk_id"])},'
            f'"token":{_string(e["token"])},"rows":{e["rows"]},"bytes_read":{e["bytes_read"]},'
            f'"error_count":{e["error_count"]},"record_errors":{e["record_errors"]},'
            f'"fragments":{_encode(fragments) if fragments else "[]"},'
            f'"facts":{"null" if facts is None else _string(facts)}}}')


def _lines(entries: Iterable[dict[str, Any]]) -> bytes:
    return "".join(_line(e) + "\n" for e in entries).encode()


def _parse(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for _, entry in _parsed_lines(lines):
        yield entry


def _parsed_lines(lines: Iterable[bytes]) -> Iterator[tuple[bytes, dict[str, Any]]]:
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a killed run
            continue
        if isinstance(entry, dict):
            yield line, entry


_ENDS = ("committed", "failed", "forget")
"""Events after which `Journal.load` forgets a file's staged chunks."""


def _last_ends(entries: Iterable[dict[str, Any]]) -> dict[Any, int]:
    """The position of each file's last `_ENDS` event among ``entries``."""
    return {e.get("file_id"): i for i, e in enumerate(entries) if e.get("event") in _ENDS}


def _dead(i: int, entry: dict[str, Any], ends: dict[Any, int]) -> bool:
    """Whether ``entry``, at position ``i``, is a staged chunk its file's commit (or failure,
    or forgetting) has made useless since."""
    return entry.get("event") == "staged" and ends.get(entry.get("file_id"), -1) > i

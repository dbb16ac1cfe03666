"""A file's chunks until its reader is satisfied with them: the one reconcile loop.

Readers that check chunks against each other (`Reader.reconciles`: the text readers verify
record boundaries) may, once every chunk of a file has finished, ask for some chunks to run
again or for a whole new plan. `FileChunks` keeps that state for one file; the pipeline's runner
drives it with chunks running on a cluster, and `read_settled` drives it in the calling process
(bundle members inside a worker, `pipeline.read`-style tests, the reader contract tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from readers.base import ChunkOutcome, ChunkSpec, Description, Reader, Source


class ChunkResult(Protocol):
    """What the loop needs of a finished chunk (the pipeline's manifests have more)."""

    @property
    def index(self) -> int: ...

    @property
    def outcome(self) -> ChunkOutcome: ...


R = TypeVar("R", bound=ChunkResult)

#: Reconcile rounds before giving up: guess, fix wrong parity guesses, fall back to a stream.
MAX_ROUNDS = 5


@dataclass(slots=True)
class FileChunks(Generic[R]):
    """One file's chunk plan and finished chunks, while they are being reconciled."""

    source: Source
    reader: type[Reader]
    description: Description
    chunks: list[ChunkSpec]
    results: dict[int, R] = field(default_factory=dict)
    rounds: int = 0
    """Times the reader asked for chunks again."""
    notes: list[str] = field(default_factory=list)
    """Why it did (a re-planned file's catalog metadata says so)."""

    @property
    def complete(self) -> bool:
        return len(self.results) == len(self.chunks)

    @property
    def manifests(self) -> list[R]:
        """Finished chunks in plan order."""
        return [self.results[c.index] for c in self.chunks]

    def record(self, manifest: R) -> None:
        self.results[manifest.index] = manifest

    def settle(self) -> tuple[list[ChunkSpec], list[R]]:
        """Reconcile a complete file: (chunks to run again, results thrown away).

        Both empty when the reader is satisfied and the file can be committed.
        """
        cls = self.reader
        if not cls.reconciles:
            return [], []
        if self.rounds >= MAX_ROUNDS:
            raise RuntimeError(f"{self.source.path}: chunks did not reconcile in "
                               f"{MAX_ROUNDS} rounds")
        rec = cls().reconcile(self.source, self.description, self.chunks,
                              [m.outcome for m in self.manifests])
        if rec.replace_plan is not None:
            dropped = list(self.results.values())
            self.results.clear()
            self.chunks = list(rec.replace_plan)
            self.rounds += 1
            self.notes.append(rec.note or "re-planned")
            return list(rec.replace_plan), dropped
        if rec.rerun:
            dropped = [self.results.pop(c.index) for c in rec.rerun]
            by_index = {c.index: c for c in rec.rerun}
            self.chunks = [by_index.get(c.index, c) for c in self.chunks]
            self.rounds += 1
            return list(rec.rerun), dropped
        return [], []


def read_settled(file: FileChunks, run: Callable[[ChunkSpec], R],
                 discard: Callable[[R], None] = lambda m: None) -> FileChunks:
    """Run ``file``'s chunks in this process until its reader is satisfied.

    ``run`` reads one chunk; ``discard`` drops what a result that reconciliation threw away
    produced.
    """
    pending = list(file.chunks)
    while pending:
        for chunk in pending:
            file.record(run(chunk))
        pending, dropped = file.settle()
        for manifest in dropped:
            discard(manifest)
    return file


__all__ = ["FileChunks", "read_settled", "MAX_ROUNDS"]

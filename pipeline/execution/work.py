"""The units of work a run schedules: one file's chunks, or a bundle of small files."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipeline.execution.bundle_task import BundleManifest, Carry, bundle_id
from pipeline.execution.task import ChunkManifest
from pipeline.planning.describe import PlannedFile
from readers import get_reader
from readers.settle import FileChunks


@dataclass(slots=True)
class FileRun:
    """One file of a run: what was planned, and its chunks until they are reconciled."""

    planned: PlannedFile
    chunks: FileChunks[ChunkManifest]
    started: float = field(default_factory=time.time)
    tokens: dict[tuple[str, ...], str] = field(default_factory=dict)
    """The file's part of its chunks' tokens, by the tables they write (`chunk_token`)."""

    @classmethod
    def of(cls, planned: PlannedFile) -> FileRun:
        assert planned.reader is not None and planned.description is not None
        return cls(planned, FileChunks(planned.source, get_reader(planned.reader),
                                       planned.description, list(planned.chunks)))

    @property
    def file_id(self) -> str:
        return self.planned.source.file_id

    @property
    def size(self) -> int:
        return self.planned.source.size


@dataclass(slots=True)
class BundleRun:
    """Small files read by one task into shared fragments, and committed together."""

    members: list[FileRun]
    carries: list[Carry] = field(default_factory=list)
    """Files gone from the inputs (or unreadable now) whose rows the new fragments keep."""
    forget: list[str] = field(default_factory=list)
    """Files gone from the inputs (``--prune``) whose rows this bundle's commit drops."""
    attempts: int = 0
    manifest: BundleManifest | None = None

    @property
    def id(self) -> str:
        return bundle_id([r.file_id for r in self.members] + [c.file_id for c in self.carries])

    @property
    def size(self) -> int:
        return sum(r.size for r in self.members)


__all__ = ["FileRun", "BundleRun"]

"""The run report: a plain record of what a run did, saved as JSON under OUT/_chunkmill/runs/."""

from __future__ import annotations

import heapq
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.pressure.events import MemoryPoint, PressureEvent

FILE_ROWS = 2000
"""Most per-file rows a run report keeps (a run over millions of files keeps its report small)."""
CHUNK_RECORDS = 20_000
"""Most chunk records a run report keeps: beyond, a uniform sample of the run's chunks (a run
of a million chunks keeps its report, and the client, small; `chunks` has the count)."""


@dataclass
class ChunkRecord:
    """Timing and size of one finished chunk task."""

    chunk_id: str
    path: str
    worker: str
    started: float
    finished: float
    rows: int
    bytes: int
    errors: int
    attempt: int = 0
    thread: str = ""
    """The worker thread (a worker of the threads layout has several)."""


@dataclass
class RunReport:
    """What one ``ingest`` did. ``str(report)`` is the one-line summary the CLI prints."""

    run_id: str
    out: str
    started: float
    finished: float = 0.0
    files: dict[str, int] = field(default_factory=dict)
    """Count of files per catalog status (ok, partial, failed, unchanged)."""
    rows: int = 0
    bytes_read: int = 0
    chunks: int = 0
    chunk_reruns: int = 0
    chunks_reused: int = 0
    """Chunks an interrupted run had staged and verified, taken as they were."""
    errors: int = 0
    failures: list[str] = field(default_factory=list)
    """One line per failed file (path and reason)."""
    notes: list[str] = field(default_factory=list)
    dashboard: str | None = None
    pressure_events: list[PressureEvent] = field(default_factory=list)
    """The workers' pressure level changes (and pauses and resumes), as their plugins logged
    them."""
    spilled_bytes: int = 0
    """Bytes the workers spilled to disk (Dask's own counters)."""
    pauses: int = 0
    """Times the pressure plugin paused a worker."""
    pressure: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per worker: the pressure plugin's counters at the end of the run."""
    memory_timeline: list[MemoryPoint] = field(default_factory=list)
    """Each worker's memory and pressure level, once per ``chunkmill.pressure.interval`` and
    at least at the start and the end of the run."""
    chunk_records: list[ChunkRecord] = field(default_factory=list)
    """At most `CHUNK_RECORDS` finished chunk tasks (see `add_chunk`)."""
    chunk_tasks: int = 0
    """Chunk tasks that finished (``chunk_records`` may hold a sample of them)."""
    file_rows: list[dict[str, Any]] = field(default_factory=list)
    """Per input file of the run (at most `FILE_ROWS`): path, format, status, rows, rejected,
    chunks, bytes, seconds; the catalog has every file."""
    _sampler: random.Random | None = field(default=None, repr=False, compare=False)

    def add_chunk(self, record: ChunkRecord) -> None:
        """Keep ``record``: all of them up to `CHUNK_RECORDS`, then a uniform sample of that
        many (reservoir sampling, seeded by the run id so a report is reproducible)."""
        slot = self.chunk_slot()
        if slot is not None:
            self.keep_chunk(slot, record)

    def chunk_slot(self) -> int | None:
        """Count one more finished chunk task and say where its record goes (None: the sample
        leaves it out, so a caller with a million chunks need not make their records)."""
        self.chunk_tasks += 1
        kept = len(self.chunk_records)
        if kept < CHUNK_RECORDS:
            return kept
        if self._sampler is None:
            self._sampler = random.Random(self.run_id)
        slot = self._sampler.randrange(self.chunk_tasks)
        return slot if slot < CHUNK_RECORDS else None

    def keep_chunk(self, slot: int, record: ChunkRecord) -> None:
        """Put ``record`` where `chunk_slot` said."""
        if slot == len(self.chunk_records):
            self.chunk_records.append(record)
        else:
            self.chunk_records[slot] = record

    def note_files(self, catalog: list[dict[str, Any]]) -> None:
        """Keep the per-file summary of the run's catalog rows (failed and partial first)."""
        order = {"failed": 0, "partial": 1}
        rows = heapq.nsmallest(FILE_ROWS, catalog,
                               key=lambda r: (order.get(r.get("status"), 2), r.get("path")))
        self.file_rows = [{"path": r.get("path"), "format": r.get("format"),
                           "status": r.get("status"), "rows": r.get("rows", 0),
                           "rejected": r.get("error_count", 0), "chunks": r.get("chunks", 0),
                           "bytes": r.get("size_bytes", 0), "seconds": r.get("duration_s", 0)}
                          for r in rows[:FILE_ROWS]]

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished - self.started)

    @property
    def throughput_mb_s(self) -> float:
        return self.bytes_read / 1e6 / self.duration_s if self.duration_s else 0.0

    @property
    def ok(self) -> bool:
        return not self.files.get("failed")

    @property
    def exit_code(self) -> int:
        """0 when no file failed (rejected records alone do not fail a run), else 1."""
        return 0 if self.ok else 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """A report back from its saved JSON (derived fields are recomputed, not read)."""
        known = {f for f in cls.__dataclass_fields__}
        fields_ = {k: v for k, v in data.items() if k in known}
        fields_["chunk_records"] = [ChunkRecord(**r) for r in data.get("chunk_records") or []]
        fields_["pressure_events"] = [PressureEvent.from_dict(e)
                                      for e in data.get("pressure_events") or []]
        fields_["memory_timeline"] = [MemoryPoint.from_dict(p)
                                      for p in data.get("memory_timeline") or []]
        return cls(**fields_)

    def asdict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["_sampler"]
        data.update(pressure_events=[e.asdict() for e in self.pressure_events],
                    memory_timeline=[p.asdict() for p in self.memory_timeline])
        data.update(duration_s=self.duration_s, throughput_mb_s=self.throughput_mb_s,
                    exit_code=self.exit_code)
        return data

    def to_json(self) -> str:
        return json.dumps(self.asdict(), indent=2, default=str)

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.files.items()) if n)
        text = (f"chunkmill: {sum(self.files.values())} file(s) ({counts or 'none'}), "
                f"{self.rows:,} rows, {self.errors:,} rejected, {self.bytes_read / 1e6:,.1f} MB "
                f"in {self.duration_s:.1f}s ({self.throughput_mb_s:,.0f} MB/s) -> {self.out}")
        if self.failures:
            more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            text += f"\nchunkmill: FAILED {self.failures[0]}{more}"
        return text

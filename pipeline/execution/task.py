"""The work of one chunk, as one Dask task: read bytes -> parse -> Arrow -> staged fragments.

The task returns a small `ChunkManifest` (paths, counts, timings, reader facts), never data, so
the client and scheduler hold kilobytes per chunk whatever the input size. Also builds the lazy
graph behind `pipeline.read` (see `pipeline.execution.lazy`).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.execution.retry import backoff, is_transient
from pipeline.output.rejects import errors_table, stage_errors
from pipeline.output.writer import Fragment, FragmentWriter, SinkSpec
from readers import get_reader
from readers.base import ChunkContext, ChunkSpec, Description, RestartChunk, Source


@dataclass(slots=True)
class ChunkTask:
    """Everything a worker needs for one chunk (pickled into the task)."""

    source: Source
    reader: str
    chunk: ChunkSpec
    description: Description
    reader_options: dict[str, Any]
    sink: SinkSpec | None
    retries: int = 2
    """Attempts after a transient I/O failure (backoff with jitter); parse errors never retry."""


@dataclass(slots=True)
class ChunkManifest:
    """What a chunk task reports back: small, whatever the chunk size."""

    chunk_id: str
    file_id: str
    index: int
    rows: int = 0
    bytes_read: int = 0
    fragments: list[Fragment] = field(default_factory=list)
    error_count: int = 0
    facts: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    started: float = 0.0
    finished: float = 0.0
    failed: str | None = None

    @property
    def duration(self) -> float:
        return self.finished - self.started


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def read_with_retries(reader: Any, source: Source, chunk: ChunkSpec, description: Description,
                      options: dict[str, Any], retries: int,
                      write: Callable[[str, pa.Table], None], reset: Callable[[], None]
                      ) -> tuple[ChunkManifest, ChunkContext]:
    """Read one chunk into ``write``; bad data never raises, it is reported in the context.

    Transient I/O failures restart the chunk from scratch (``reset`` drops what was written)
    after a backoff, up to ``retries`` times; anything else becomes a ``chunk`` rejection.
    """
    attempt = 0
    restarted = False
    while True:
        manifest = ChunkManifest(chunk.id, chunk.file_id, chunk.index, worker=_worker_name(),
                                 started=time.time())
        ctx = ChunkContext(source, chunk)
        try:
            for table, rows in reader.read(source, chunk, description, options, ctx):
                write(table, rows)
                manifest.rows += rows.num_rows
            break
        except RestartChunk as restart:
            reset()
            if restarted:
                raise RuntimeError(f"{source.path}: chunk {chunk.index} asked for a second "
                                   f"restart ({restart.reason})") from restart
            restarted = True
            options = {**options, **restart.changes}
            continue
        except MemoryError:
            reset()
            raise
        except Exception as exc:  # a broken chunk is an _errors row, the run goes on
            if is_transient(exc) and attempt < retries:
                reset()
                time.sleep(backoff(attempt))
                attempt += 1
                continue
            text = str(exc).strip().splitlines()
            ctx.reject(kind="chunk", error_type=type(exc).__name__, byte_offset=chunk.offset,
                       message=f"{source.path}: chunk {chunk.index} at offset {chunk.offset}: "
                               f"{text[0] if text else type(exc).__name__}"
                               + (f" (after {attempt} retries)" if attempt else ""))
            manifest.failed = ctx.rejected[-1].message
            break
    manifest.facts["attempts"] = attempt + 1
    manifest.error_count = len(ctx.rejected)
    manifest.facts.update(ctx.facts)
    manifest.bytes_read = chunk.length if chunk.selector != ("stream",) else source.size
    return manifest, ctx


def run_chunk(task: ChunkTask) -> ChunkManifest:
    """Run one chunk end to end (inside a worker): staged fragments and a manifest."""
    chunk, source = task.chunk, task.source
    writer = FragmentWriter(task.sink, chunk.id, source.file_id)
    try:
        manifest, ctx = read_with_retries(
            get_reader(task.reader)(), source, chunk, task.description, task.reader_options,
            task.retries, writer.write, writer.abort)
        manifest.fragments = writer.close()
    except BaseException:
        writer.abort()
        raise
    if ctx.rejected:
        table = errors_table(((source.file_id, source.path, chunk.index, r)
                              for r in ctx.rejected), task.sink.run_id)
        manifest.fragments.append(stage_errors(task.sink, chunk.id, table))
    manifest.finished = time.time()
    pa.default_memory_pool().release_unused()
    return manifest

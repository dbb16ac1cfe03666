"""The work of one chunk, as one Dask task: read bytes -> parse -> Arrow -> staged fragments.

The task returns a small `ChunkManifest` (paths, counts, timings, the reader's facts), never
data, so the client and scheduler hold kilobytes per chunk whatever the input size.
`read_chunk` is the one place a reader's ``read`` is driven (restarts, retries, a broken chunk
turned into an ``_errors`` row, the per-batch `TableHook`): chunk tasks, bundle tasks and
`pipeline.read` all use it.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.errors import OUTPUT_ERRNOS, OutputUnwritable
from pipeline.execution.hook import TableHook
from pipeline.execution.live import Reporter
from pipeline.output.layout import table_name
from pipeline.output.partition_guard import TooManyPartitions
from pipeline.output.rejects import errors_table, stage_errors
from pipeline.output.writer import Fragment, FragmentWriter, SinkSpec
from pipeline.retry import retrying
from readers import get_reader
from readers.base import (
    ChunkContext,
    ChunkOutcome,
    ChunkSpec,
    Description,
    Reader,
    RestartChunk,
    Source,
)
from readers.errors import error_code
from readers.options import ReaderOptions

#: Set when the run is stopping (Ctrl-C): chunks running in this process give up at their
#: next parse block instead of finishing.
CANCEL = threading.Event()


class ChunkCancelled(BaseException):  # noqa: N818 - a stop, not an error: never an _errors row
    """The run is stopping: this chunk's output is dropped, to be read by the next run."""


@dataclass(slots=True)
class ChunkTask:
    """Everything a worker needs for one chunk (pickled into the task)."""

    source: Source
    reader: str
    chunk: ChunkSpec
    description: Description
    options: ReaderOptions
    sink: SinkSpec
    retries: int = 2
    """Attempts after a transient I/O failure (backoff with jitter); parse errors never retry."""
    hook: TableHook | None = None
    """Applied to every parsed batch before it is written (declared types, derived columns,
    the user's transform)."""


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
    chunk_errors: int = 0
    """Of ``error_count``: rejections of a whole chunk or the rest of one (kind ``chunk``)."""
    record_errors: int = 0
    """Of ``error_count``, the rejected records (not chunks)."""
    facts: Any = None
    """The reader's own record of what the chunk learnt (`ChunkContext.facts`)."""
    attempts: int = 1
    worker: str = ""
    thread: str = ""
    """The worker thread that ran it (a worker has several in the threads layout)."""
    started: float = 0.0
    finished: float = 0.0
    failed: str | None = None
    """Why the chunk produced nothing of its own (it is then one ``_errors`` row)."""
    stop: TooManyPartitions | None = None
    """The whole run must stop: this chunk's rows alone reach more partitions than allowed
    (nothing of the chunk was kept)."""

    @property
    def duration(self) -> float:
        return self.finished - self.started

    @property
    def outcome(self) -> ChunkOutcome:
        return ChunkOutcome(self.facts, self.failed is not None)


def worker_name() -> str:
    """The Dask worker's address; else (this process runs the task: a small job,
    `pipeline.read`) ``host:pid``."""
    if "distributed" in sys.modules:  # never imported just to ask
        from distributed import get_worker

        try:
            return get_worker().address
        except ValueError:
            pass
    return f"{socket.gethostname()}:{os.getpid()}"


def read_chunk(reader: Reader, source: Source, chunk: ChunkSpec, description: Description,
               options: ReaderOptions, retries: int,
               write: Callable[[str, pa.Table], None], reset: Callable[[], None],
               hook: TableHook | None = None, progress: Callable[[int, int, int], None] | None
               = None) -> tuple[ChunkManifest, ChunkContext]:
    """Read one chunk into ``write``; bad data never raises, it is reported in the context.

    Every batch goes through ``hook`` first. A `RestartChunk` from the reader drops what was
    written (``reset``) and reads once more with the changed options. Transient I/O failures
    restart the chunk the same way after a backoff, up to ``retries`` times; anything else
    becomes a ``chunk`` rejection (a failing transform too), except `TooManyPartitions`,
    which drops the chunk's output and sets ``manifest.stop``. After every written block,
    ``progress(bytes parsed, rows, rejected)`` tells how far the chunk got.
    """
    manifest = ChunkManifest(chunk.id, chunk.file_id, chunk.index, worker=worker_name(),
                             thread=threading.current_thread().name, started=time.time())
    ctx = ChunkContext(source, chunk)
    restarted: list[RestartChunk] = []

    def attempt() -> None:
        nonlocal ctx, options
        manifest.rows = 0
        ctx = ChunkContext(source, chunk)
        try:
            for table, rows in reader.read(source, chunk, description, options, ctx):
                if CANCEL.is_set():
                    raise ChunkCancelled(chunk.id)
                if hook:
                    rows = hook.apply(table_name(table), rows)  # the hook knows OUT names
                try:
                    write(table, rows)
                except OSError as exc:
                    if exc.errno in OUTPUT_ERRNOS:  # OUT is full or closed: stop, no retry
                        raise _WriteFailed(exc) from exc
                    raise
                manifest.rows += rows.num_rows
                if progress is not None:
                    progress(ctx.consumed, manifest.rows, len(ctx.rejected))
        except RestartChunk as restart:
            reset()
            if restarted:
                raise RuntimeError(f"{source.path}: chunk {chunk.index} asked for a second "
                                   f"restart ({restart.reason})") from restart
            restarted.append(restart)
            options = options.but(**restart.changes)
            attempt()

    attempts = 0

    def counted() -> None:
        nonlocal attempts
        attempts += 1
        attempt()

    try:
        retrying(counted, retries, before_retry=reset)
    except MemoryError:
        reset()
        raise
    except _WriteFailed as failed:
        reset()
        raise failed.error from None
    except TooManyPartitions as exc:
        reset()
        manifest.rows = 0
        manifest.stop = exc
    except Exception as exc:  # a broken chunk is an _errors row, the run goes on
        tries = attempts - 1
        text = str(exc).strip().splitlines()
        ctx.reject(kind="chunk", error_type=error_code(exc), byte_offset=chunk.offset,
                   message=f"{source.path}: chunk {chunk.index} at offset {chunk.offset}: "
                           f"{text[0] if text else type(exc).__name__}"
                           + (f" (after {tries} retries)" if tries else ""))
        manifest.failed = ctx.rejected[-1].message
    manifest.attempts = attempts
    manifest.error_count = len(ctx.rejected)
    manifest.chunk_errors = sum(r.kind == "chunk" for r in ctx.rejected)
    manifest.record_errors = sum(r.kind == "record" for r in ctx.rejected)
    manifest.facts = ctx.facts
    manifest.bytes_read = chunk.length
    return manifest, ctx


class _WriteFailed(Exception):  # noqa: N818 - carries the output's OSError past the retries
    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def run_chunk(task: ChunkTask) -> ChunkManifest | OutputUnwritable:
    """Run one chunk end to end (inside a worker): staged fragments and a manifest.

    When OUT cannot be written (disk full, read-only, no permission) the task returns, not
    raises, the `OutputUnwritable` that stops the run: no retry would help.
    """
    chunk, source = task.chunk, task.source
    writer = FragmentWriter(task.sink, chunk.id, source.file_id)
    progress = Reporter(task.sink.run_id, chunk.id, time.time())
    try:
        try:
            manifest, ctx = read_chunk(get_reader(task.reader)(), source, chunk,
                                       task.description, task.options, task.retries,
                                       writer.write, writer.abort, task.hook, progress)
            manifest.fragments = writer.close()
        except BaseException:
            writer.abort()
            raise
        if ctx.rejected:
            table = errors_table(((source.file_id, source.path, chunk.index, r)
                                  for r in ctx.rejected), task.sink.run_id)
            manifest.fragments.append(stage_errors(task.sink, chunk.id, table))
    except OSError as exc:
        stop = OutputUnwritable.about(exc, task.sink.store.root)
        if stop is None:
            raise
        return stop
    manifest.finished = time.time()
    pa.default_memory_pool().release_unused()
    return manifest


__all__ = ["ChunkTask", "ChunkManifest", "read_chunk", "run_chunk", "worker_name", "CANCEL",
           "ChunkCancelled"]

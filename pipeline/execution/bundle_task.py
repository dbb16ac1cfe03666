"""Small files, many to a task (the worker side): one Dask task and one fragment per bundle.

Ten thousand 10 KB files as ten thousand tasks and fragments would cost more in scheduling,
fsync and file count than in parsing. A file whose reader plans it into one chunk and allows
bundling (`Reader.bundles`), and that is smaller than ``small_file_bytes``, is packed with
others into bundles of up to ``chunk_size`` bytes. A bundle is read by one task into one
fragment per (table, partition) and committed as a unit: every member's journal record lists
the bundle's fragments, and rows keep their own ``_file_id``.

A changed member invalidates its bundle's fragment: the runner then reads the bundle's
unchanged members again and *carries* the rows of members that are gone from the inputs (kept
without ``--prune``) from the old fragment into the new bundle, so no row is lost or doubled.
"""

from __future__ import annotations

import json
import posixpath
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import OutputUnwritable
from pipeline.execution.hook import TableHook, TransformError
from pipeline.execution.task import ChunkManifest, read_chunk, worker_name
from pipeline.output.columns import int64_from_numpy, text_array
from pipeline.output.layout import ERRORS_DIR, FILE_ID
from pipeline.output.partition_guard import TooManyPartitions
from pipeline.output.rejects import ERRORS_SCHEMA, errors_table, stage_errors
from pipeline.output.writer import Fragment, FragmentWriter, SinkSpec
from readers import get_reader
from readers.base import ChunkSpec, Description, Rejected, Source, TogetherRead, stable_id
from readers.options import ReaderOptions
from readers.settle import FileChunks, read_settled
from readers.widening import conform


@dataclass(slots=True)
class Member:
    """One file of a bundle, with its single planned chunk."""

    source: Source
    reader: str
    chunk: ChunkSpec | None
    """None for a file with nothing to read (empty, or a header only)."""
    description: Description


@dataclass(slots=True)
class Carry:
    """A file gone from the inputs whose rows live in fragments the bundle replaces."""

    file_id: str
    fragments: list[str]
    """Its committed fragments, relative to OUT (data and ``_errors``)."""
    retry: bool = False
    """The file is there but could not be read this time: keep its rows, try it next run."""


@dataclass(slots=True)
class BundleTask:
    """Everything a worker needs for one bundle (pickled into the task)."""

    bundle_id: str
    members: list[Member]
    carries: list[Carry]
    options: dict[str, ReaderOptions]
    """Each member reader's options, by reader name."""
    sink: SinkSpec
    retries: int = 2
    hook: TableHook | None = None
    """Applied to every parsed batch before it is written (see `execution.hook`)."""

    @property
    def name(self) -> str:
        """Names the bundle's fragments: ``bundle-<id>.parquet``."""
        return f"bundle-{self.bundle_id}"


@dataclass(slots=True)
class BundleManifest:
    """What a bundle task reports: one manifest per member, the shared fragments."""

    bundle_id: str
    members: list[ChunkManifest]
    fragments: list[Fragment]
    carried: dict[str, int] = field(default_factory=dict)
    """Rows carried over per gone file id."""
    worker: str = ""
    started: float = 0.0
    finished: float = 0.0
    stop: TooManyPartitions | None = None
    """The whole run must stop (see `ChunkManifest.stop`); nothing was written then."""
    thread: str = ""
    """The worker thread that ran it."""


def bundle_id(file_ids: Iterable[str]) -> str:
    """Deterministic per set of files: the same bundle rewrites the same fragment names."""
    return stable_id(*sorted(file_ids))


def run_bundle(task: BundleTask) -> BundleManifest | OutputUnwritable:
    """Read every member (then carry gone files' rows) into one writer; inside a worker.

    Returns the `OutputUnwritable` that stops the run when OUT cannot be written."""
    try:
        return _run_bundle(task)
    except OSError as exc:
        stop = OutputUnwritable.about(exc, task.sink.store.root)
        if stop is None:
            raise
        return stop


def _run_bundle(task: BundleTask) -> BundleManifest:
    started = time.time()
    writer = FragmentWriter(task.sink, task.name, "")
    errors: list[pa.Table] = []
    carried: dict[str, int] = {}
    manifests: list[ChunkManifest | None] = [None] * len(task.members)
    try:
        for read in _read_together(task):
            if task.hook:
                try:
                    read = _hooked(read, task.hook)
                except TransformError:
                    continue  # read one by one below: each file gets its own chunk error
            index = np.repeat(np.arange(len(read.members)), read.counts)
            ids = text_array([task.members[i].source.file_id for i in read.members]).take(
                int64_from_numpy(index))
            writer.write(read.table, read.rows, ids)
            for i, rows in zip(read.members, read.counts, strict=True):
                member = task.members[i]
                manifests[i] = ChunkManifest(member.chunk.id, member.source.file_id,
                                             member.chunk.index, rows=rows,
                                             bytes_read=member.source.size)
        for i, member in enumerate(task.members):
            if member.chunk is None:
                manifests[i] = ChunkManifest(f"{member.source.file_id}-empty",
                                             member.source.file_id, 0)
            if manifests[i] is not None:
                continue
            manifests[i], tables, rejected = _read_member(member, task)
            for table, rows in tables:
                writer.write(table, rows, member.source.file_id)
            if rejected is not None:
                errors.append(rejected)
        for carry in task.carries:
            carried[carry.file_id] = _carry(carry, task.sink, writer, errors)
        fragments = writer.close()
    except TooManyPartitions as exc:
        writer.abort()
        return BundleManifest(task.bundle_id, [], [], worker=worker_name(), started=started,
                              finished=time.time(), stop=exc)
    except BaseException:
        writer.abort()
        raise
    if errors:
        fragments.append(stage_errors(task.sink, task.name, pa.concat_tables(errors)))
    pa.default_memory_pool().release_unused()
    return BundleManifest(task.bundle_id, manifests, fragments, carried, worker_name(),
                          started, time.time(), thread=threading.current_thread().name)


def _hooked(read: TogetherRead, hook: TableHook) -> TogetherRead:
    """A together-read through the hook. Derived columns keep the rows; a transform may not,
    so it runs on each member's rows (zero-copy slices) and the counts follow its output."""
    table = hook.before_transform(read.table, read.rows)
    if hook.transform is None:
        return TogetherRead(read.members, read.table, table, read.counts)
    pieces, counts, start = [], [], 0
    for n in read.counts:
        out = hook.run_transform(read.table, table.slice(start, n))
        pieces.append(out)
        counts.append(out.num_rows)
        start += n
    return TogetherRead(read.members, read.table, pa.concat_tables(pieces), counts)


def _read_together(task: BundleTask) -> Iterator[TogetherRead]:
    by_reader: dict[str, list[int]] = {}
    for i, member in enumerate(task.members):
        if member.chunk is not None:
            by_reader.setdefault(member.reader, []).append(i)
    for name, idx in by_reader.items():
        if len(idx) < 2:
            continue
        group = [(task.members[i].source, task.members[i].chunk, task.members[i].description)
                 for i in idx]
        for read in get_reader(name)().read_together(group, task.options[name]):
            yield TogetherRead([idx[i] for i in read.members], read.table, read.rows,
                               read.counts)


def _read_member(member: Member, task: BundleTask
                 ) -> tuple[ChunkManifest, list[tuple[str, pa.Table]], pa.Table | None]:
    """One member's rows, held until its reader has checked them (members are small)."""
    reader = get_reader(member.reader)()
    source, description = member.source, member.description
    held: dict[int, list[tuple[str, pa.Table]]] = {}
    rejected: dict[int, list[Rejected]] = {}

    def run(chunk: ChunkSpec) -> ChunkManifest:
        tables = held.setdefault(chunk.index, [])
        manifest, ctx = read_chunk(reader, source, chunk, description,
                                   task.options[member.reader], task.retries,
                                   lambda t, rows: tables.append((t, rows)), tables.clear,
                                   task.hook)
        rejected[chunk.index] = ctx.rejected
        return manifest

    def discard(manifest: ChunkManifest) -> None:
        held.pop(manifest.index, None)
        rejected.pop(manifest.index, None)

    file = read_settled(FileChunks(source, type(reader), description, [member.chunk]), run,
                        discard)
    manifests = file.manifests
    manifest = manifests[0]
    for extra in manifests[1:]:
        manifest.rows += extra.rows
        manifest.error_count += extra.error_count
        manifest.chunk_errors += extra.chunk_errors
        manifest.failed = manifest.failed or extra.failed
    manifest.bytes_read = source.size
    manifest.finished = time.time()
    order = [c.index for c in file.chunks]
    tables = [piece for i in order for piece in held.get(i, [])]
    errors = [(source.file_id, source.path, member.chunk.index, r)
              for i in order for r in rejected.get(i, [])]
    return manifest, tables, (errors_table(errors, task.sink.run_id) if errors else None)


def _carry(carry: Carry, sink: SinkSpec, writer: FragmentWriter, errors: list[pa.Table]
           ) -> int:
    """Copy a gone file's rows out of the fragments being replaced; returns the row count."""
    rows = 0
    fs = sink.store.filesystem
    for rel in carry.fragments:
        path = sink.store.path(rel)
        if not sink.store.exists(path):
            continue
        table, _, rest = rel.partition("/")
        if table == ERRORS_DIR:
            old = pq.read_table(path, filters=[("file_id", "==", carry.file_id)], filesystem=fs)
            errors.append(conform(old, ERRORS_SCHEMA))
            continue
        old = pq.read_table(path, filters=[(FILE_ID, "==", carry.file_id)], filesystem=fs)
        if table not in sink.schemas or not old.num_rows:
            continue
        columns = writer.partition_columns(table)
        schema = sink.delta_schema(table) if sink.delta else sink.schemas[table]
        target = pa.schema([f for f in schema if f.name not in columns and f.name != FILE_ID]
                           + [pa.field(FILE_ID, pa.string())])
        # The partition directory is reused as it is: the values in its name may be cut, the
        # fragment's own lineage metadata has them whole.
        raw = (pq.read_metadata(path, filesystem=fs).metadata or {}).get(b"chunkmill.partition")
        values = tuple(json.loads(raw).items()) if raw else None
        writer.add(table, posixpath.dirname(rest), conform(old, target), values,
                   {carry.file_id})
        rows += old.num_rows
    return rows


__all__ = ["BundleTask", "BundleManifest", "Member", "Carry", "run_bundle", "bundle_id"]

"""One ingest run: plan, run chunks on the cluster, reconcile, commit, catalog, report.

The runner only orchestrates; the decisions are made by pure parts it calls: `build_plan`
(what the inputs are), `riders` and `group_bundles` (which files travel together),
`FileChunks.settle` (when a file's chunks are right), `plan_commit` (what a commit does). The
client never holds data: tasks return manifests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import json
import logging
import os
import posixpath
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import config
from pipeline.errors import OutputUnwritable, UsageError
from pipeline.execution.bundle_task import BundleManifest, BundleTask, Member, run_bundle
from pipeline.execution.bundles import carry_source, group_bundles, riders
from pipeline.execution.live import PROGRESS_TOPIC, listen
from pipeline.execution.local import LocalExecutor
from pipeline.execution.placement import IN_PROCESS, choose_layout, in_process, worker_shape
from pipeline.execution.scheduler import DaskExecutor, Executor, Job, TaskScheduler
from pipeline.execution.task import CANCEL, ChunkManifest, ChunkTask, run_chunk, worker_name
from pipeline.execution.watch import ClusterWatch
from pipeline.execution.work import BundleRun, FileRun
from pipeline.faults import crash_point
from pipeline.options import IngestOptions
from pipeline.output.catalog import CatalogRow, catalog_table
from pipeline.output.commit import CommitItem, apply_commit, file_error_name, plan_commit
from pipeline.output.delta import DeltaConflict, DeltaOut, settle
from pipeline.output.journal import Journal, JournalState
from pipeline.output.layout import CATALOG_DIR, ERRORS_DIR, FILE_ID, STATE_DIR, table_name
from pipeline.output.lock import OutputLock
from pipeline.output.partition_guard import PartitionGuard, TooManyPartitions
from pipeline.output.rejects import errors_table, stage_errors
from pipeline.output.schemas import SchemaStore
from pipeline.output.staging import (
    STAGING,
    chunk_token,
    clean_staging,
    kept_files,
    reuse,
    staged_entry,
)
from pipeline.output.store import Store, open_store
from pipeline.output.writer import SinkSpec
from pipeline.planning.describe import PlannedFile
from pipeline.planning.discover import Discovered
from pipeline.planning.plan import Plan, build_plan, held_tables
from pipeline.planning.schema import schema_change
from pipeline.planning.tables import too_many_message
from pipeline.pressure.arrow_pool import (
    ARROW_DECAY_MS,
    restore_default_pool,
    set_jemalloc_decay,
    switch_default_pool,
)
from pipeline.pressure.local import LocalPressure
from pipeline.report.progress import Progress
from pipeline.report.run_report import ChunkRecord, RunReport
from readers import get_reader
from readers.base import ChunkSpec, Reader, Rejected
from readers.errors import ErrorCode, error_code, one_line

if TYPE_CHECKING:  # distributed is imported only when a run starts a cluster
    from pipeline.execution.cluster import BackgroundCluster

log = logging.getLogger("chunkmill.run")

COMMIT_ATTEMPTS = 6
"""Delta: tries of a commit that another run's commit of the same files got in the way of."""
FORMAT_FILE = "table_format"
"""``_chunkmill/table_format``: the table format OUT was first written in."""
STALE_STAGING_S = 7 * 24 * 3600
"""Delta: staging of a run that never finished is deleted after this long (the default
Delta file retention; concurrent runs keep theirs until then)."""


def config_token(options: IngestOptions) -> str:
    """Options that change the output: a file ingested under others is not 'unchanged'."""
    relevant = [options.plan.table, list(options.output.partition_by),
                options.output.compression, options.plan.format, options.plan.header]
    relevant += options.plan.output_token()  # nothing when no type/derive/transform is given
    if options.output.table_format != "hive":  # hive runs keep their tokens
        relevant.append(options.output.table_format)
    return hashlib.blake2b(json.dumps(relevant).encode(), digest_size=8).hexdigest()


def _check_out(store: Store, out: str) -> None:
    """OUT must be a directory or not exist yet: naming a file (or a path under a file) is a
    user's mistake, not an I/O failure half-way through the run."""
    if not store.local:
        return
    path = store.root
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        what = "is a file" if path == store.root else f"is under {path}, which is a file"
        raise UsageError(f"--out {out} {what}; give a directory (it is created if missing)")


def new_run_id() -> str:
    """A UTC stamp to the second (runs sort by time) and a random suffix."""
    return f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


GC_GEN0 = 50_000
"""Allocations between two young-generation collections while a run lasts (Python's 700)."""

SMALL_JOB_DECAY_MS = 100
"""How long jemalloc keeps Arrow's freed pages for reuse in a small job (Arrow's: 1 s). A
small job's parse batches and row groups are freed and not needed again: 10,000 files of
10 KB peaked 21-34 MiB lower at the same time (3 pairs; 6 more: 269-281 -> 238-244 MiB).
Not for big jobs: on a 2 GB CSV the extra page returns cost 0.5 s of system time."""


class _Collector:
    """Fewer and cheaper cyclic garbage collections while runs last (`eased`).

    A run makes objects that live as long as it does (per file: its source, description,
    chunks and catalog row; per chunk with a million chunks, millions). Each collection of
    the older generations walked all of them, though none is garbage: 15 % of the client's
    CPU per chunk with 300,000 chunks (`benchmarks/bench_scale.py`), 0.23 s (a tenth of the
    wall time, all of it holding the GIL the task threads wait for) of 10,000 small files.
    So what exists when the run starts (imports) is frozen, and so is the plan when its tasks
    start (`Runner._execute`); the young generation is collected every `GC_GEN0` allocations
    instead of every 700, so the middle generation (every tenth young collection, walking
    what ten kept) is collected once or twice a run instead of dozens of times; at most
    `GC_GEN0` objects of cyclic garbage wait for a collection (a few MiB).

    Everything is handed back to the collector when the last of the process's runs ends
    (runs in several threads share the setting: the first saves the caller's, the last
    restores it). A caller who froze objects of its own keeps its freeze: nothing is frozen
    then (unfreezing would undo it).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs = 0
        self.saved: tuple[int, ...] = ()
        self.freezing = False

    @contextlib.contextmanager
    def eased(self) -> Iterator[None]:
        """Eased while inside."""
        with self.lock:
            if not self.runs:
                self.saved = gc.get_threshold()
                self.freezing = gc.get_freeze_count() == 0
                if self.freezing:
                    gc.freeze()
                gc.set_threshold(max(self.saved[0], GC_GEN0), *self.saved[1:])
            self.runs += 1
        try:
            yield
        finally:
            with self.lock:
                self.runs -= 1
                if not self.runs:
                    gc.set_threshold(*self.saved)
                    if self.freezing:
                        gc.unfreeze()

    def freeze_plan(self) -> None:
        """Freeze what the runs made since they started (a run's plan, as its tasks start),
        unless a caller's own freeze keeps the runs from freezing."""
        with self.lock:
            if self.runs and self.freezing:
                gc.freeze()


_collector = _Collector()


class Runner:
    """Carries out one ingest; use `pipeline.ingest` rather than this class directly."""

    def __init__(self, paths: Sequence[str], options: IngestOptions) -> None:
        self.paths = list(paths)
        self.options = options
        self.store = open_store(options.output.out, dict(options.output.storage_options))
        _check_out(self.store, options.output.out)
        self.run_id = new_run_id()
        self.report = RunReport(self.run_id, options.output.out, time.time())
        self.config = config_token(options)
        self.delta: DeltaOut | None = None
        """The Delta tables of OUT (``--table-format delta``)."""
        self.watch = ClusterWatch(self.report)
        self.journal = Journal(self.store)
        self.state = JournalState({}, {})
        self.group: set[str] = set()
        """Files committed together with a changed one (they share bundle fragments)."""
        self.plan: Plan | None = None
        self.sink: SinkSpec | None = None
        self.cluster: BackgroundCluster | None = None
        self.layout = "processes"
        """The embedded cluster's layout, or `IN_PROCESS` (a small job: no cluster)."""
        self.local: LocalExecutor | None = None
        self.local_pressure: LocalPressure | None = None
        self.quick_decay = False
        """A small job set jemalloc's decay to `SMALL_JOB_DECAY_MS` (put back at the end)."""
        self.catalog: list[dict[str, Any]] = []
        self.file_errors: set[str] | None = None
        """Names of the file-level ``_errors`` fragments in OUT (see `_file_errors_in_out`)."""
        self.ready: list[FileRun] = []
        self.ready_bundles: list[BundleRun] = []
        self.progress: Progress | None = None
        self.staged: list[dict[str, Any]] = []
        """``staged`` journal entries of chunks finished since the last tick."""
        self.scheduler: TaskScheduler | None = None
        self._sinks: dict[tuple[str, ...], SinkSpec] = {}
        """The sink of the chunks that write each tuple of tables (the reader's names; a chunk
        task carries only its own tables' schemas)."""
        self._readers: dict[str, Reader] = {}
        """One reader object per reader name (see `_reader`)."""
        self.guard = PartitionGuard(options.output.max_partitions, self._too_many)

    # --- top level ------------------------------------------------------------------------------
    def run(self) -> RunReport:
        CANCEL.clear()
        out = self.options.output
        if out.table_format == "delta":
            self.delta = DeltaOut(self.store, out.partition_by)
        # Delta tables settle concurrent writers through their log (see pipeline.output.delta);
        # hive output has only chunkmill's journal: one run at a time.
        lock = (OutputLock(self.store, self.run_id) if self.delta is None
                else contextlib.nullcontext())
        try:
            with lock, _collector.eased():
                self._check_format()
                self.state = self.journal.load()
                # one run at a time (the lock) may rewrite a local journal
                self.journal.compact(exclusive=self.delta is None, state=self.state)
                schemas = SchemaStore(self.store)
                known = schemas.load()
                # Arrow's pool for the run, as the pressure plugin's on a worker (its reason:
                # mimalloc keeps freed pages per thread): planning parses samples of every file
                # here, and a small job's tasks run here too. From Python this reaches only what
                # Python asks pyarrow to allocate; the CLI picks jemalloc for all of Arrow
                # (`pipeline.cli.main`).
                pools = switch_default_pool("jemalloc")
                try:
                    self._run(known, schemas)
                except KeyboardInterrupt:
                    # Chunks running in this process stop at their next parse block; what
                    # was staged is journaled (see _execute), so the next run resumes from
                    # there.
                    CANCEL.set()
                    raise
                finally:
                    if self.local is not None:
                        self.local.close()
                    if self.cluster is not None:
                        self.cluster.close(fast=CANCEL.is_set())
                    if self.quick_decay:  # while jemalloc is still the default pool
                        set_jemalloc_decay(ARROW_DECAY_MS)
                    if pools is not None:
                        restore_default_pool(*pools)
        except OSError as exc:  # disk full, read-only, no permission: the run cannot go on
            stop = OutputUnwritable.about(exc, self.store.root)
            if stop is None:
                raise
            raise stop from None
        return self.report

    def _check_format(self) -> None:
        """One table format per OUT: the first run's."""
        wanted = self.options.output.table_format
        path = self.store.path(STATE_DIR, FORMAT_FILE)
        if self.store.exists(path):
            have = self.store.read_bytes(path).decode().strip()
        elif self.store.exists(self.store.path(CATALOG_DIR)):
            # Committed before the format was recorded. (Only _chunkmill/ may be a concurrent
            # delta run that has not written the format file yet: no sign of hive.)
            have = "hive"
        else:
            have = wanted
        if have != wanted:
            raise UsageError(f"{self.options.output.out} holds {have} tables; --table-format "
                             f"{wanted} needs another --out (one format per output)")
        if not self.store.exists(path):
            self.store.write_bytes_atomic(path, wanted.encode())

    def _run(self, known: dict[str, Any], schemas: SchemaStore) -> None:
        out = self.options.output
        plan = self.plan = build_plan(self.paths, self.options.plan,
                                      partition_by=out.partition_by, skip=self._unchanged,
                                      known=known, unskip=self._discovered,
                                      max_partitions=out.max_partitions,
                                      settle=self._settle_delta if self.delta else None,
                                      out=out.out, held=held_tables(self.state),
                                      fresh=self.options.force)
        if self.delta is None:
            self._note_schema_changes(known, plan)
        else:
            for table, schema in plan.schemas.items():
                self.delta.ensure(table, schema)
        schemas.save({**known, **plan.schemas})
        self.sink = SinkSpec(self.store, self.run_id, plan.schemas, out.partition_by,
                             out.compression, max_partitions=out.max_partitions,
                             table_format=out.table_format)
        self._clean_staging()
        todo = self._triage(plan)
        present = {f.source.file_id for f in plan.files}
        if self.options.prune:
            self._prune(present)
        workers, threads = worker_shape(self.options.cluster, self.layout)
        state, store = self.state, self.store
        alone, bundles = group_bundles(
            todo, state, self.group, present, {f.source.file_id for f in plan.files if f.error},
            small_file_size=self.options.plan.small_file_size,
            chunk_size=self.options.plan.chunk_size, min_bundles=2 * workers * threads,
            prune=self.options.prune,
            carry_source=lambda fid: carry_source(state, fid,
                                                  lambda rel: store.exists(store.path(rel))),
            whole_file=self._whole_file)
        self._save_report(planned=[r.planned.source.path for r in alone]
                          + [r.planned.source.path for b in bundles for r in b.members])
        if not bundles and not any(r.chunks.chunks for r in alone):
            self.ready.extend(alone)  # catalog-only files (images, empty files): no cluster
            self._commit_ready()
        else:
            self._execute(alone, bundles)
        self._finish()

    def _discovered(self, found: list[Discovered]) -> set[str]:
        """Right after discovery: name the unchanged files to read again (bundle mates), and
        decide where tasks run: in this process (a small job, see
        `pipeline.execution.placement`), or on a cluster, started now if anything needs
        reading, while the files are described."""
        self.layout = choose_layout(self.options.cluster, {
            get_reader(f.reader) for f in found if f.reader is not None and f.error is None})
        self.group, again = riders(self.state, {f.source.file_id for f in found},
                                   {f.source.file_id for f in found if not f.skipped},
                                   self.options.prune)
        nbytes = sum(f.source.size for f in found if f.error is None
                     and (not f.skipped or f.source.file_id in again))
        if in_process(self.options.cluster, self.layout, nbytes):
            self.layout = IN_PROCESS
            # Before describe's and the tasks' threads start, whose arenas it sets.
            self.quick_decay = set_jemalloc_decay(SMALL_JOB_DECAY_MS)
        elif self.cluster is None and any(not f.skipped and f.error is None for f in found):
            self.cluster = self._start_cluster()
        return again

    def _start_cluster(self) -> BackgroundCluster:
        from pipeline.execution.cluster import BackgroundCluster

        return BackgroundCluster(self.options.cluster, self.layout)

    def _unchanged(self, file_id: str, fingerprint: str) -> bool:
        prev = self.state.done.get(file_id)
        return (not self.options.force and prev is not None
                and file_id not in self.state.interrupted
                and prev.fingerprint == fingerprint and prev.config == self.config)

    def _settle_delta(self, schemas: dict[str, pa.Schema]) -> dict[str, pa.Schema]:
        """Planned schemas of Delta tables: the table's own column types win (see
        `pipeline.output.delta.settle`)."""
        assert self.delta is not None
        settled = {}
        for table, schema in schemas.items():
            settled[table], notes = settle(self.delta.schema(table), schema)
            for note in notes:
                self.report.notes.append(f"table {table}: {note}")
                log.warning("chunkmill: table %s: %s", table, note)
        return settled

    def _clean_staging(self, finished: bool = False) -> None:
        keep = kept_files(self.state.staged)
        if self.delta is None:
            clean_staging(self.store, keep)
            return
        # Other runs may be writing into OUT now: only this run's staging, and that of runs
        # that finished or were given up on long ago.
        runs = [self.run_id] if finished else []
        for path in self.store.glob(self.store.path(STATE_DIR, STAGING, "*")):
            run = path.rstrip("/").rsplit("/", 1)[-1]
            report = self.store.path(STATE_DIR, "runs", f"{run}.json")
            try:
                data = json.loads(self.store.read_bytes(report))
            except (OSError, ValueError):
                data = {}
            if run != self.run_id and (data.get("finished") or time.time() - float(
                    data.get("started") or time.time()) > STALE_STAGING_S):
                runs.append(run)
        clean_staging(self.store, keep, runs)

    def _note_schema_changes(self, known: dict[str, Any], plan: Plan) -> None:
        """Tables whose schema grew since earlier runs: their older fragments differ."""
        for table, schema in plan.schemas.items():
            if table in known and not schema.equals(known[table]):
                note = (f"table {table}: schema changed since earlier runs "
                        f"({schema_change(known[table], schema)}); older fragments keep their "
                        "types: read with union_by_name=true")
                self.report.notes.append(note)
                log.warning("chunkmill: %s", note)

    def _triage(self, plan: Plan) -> list[FileRun]:
        todo = []
        for f in plan.files:
            if f.skipped:
                prev = self.state.done[f.source.file_id]
                # "unchanged" is what this run did; the last ingest's outcome (a partial
                # file's rejects) stays in last_status.
                last = prev.catalog.get("last_status") or prev.catalog.get("status")
                self.catalog.append(dict(prev.catalog, status="unchanged", run_id=self.run_id,
                                         last_status=None if last == "unchanged" else last))
            elif f.error:
                self._fail_file(f, f.error)
            else:
                todo.append(FileRun.of(f))
        todo.sort(key=lambda r: -r.size)  # largest first: shortest makespan
        return todo

    def _whole_file(self, run: FileRun) -> list[ChunkSpec]:
        """The file planned as one chunk (a bundle member that grew past one)."""
        assert self.plan is not None
        name, planned = run.planned.reader, run.planned
        options = self.plan.reader_options[name].but(chunk_size=max(1, run.size))
        return self._reader(name).plan(planned.source, planned.description, options)

    # --- execution ------------------------------------------------------------------------------
    def _execute(self, alone: list[FileRun], bundles: list[BundleRun]) -> None:
        members = [r for b in bundles for r in b.members]
        self.progress = Progress(len(alone) + len(members),
                                 sum(len(r.chunks.chunks) for r in alone + members),
                                 sum(r.size for r in alone + members),
                                 enabled=self.options.progress)
        if self.layout == IN_PROCESS:
            local = self._start_local()
            executor: Executor = local
            client, threads = None, local.threads
        else:
            if self.cluster is None:  # only unchanged files to read again (bundle mates)
                self.cluster = self._start_cluster()
            client = self.cluster.client()
            executor = DaskExecutor(client)
            self.watch.attach(client, self.progress)
            if self.options.cluster.dashboard or self.options.cluster.dashboard_address:
                from pipeline.execution.cluster import dashboard_link

                self.report.dashboard = dashboard_link(client)
                log.warning("chunkmill: dashboard at %s", self.report.dashboard)
            threads = sum(client.nthreads().values()) or 1
        window = self.options.window or max(2, config.get("ingest.window-per-thread") * threads)
        self.scheduler = TaskScheduler(executor, window, self.watch, self.options.chunk_timeout,
                                       self.options.retries)
        for run in alone:
            if not run.chunks.chunks:  # an empty file (or header only): nothing to run
                self.ready.append(run)
                self.progress.update(files=1)
                continue
            staged_chunks = self.state.staged.get(run.file_id)
            if not staged_chunks:  # nothing to reuse: tasks are made as the window takes them
                self.scheduler.add_lazy(self._chunk_jobs(run))
                continue
            jobs = []
            for chunk in run.chunks.chunks:
                job = self._chunk_job(run, chunk)
                reused = reuse(staged_chunks.get(chunk.index), job.payload[2], self.store)
                if reused is None:
                    jobs.append(job)
                else:  # staged and verified by an interrupted run: not read again
                    self._check_partitions(None, reused.fragments)
                    self.report.chunks_reused += 1
                    run.chunks.record(reused)
                    self.progress.update(chunks=1, nbytes=chunk.length, rows=reused.rows,
                                         rejected=reused.error_count)
            self.scheduler.add(*jobs)
            if run.chunks.complete:
                self._settle(run)
        self.scheduler.add(*(self._bundle_job(b) for b in bundles))
        try:
            _collector.freeze_plan()
            self.scheduler.run(self._done, self._tick)
            self._tick()
            if client is not None:
                self.watch.collect(client)
            elif self.local_pressure is not None:
                self.watch.finish({self.local_pressure.worker: self.local_pressure.state()})
        finally:
            if client is not None:
                self.watch.detach(client)
            listen(self.run_id, None)
            self._journal_staged()  # interrupted: what is staged stays usable
            self.progress.close()

    def _start_local(self) -> LocalExecutor:
        """A small job's thread pool in this process, with its pressure sampling and progress
        reports going straight to the watch (no cluster, see `pipeline.execution.local`)."""
        _, threads = worker_shape(self.options.cluster, IN_PROCESS)
        self.local = LocalExecutor(threads)
        log.info("chunkmill: a small job: %d thread(s) in this process, no cluster", threads)
        self.watch.attach_local(threads, self.progress)
        listen(self.run_id, lambda record: self.watch.receive(PROGRESS_TOPIC, record))
        if self.local_pressure is None:
            self.local_pressure = LocalPressure(worker_name(), self.watch.receive)
        self.local_pressure.tick()  # before the first chunk, as the plugin's first sample
        return self.local

    def _tick(self) -> None:
        self._journal_staged()
        self._commit_ready()
        if self.local_pressure is not None:
            self.local_pressure.tick()
        self.watch.tick(self.progress)

    def _journal_staged(self) -> None:
        """Journal the chunks staged since the last tick, so a re-run can reuse them."""
        if not self.staged:
            return
        entries, self.staged = self.staged, []
        # Not synced: a staged entry lost with the machine only means reading its chunk
        # again, and the fsync of the next commit makes every line before it durable.
        self.journal.append(*entries, sync=False)
        for entry in entries:
            self.state.staged.setdefault(entry["file_id"], {})[entry["index"]] = entry
            crash_point("staged")

    def _chunk_jobs(self, run: FileRun) -> Iterator[Job]:
        for spec in list(run.chunks.chunks):
            yield self._chunk_job(run, spec)

    def _chunk_job(self, run: FileRun, spec: ChunkSpec) -> Job:
        assert self.plan is not None and self.sink is not None
        planned = run.planned
        options = self.plan.reader_options[planned.reader]
        # Only what this chunk reads travels with it (and goes into its token): a file of
        # thousands of tables would otherwise put every table's schema into each of its tasks.
        description = self._reader(planned.reader).chunk_description(planned.description, spec)
        tables = tuple(description.tables)
        sink = self._sinks.get(tables)
        if sink is None:  # one per set of tables, shared by the chunks that write them
            names = sorted({table_name(t) for t in tables})  # OUT's names
            sink = self._sinks[tables] = replace(
                self.sink, schemas={t: self.sink.schemas[t] for t in names})
        task = ChunkTask(planned.source, planned.reader, spec, description, options, sink,
                         self.options.retries, self.plan.hook or None)
        token = chunk_token(planned.source, planned.reader, spec, description, options, sink,
                            self.config, run.tokens)
        return Job(run.size, f"chunkmill-chunk-{self.run_id}-{spec.id}-{run.chunks.rounds}",
                   run_chunk, task, (run, spec, token))

    def _bundle_job(self, run: BundleRun) -> Job:
        assert self.plan is not None and self.sink is not None
        members = [Member(m.planned.source, m.planned.reader,
                          m.chunks.chunks[0] if m.chunks.chunks else None, m.planned.description)
                   for m in run.members]
        options = {m.reader: self.plan.reader_options[m.reader] for m in members}
        task = BundleTask(run.id, members, run.carries, options, self.sink, self.options.retries,
                          self.plan.hook or None)
        return Job(run.size, f"chunkmill-bundle-{self.run_id}-{run.id}-{run.attempts}",
                   run_bundle, task, run)

    def _done(self, payload: Any, result: Any) -> None:
        """A task finished (``result`` is its manifest, or the exception it died of)."""
        assert self.progress is not None and self.scheduler is not None
        if isinstance(result, OutputUnwritable):
            raise result  # OUT cannot be written: stop; the same command resumes later
        if isinstance(payload, BundleRun):
            crash_point("before_commit")
            self._bundle_done(payload, result)
            done = result.members if isinstance(result, BundleManifest) else []
            self.progress.update(chunks=len(payload.members), nbytes=payload.size,
                                 files=len(payload.members), rows=sum(m.rows for m in done),
                                 rejected=sum(m.error_count for m in done))
            return
        run, spec, token = payload
        if not isinstance(result, ChunkManifest):
            result = self._chunk_failure(run, spec, result)
        else:
            self._check_partitions(result.stop, result.fragments)
            if result.failed is None:
                self.staged.append(staged_entry(result, token, self.store, self.run_id))
        run.chunks.record(result)
        slot = self.report.chunk_slot()
        if slot is not None:
            self.report.keep_chunk(slot, ChunkRecord(
                result.chunk_id, run.planned.source.path, result.worker, result.started,
                result.finished, result.rows, result.bytes_read, result.error_count,
                run.chunks.rounds, result.thread))
        self.progress.chunk_done(result.chunk_id, result.started, nbytes=spec.length,
                                 rows=result.rows, rejected=result.error_count)
        if run.chunks.complete:
            self._settle(run)

    def _settle(self, run: FileRun) -> None:
        """Every chunk of ``run`` is in: reconcile, then run chunks again or queue the commit."""
        assert self.progress is not None and self.scheduler is not None
        crash_point("before_commit")
        notes = len(run.chunks.notes)
        try:
            again, dropped = run.chunks.settle()
        except RuntimeError as exc:  # the reader never agreed with its chunks
            self._discard([m for m in run.chunks.results.values()])
            self._fail_file(run.planned, str(exc))
            self.progress.update(files=1)
            return
        self._discard(dropped)
        if again:
            self.report.chunk_reruns += len(again)
            if len(run.chunks.notes) > notes:
                log.warning("chunkmill: %s: %s", run.planned.source.path, run.chunks.notes[-1])
            self.progress.add_chunks(len(again))
            self.scheduler.add(*(self._chunk_job(run, c) for c in again))
        else:
            self.ready.append(run)
            self.progress.update(files=1)

    def _chunk_failure(self, run: FileRun, spec: ChunkSpec, exc: BaseException
                       ) -> ChunkManifest:
        """A chunk task that produced nothing: one ``_errors`` row, the file goes on."""
        assert self.sink is not None
        message = (f"{run.planned.source.path}: chunk {spec.index} at offset {spec.offset}: "
                   f"{one_line(exc)}")
        manifest = ChunkManifest(spec.id, spec.file_id, spec.index, failed=message,
                                 started=time.time(), finished=time.time())
        rejected = Rejected("chunk", error_code(exc), message, spec.offset)
        table = errors_table([(spec.file_id, run.planned.source.path, spec.index, rejected)],
                             self.run_id)
        manifest.fragments = [stage_errors(self.sink, spec.id, table)]
        manifest.error_count = manifest.chunk_errors = 1
        return manifest

    def _bundle_done(self, run: BundleRun, result: BundleManifest | BaseException) -> None:
        if isinstance(result, BundleManifest):
            self._check_partitions(result.stop, result.fragments)
        if not isinstance(result, BundleManifest):
            # Nothing was produced: its files fail, their old rows (and the carried files')
            # stay as they are, and the next run tries them again.
            for member in run.members:
                self._fail_file(member.planned, f"{member.planned.source.path}: "
                                f"{one_line(result)} (in a bundle of {len(run.members)} "
                                "small files)")
            return
        for member, m in zip(run.members, result.members, strict=True):
            m.fragments = list(result.fragments)  # shared: renamed once at commit
            if member.chunks.chunks:  # an empty file has no chunk, and no rows
                member.chunks.record(m)
        self.report.add_chunk(ChunkRecord(
            f"bundle-{run.id}", f"{len(run.members)} files", result.worker, result.started,
            result.finished, sum(m.rows for m in result.members), run.size,
            sum(m.error_count for m in result.members), run.attempts, result.thread))
        run.manifest = result
        self.ready_bundles.append(run)

    def _reader(self, name: str) -> Reader:
        """The run's one object of reader ``name`` (readers keep no state between calls)."""
        reader = self._readers.get(name)
        if reader is None:
            reader = self._readers[name] = get_reader(name)()
        return reader

    def _check_partitions(self, stop: TooManyPartitions | None, fragments: list[Any]) -> None:
        """The partition guard (see `output.partition_guard`): stop before a commit would
        bring a table past ``--max-partitions``; staged fragments never reach OUT."""
        if stop is None and not fragments:
            return
        problem = (self._too_many(stop.table, f"one chunk alone has rows for more than "
                                              f"{stop.limit:,}") if stop is not None
                   else self.guard.check((f.table, f.partition) for f in fragments))
        if problem is None:
            return
        self.store.rmtree(self.store.path(STATE_DIR, "staging", self.run_id))
        raise UsageError(problem)

    def _too_many(self, table: str, why: str) -> str:
        schema = self.plan.schemas.get(table) if self.plan is not None else None
        return too_many_message(table, self.options.output.partition_by, schema,
                                self.options.output.max_partitions, why)

    def _discard(self, manifests: list[ChunkManifest]) -> None:
        for m in manifests:
            for fragment in m.fragments:
                self.store.remove(fragment.staged)

    # --- commit ---------------------------------------------------------------------------------
    def _catalog_row(self, run: FileRun) -> dict[str, Any]:
        planned, source = run.planned, run.planned.source
        manifests = run.chunks.manifests
        rows = sum(m.rows for m in manifests)
        errors = sum(m.error_count for m in manifests)
        failed = [m.failed for m in manifests if m.failed]
        broken = sum(m.chunk_errors for m in manifests)
        rejected = sum(m.record_errors for m in manifests)
        if rows == 0 and (failed and len(failed) == len(manifests) or broken):
            # Nothing of the file was read and a chunk broke (it vanished, it is unreadable):
            # failed, not partial, whatever the reader made of the break.
            status = "failed"
            self.report.failures.append(failed[0] if failed else
                                        f"{source.path}: no row read; {broken} chunk(s) broken "
                                        "(see _errors)")
        elif rows == 0 and rejected:
            # Every record it has was rejected (a wrong delimiter, a declared type that fits
            # no value): nothing of the file is in OUT, which is no partial success.
            status = "failed"
            self.report.failures.append(f"{source.path}: all {rejected:,} record(s) rejected, "
                                        "none kept (see _errors)")
        else:
            status = "partial" if errors else "ok"
        metadata = dict(planned.description.metadata)
        metadata.update(self._reader(planned.reader).summarize(
            source, planned.description, run.chunks.chunks, [m.outcome for m in manifests]))
        if run.chunks.notes:
            metadata["notes"] = run.chunks.notes
        return CatalogRow(source.file_id, source.path, planned.reader, source.size,
                          source.mtime, source.fingerprint, status, planned.tables, rows,
                          len(manifests), errors, round(time.time() - run.started, 3),
                          metadata, self.run_id).asdict()

    def _commit_ready(self) -> None:
        """Commit every verified file and bundle: one journal write (and fsync) per step."""
        if not self.ready and not self.ready_bundles:
            return
        runs, self.ready = self.ready, []
        bundles, self.ready_bundles = self.ready_bundles, []
        runs += [m for b in bundles for m in b.members]
        items = [CommitItem(r.file_id, r.planned.source.fingerprint, self.config,
                            self._catalog_row(r),
                            tuple(f for m in r.chunks.manifests for f in m.fragments))
                 for r in runs]
        for b in bundles:
            assert b.manifest is not None
            for carry in b.carries:  # gone files: the same record, new fragments
                record = self.state.done[carry.file_id]
                items.append(CommitItem(
                    carry.file_id, "" if carry.retry else record.fingerprint, record.config,
                    dict(record.catalog, rows=b.manifest.carried.get(carry.file_id, 0)),
                    tuple(b.manifest.fragments), listed=False, keep_file_error=carry.retry))
        forgets = [fid for b in bundles for fid in b.forget]
        pruned = [self.state.done[fid].catalog.get("path", fid) for fid in forgets
                  if fid in self.state.done]
        failure = self._apply_commit(items, forgets)
        for run in runs:  # done with: a run of a million chunks keeps no manifest per chunk
            run.chunks.results.clear()
        for item in items:
            if item.listed:  # a carried file is not an input of this run: its row stays
                row = item.catalog
                if failure:
                    row = dict(row, status="failed", metadata={**row.get("metadata", {}),
                                                                "error": failure})
                    self.report.failures.append(f"{row['path']}: {failure}")
                self.catalog.append(row)
                self.report.rows += row["rows"]
                self.report.errors += row["error_count"]
                self.report.bytes_read += row["size_bytes"]
                self.report.chunks += row["chunks"]
        if not failure:
            self.report.notes += [f"pruned {path}" for path in pruned]

    def _apply_commit(self, items: list[CommitItem], forgets: list[str]) -> str | None:
        """Plan and apply one commit; None when done, else why it could not be (Delta: other
        runs kept committing the same files; they stay not done, the next run takes them)."""
        fmt = self.options.output.table_format
        for attempt in range(COMMIT_ATTEMPTS):
            plan = plan_commit(items, forgets, self.state, self.run_id, self.store, fmt,
                               self._file_errors_in_out())
            try:
                apply_commit(plan, self.store, self.journal, self.state, self.delta)
                if self.file_errors is not None:
                    self.file_errors.difference_update(
                        file_error_name(it.file_id) for it in items if not it.keep_file_error)
                return None
            except DeltaConflict as exc:
                # Another run committed some of these files: what it wrote is in the journal
                # (journaled before its Delta commit), so read it again and plan anew.
                log.info("chunkmill: %s; planning the commit again", exc)
                self.report.notes.append(f"commit retried: {exc}")
                failure = f"not committed: {exc} (run again to finish it)"
                self.state = self.journal.load()
                time.sleep(random.uniform(0, 0.05 * 2 ** attempt))
        return failure

    def _file_errors_in_out(self) -> set[str] | None:
        """The file-level ``_errors`` fragments OUT holds, listed once per run: a commit then
        removes only those, not one maybe-missing path per file (10,000 deletes, each a
        request on an object store). Hive only: the lock keeps other runs from writing
        them meanwhile, which concurrent Delta runs may do."""
        if self.delta is not None:
            return None
        if self.file_errors is None:
            found = self.store.glob(self.store.path(ERRORS_DIR, file_error_name("*")))
            self.file_errors = {posixpath.basename(p) for p in found}
        return self.file_errors

    def _remove_file_error(self, file_id: str) -> None:
        """Delete a file's file-level ``_errors`` fragment, and forget it in the listing."""
        self.store.remove(self.store.path(ERRORS_DIR, file_error_name(file_id)))
        if self.file_errors is not None:
            self.file_errors.discard(file_error_name(file_id))

    def _fail_file(self, planned: PlannedFile, message: str) -> None:
        source = planned.source
        rejected = Rejected("file", ErrorCode.FILE_ERROR, message, None)
        table = errors_table([(source.file_id, source.path, None, rejected)], self.run_id)
        self.store.write_table_atomic(
            self.store.path(ERRORS_DIR, file_error_name(source.file_id)), table,
            self.options.output.compression)
        if self.file_errors is not None:
            self.file_errors.add(file_error_name(source.file_id))
        self.report.failures.append(message)
        self.report.errors += 1
        row = CatalogRow(source.file_id, source.path, planned.reader, source.size,
                         source.mtime, source.fingerprint, "failed", planned.tables,
                         error_count=1, metadata={"error": message},
                         run_id=self.run_id).asdict()
        self.journal.append({"event": "failed", "file_id": source.file_id, "run": self.run_id,
                             "catalog": row})
        self.state.staged.pop(source.file_id, None)
        self.catalog.append(row)

    def _prune(self, present: set[str]) -> None:
        """Forget files that are no longer among the inputs, with their fragments."""
        if self.delta is not None:  # a Delta transaction removes their fragments
            gone = [fid for fid in self.state.done if fid not in present
                    and fid not in self.group]
            paths = [self.state.done[fid].catalog.get("path", fid) for fid in gone]
            for fid in gone:
                self._remove_file_error(fid)
            failure = self._apply_commit([], gone) if gone else None
            if failure:
                self.report.failures.append(f"--prune: {failure}")
            else:
                self.report.notes += [f"pruned {path}" for path in paths]
            return
        for file_id, record in list(self.state.done.items()):
            if file_id in present or file_id in self.group:
                continue  # a file sharing a bundle's fragment goes with that bundle's commit
            for rel in record.fragments:
                self.store.remove(self.store.path(rel))
            self._remove_file_error(file_id)
            self.journal.append({"event": "forget", "file_id": file_id, "run": self.run_id})
            self.state.done.pop(file_id)
            self.report.notes.append(f"pruned {record.catalog.get('path', file_id)}")

    def _finish(self) -> None:
        for row in self.catalog:
            self.report.files[row["status"]] = self.report.files.get(row["status"], 0) + 1
        # The catalog holds every file ever ingested into OUT (this run's rows win), so a run
        # over other inputs does not hide earlier ones; --prune drops inputs that are gone.
        # Delta: other runs may have committed files meanwhile; the journal has them all.
        done = self.journal.load().done if self.delta is not None else self.state.done
        rows = {r.file_id: r.catalog for r in done.values() if r.catalog}
        rows.update({row["file_id"]: row for row in self.catalog})
        crash_point("catalog")
        self.store.write_table_atomic(self.store.path(CATALOG_DIR, "catalog.parquet"),
                                      catalog_table(sorted(rows.values(),
                                                           key=lambda r: r["path"])),
                                      self.options.output.compression)
        if self.delta is not None:
            self.delta.vacuum()
        else:
            self._write_common_metadata()
        self._clean_staging(finished=True)
        self.report.note_files(self.catalog)
        self.report.finished = time.time()
        self._save_report()

    def _write_common_metadata(self) -> None:
        """``<table>/_common_metadata``: the table's unified schema as the files hold it (no
        partition columns, ``_file_id`` last), so engines get its types without opening
        every fragment. Readers skip ``_``-prefixed names as data."""
        assert self.sink is not None
        files = []
        for table, schema in self.sink.schemas.items():
            path = self.store.path(table, "_common_metadata")
            columns = set(self.options.output.partition_by) if all(
                c in schema.names for c in self.options.output.partition_by) else set()
            fields = [f for f in schema if f.name not in columns and f.name != FILE_ID]
            sink = pa.BufferOutputStream()
            pq.write_metadata(pa.schema(fields + [pa.field(FILE_ID, pa.string())]), sink)
            data = sink.getvalue().to_pybytes()
            # Rewritten only when its bytes change: a run re-ingesting files of the same
            # tables (new data, --force) then writes, syncs and renames no schema file.
            try:
                if self.store.read_bytes(path) == data:
                    continue
            except FileNotFoundError:
                if not self.store.exists(self.store.path(table)):
                    continue
            files.append((path, data))
        self.store.write_many_atomic(files)  # synced together: one per table adds up

    def _save_report(self, planned: list[str] | None = None) -> None:
        """The run's JSON report; saved at the start too, so ``status`` sees unfinished runs."""
        data = self.report.asdict()
        if planned is not None:
            data["planned"] = planned
        self.store.write_bytes_atomic(self.store.path(STATE_DIR, "runs", f"{self.run_id}.json"),
                                      json.dumps(data, indent=2, default=str).encode())


def ingest(paths: str | Sequence[str], out: str, **options: Any) -> RunReport:
    """Ingest ``paths`` (files, directories, globs, fsspec URLs) into ``out``.

    Options are the CLI flags' names (``partition_by=["event"]``, ``chunk_size="64MB"``, ...).
    Returns the `RunReport`; rows rejected as bad land in ``out/_errors``.
    """
    from pipeline.options import as_paths

    return Runner(as_paths(paths), IngestOptions.from_kwargs(out, **options)).run()


__all__ = ["ingest", "Runner", "config_token"]

"""One ingest run: plan, submit chunks through a bounded window, verify, commit, catalog.

The client never holds data: tasks return manifests. Chunks are submitted largest file first
(``priority=``) through a window of about two tasks per worker thread, so the scheduler and
the client track a bounded number of tasks whatever the input size. A file's staged fragments
are committed (renamed into place and journaled) once every chunk of it is verified.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future, wait

from pipeline.execution.bundle import (
    BundleManifest,
    BundleTask,
    Carry,
    Member,
    bundle_id,
    pack,
    run_bundle,
)
from pipeline.execution.cluster import (
    BackgroundCluster,
    choose_layout,
    dashboard_link,
    worker_shape,
)
from pipeline.execution.task import ChunkManifest, ChunkTask, run_chunk
from pipeline.execution.watch import ClusterWatch
from pipeline.faults import crash_point
from pipeline.options import IngestOptions
from pipeline.output.catalog import catalog_table
from pipeline.output.journal import FileRecord, Journal
from pipeline.output.layout import CATALOG_DIR, ERRORS_DIR, FILE_ID, STATE_DIR
from pipeline.output.lock import OutputLock
from pipeline.output.rejects import errors_table, stage_errors
from pipeline.output.schemas import SchemaStore
from pipeline.output.store import Store
from pipeline.output.writer import SinkSpec
from pipeline.planning.plan import Plan, PlannedFile, build_plan
from pipeline.planning.schema import schema_change
from pipeline.report.progress import Progress
from pipeline.report.run_report import ChunkRecord, RunReport
from readers import get_reader
from readers.base import ChunkSpec, Rejected

log = logging.getLogger("chunkmill")


def config_token(options: IngestOptions) -> str:
    """Options that change the output: a file ingested under others is not 'unchanged'."""
    relevant = [options.table, list(options.partition_by), options.compression, options.format,
                options.header]
    return hashlib.blake2b(json.dumps(relevant).encode(), digest_size=8).hexdigest()


@dataclass
class FileRun:
    """Progress of one file within a run."""

    planned: PlannedFile
    chunks: list[ChunkSpec]
    manifests: dict[int, ChunkManifest] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    attempts: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.manifests) == len(self.chunks)


@dataclass
class BundleRun:
    """Small files read by one task into shared fragments, and committed together."""

    members: list[FileRun]
    carries: list[Carry] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    """Files gone from the inputs (``--prune``) whose rows this bundle's commit drops."""
    attempts: int = 0

    @property
    def id(self) -> str:
        return bundle_id([r.planned.source.file_id for r in self.members]
                         + [c.file_id for c in self.carries])

    @property
    def size(self) -> int:
        return sum(r.planned.source.size for r in self.members)


class Runner:
    """Carries out one ingest; use `pipeline.ingest` rather than this class directly."""

    def __init__(self, paths: Sequence[str], options: IngestOptions) -> None:
        self.paths = list(paths)
        self.options = options
        self.store = Store(options.out, options.storage_options)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self.run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
        self.report = RunReport(self.run_id, options.out, time.time())
        self.catalog: list[dict[str, Any]] = []
        self.config = config_token(options)
        self.monitor = ClusterWatch(self.report)
        self.ready: list[FileRun] = []
        self.ready_bundles: list[tuple[BundleRun, BundleManifest]] = []
        self.cluster: BackgroundCluster | None = None
        self.layout = "processes"

    # --- top level ------------------------------------------------------------------------------
    def run(self) -> RunReport:
        with OutputLock(self.store):
            self.journal = Journal(self.store)
            self.done, self.interrupted = self.journal.load()
            self.sharing = self._shared_fragments()
            self.group: set[str] = set()
            schemas = SchemaStore(self.store)
            known = schemas.load()
            try:
                self._run_locked(known, schemas)
            finally:
                if self.cluster is not None:
                    self.cluster.close()
        return self.report

    def _run_locked(self, known: dict[str, Any], schemas: SchemaStore) -> None:
        plan = build_plan(self.paths, self.options, skip=self._unchanged, known=known,
                          unskip=self._discovered)
        self._note_schema_changes(known, plan)
        schemas.save({**known, **plan.schemas})
        self.sink = SinkSpec(self.store, self.run_id, plan.schemas,
                             self.options.partition_by, self.options.compression)
        self.store.rmtree(self.store.path(STATE_DIR, "staging"))
        todo = self._triage(plan)
        if self.options.prune:
            self._prune(plan)
        todo, bundles = self._bundle(todo, {f.source.file_id for f in plan.files},
                                     {f.source.file_id for f in plan.files if f.error})
        self._save_report(planned=[r.planned.source.path for r in todo]
                          + [r.planned.source.path for b in bundles for r in b.members])
        if todo and not bundles and not any(r.chunks for r in todo):
            for run in todo:  # catalog-only files (images, empty files): no cluster needed
                self._complete_file(run)
            self._commit_ready()
        elif todo or bundles:
            if self.cluster is None:
                self.cluster = BackgroundCluster(self.options, self.layout)
            client = self.cluster.client()
            if self.options.dashboard:
                self.report.dashboard = dashboard_link(client)
                log.warning("chunkmill: dashboard at %s", self.report.dashboard)
            self._execute(client, todo, bundles)
            self.monitor.collect(client)
        self._finish()

    def _discovered(self, found: list[Any]) -> set[str]:
        """Right after discovery: start the cluster if anything needs reading, while the
        files are described; and name the unchanged files to read again (see `_riders`)."""
        self.layout = choose_layout(self.options, {get_reader(f.reader) for f in found
                                                   if f.reader is not None and f.error is None})
        if self.cluster is None and any(not f.skipped and f.error is None for f in found):
            self.cluster = BackgroundCluster(self.options, self.layout)
        return self._riders(found)

    def _note_schema_changes(self, known: dict[str, Any], plan: Plan) -> None:
        """Tables whose schema grew since earlier runs: their older fragments differ."""
        for table, schema in plan.schemas.items():
            if table in known and not schema.equals(known[table]):
                note = (f"table {table}: schema changed since earlier runs "
                        f"({schema_change(known[table], schema)}); older fragments keep their "
                        "types: read with union_by_name=true")
                self.report.notes.append(note)
                log.warning("chunkmill: %s", note)

    def _unchanged(self, file_id: str, fingerprint: str) -> bool:
        prev = self.done.get(file_id)
        return (not self.options.force and prev is not None and file_id not in self.interrupted
                and prev.fingerprint == fingerprint and prev.config == self.config)

    # --- bundles --------------------------------------------------------------------------------
    def _shared_fragments(self) -> dict[str, set[str]]:
        """Fragments that hold rows of several files (bundles), with those files."""
        users: dict[str, set[str]] = {}
        for record in self.done.values():
            for rel in record.fragments:
                users.setdefault(rel, set()).add(record.file_id)
        for fid, rels in self.interrupted.items():
            for rel in rels:
                users.setdefault(rel, set()).add(fid)
        return {rel: ids for rel, ids in users.items() if len(ids) > 1}

    def _fragments_of(self, file_id: str) -> list[str]:
        record = self.done.get(file_id)
        return (record.fragments if record else []) + self.interrupted.get(file_id, [])

    def _riders(self, found: list[Any]) -> set[str]:
        """Unchanged files to read again: they share a fragment that a changed file rewrites.

        Files gone from the inputs that share such a fragment are carried over (kept) or,
        with ``--prune``, dropped in the same commit.
        """
        present = {f.source.file_id for f in found}
        seeds = {f.source.file_id for f in found if not f.skipped}
        if self.options.prune:
            seeds |= {fid for fid in self.done if fid not in present}
        group: set[str] = set()
        frontier = [fid for fid in seeds if any(r in self.sharing
                                                for r in self._fragments_of(fid))]
        while frontier:
            fid = frontier.pop()
            if fid in group:
                continue
            group.add(fid)
            for rel in self._fragments_of(fid):
                frontier.extend(self.sharing.get(rel, ()))
        self.group = group
        return {fid for fid in group if fid in present and fid not in seeds}

    def _bundle(self, todo: list[FileRun], present: set[str], failed: set[str]
                ) -> tuple[list[FileRun], list[BundleRun]]:
        """Split the runs into ones of their own and bundles of small files.

        Files that shared a fragment go into one bundle (one commit replaces the fragment),
        even one that grew or became empty since; rows of those gone or unreadable now are
        carried over.
        """
        limit = self.options.small_file_size
        parent: dict[str, str] = {}

        def root(x: str) -> str:
            while parent.setdefault(x, x) != x:
                x = parent[x]
            return x

        # Files that shared a fragment stay together: one commit replaces it.
        for fid in self.group:
            for rel in self._fragments_of(fid):
                if rel in self.sharing:
                    parent[root(fid)] = root("@" + rel)
        groups: dict[str, tuple[list[FileRun], list[Carry], list[str]]] = {}
        alone: list[FileRun] = []
        singles: list[tuple[list, int]] = []
        for run in todo:
            fid = run.planned.source.file_id
            reader = get_reader(run.planned.reader)
            small = (reader.bundles and len(run.chunks) == 1 and limit > 0
                     and run.planned.source.size <= limit)
            if fid in parent and reader.bundles:
                if len(run.chunks) > 1:  # grew since: read it as one exact stream
                    run.chunks = [ChunkSpec(fid, 0, run.chunks[0].offset,
                                            run.planned.source.size, selector=("stream",),
                                            weight=run.planned.source.size)]
                groups.setdefault(root(fid), ([], [], []))[0].append(run)
            elif small:
                singles.append(([([run], [], [])], run.planned.source.size))
            else:
                alone.append(run)
        for fid in self.group - (present - failed):
            if fid not in self.done or fid not in parent:
                continue
            entry = groups.setdefault(root(fid), ([], [], []))
            if self.options.prune and fid not in present:
                entry[2].append(fid)
            else:  # gone, or unreadable this time: its rows stay
                entry[1].append(Carry(fid, self._carry_source(fid), retry=fid in failed))
        items = [([entry], sum(r.planned.source.size for r in entry[0]) + 1)
                 for entry in groups.values()] + singles
        workers, threads_per_worker = worker_shape(self.options, self.layout)
        threads = workers * threads_per_worker
        bundles = []
        for entries in pack(items, self.options.chunk_size, 2 * threads):
            runs = [r for e in entries for r in e[0]]
            carries = [c for e in entries for c in e[1]]
            forget = [f for e in entries for f in e[2]]
            if len(runs) == 1 and not carries and not forget:
                alone.extend(runs)  # a bundle of one is just a file
            else:
                bundles.append(BundleRun(runs, carries, forget))
        return alone, bundles

    def _carry_source(self, file_id: str) -> list[str]:
        """Where a gone file's rows are: its record's fragments, or those of a commit that
        was interrupted after its renames (previous fragments go only after all renames)."""
        record = self.done[file_id].fragments
        if all(self.store.exists(self.store.path(rel)) for rel in record):
            return list(record)
        return [rel for rel in self.interrupted.get(file_id, []) if rel not in record]

    def _triage(self, plan: Plan) -> list[FileRun]:
        todo = []
        for f in plan.files:
            if f.skipped:
                prev = self.done[f.source.file_id]
                self.catalog.append(dict(prev.catalog, status="unchanged", run_id=self.run_id))
            elif f.error:
                self._fail_file(f, f.error)
            else:
                todo.append(FileRun(f, list(f.chunks)))
        todo.sort(key=lambda r: -r.planned.source.size)  # largest first: shortest makespan
        return todo

    # --- execution ------------------------------------------------------------------------------
    def _execute(self, client: Client, todo: list[FileRun], bundles: list[BundleRun]) -> None:
        threads = sum(w.get("nthreads", 1) for w in
                      client.scheduler_info(n_workers=-1).get("workers", {}).values()) or 1
        window = self.options.window or max(2, 2 * threads)
        members = [r for b in bundles for r in b.members]
        progress = Progress(len(todo) + len(members),
                            sum(len(r.chunks) for r in todo + members),
                            sum(r.planned.source.size for r in todo + members),
                            enabled=self.options.progress)
        queue: list[tuple[Any, ChunkSpec | None]] = [(r, c) for r in todo for c in r.chunks]
        queue += [(b, None) for b in bundles]
        queue.reverse()  # pop() from the end keeps largest-file-first order
        running: dict[Future, tuple[Any, ChunkSpec | None, float]] = {}
        reader_options = self.options.reader_options()
        timeout = self.options.chunk_timeout

        def submit(run: FileRun | BundleRun, spec: ChunkSpec | None) -> None:
            if isinstance(run, BundleRun):
                task: Any = BundleTask(
                    run.id, [Member(m.planned.source, m.planned.reader,
                                    m.chunks[0] if m.chunks else None, m.planned.description)
                             for m in run.members],
                    run.carries, reader_options, self.sink, self.options.retries)
                key = f"chunkmill-{self.run_id}-bundle-{run.id}-{run.attempts}"
                fut = client.submit(run_bundle, task, key=key, pure=False, priority=run.size,
                                    retries=self.options.retries)
            else:
                task = ChunkTask(run.planned.source, run.planned.reader, spec,
                                 run.planned.description, reader_options, self.sink,
                                 self.options.retries)
                key = f"chunkmill-{self.run_id}-{spec.id}-{run.attempts}"
                fut = client.submit(run_chunk, task, key=key, pure=False,
                                    priority=run.planned.source.size,
                                    retries=self.options.retries)
            running[fut] = (run, spec, time.monotonic())

        def finished(run: FileRun | BundleRun, spec: ChunkSpec | None,
                     manifest: ChunkManifest | BundleManifest | str) -> None:
            if isinstance(run, BundleRun):
                crash_point("before_commit")
                self._bundle_done(run, manifest)
                progress.update(chunks=len(run.members), nbytes=run.size,
                                files=len(run.members))
                return
            run.manifests[spec.index] = manifest
            self.report.chunk_records.append(ChunkRecord(
                spec.id, run.planned.source.path, manifest.worker, manifest.started,
                manifest.finished, manifest.rows, manifest.bytes_read, manifest.error_count,
                run.attempts))
            progress.update(chunks=1, nbytes=spec.length)
            if run.complete:
                crash_point("before_commit")
                extra = self._settle(run)
                if extra:
                    progress.add_chunks(len(extra))
                    queue.extend(reversed([(run, c) for c in extra]))
                else:
                    progress.update(files=1)

        for run in todo:
            if not run.chunks:  # an empty file (or header only): nothing to run
                self._complete_file(run)
                progress.update(files=1)
        while queue or running:
            allowed = self.monitor.window(window)
            while queue and len(running) < allowed:
                submit(*queue.pop())
            if not running:
                time.sleep(0.1)  # paused by memory pressure: wait for it to ease
                self.monitor.poll(client, progress)
                continue
            try:
                wait(list(running), timeout=0.25, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass  # nothing finished yet: look at timeouts and pressure, then wait again
            for fut in [f for f in running if f.done()]:
                run, spec, _ = running.pop(fut)
                manifest = (self._bundle_result(fut, run) if isinstance(run, BundleRun)
                            else self._result(fut, run, spec))
                fut.release()
                finished(run, spec, manifest)
            if timeout:
                now = time.monotonic()
                for fut, (run, spec, began) in list(running.items()):
                    if now - began > timeout and fut.status == "pending":
                        # Python cannot kill the worker thread; we stop waiting for it.
                        running.pop(fut)
                        fut.cancel()
                        if isinstance(run, BundleRun):
                            finished(run, spec, f"ChunkTimeout: timed out after {timeout:g}s")
                            continue
                        message = (f"{run.planned.source.path}: chunk {spec.index} at offset "
                                   f"{spec.offset}: timed out after {timeout:g}s")
                        finished(run, spec, self._chunk_failure(run, spec, "ChunkTimeout",
                                                                message))
            self._commit_ready()
            self.monitor.poll(client, progress)
        self._commit_ready()
        progress.close()

    def _result(self, fut: Future, run: FileRun, spec: ChunkSpec) -> ChunkManifest:
        try:
            return fut.result()
        except Exception as exc:  # worker lost too often, out of memory, ...
            text = str(exc).strip().splitlines()
            message = (f"{run.planned.source.path}: chunk {spec.index} at offset {spec.offset}: "
                       f"{type(exc).__name__}: {text[0] if text else ''}")
            return self._chunk_failure(run, spec, type(exc).__name__, message)

    def _bundle_result(self, fut: Future, run: BundleRun) -> BundleManifest | str:
        try:
            return fut.result()
        except Exception as exc:  # worker lost too often, out of memory, ...
            text = str(exc).strip().splitlines()
            return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")

    def _bundle_failure(self, run: BundleRun, why: str) -> None:
        """A bundle task that produced nothing: its files fail, their old rows stay as they
        are (with the carried files'), and the next run tries them again."""
        for member in run.members:
            self._fail_file(member.planned, f"{member.planned.source.path}: {why} "
                                             f"(in a bundle of {len(run.members)} small files)")

    def _bundle_done(self, run: BundleRun, manifest: BundleManifest | str) -> None:
        if isinstance(manifest, str):
            self._bundle_failure(run, manifest)
            return
        for member, m in zip(run.members, manifest.members, strict=True):
            m.fragments = list(manifest.fragments)  # shared: renamed once at commit
            if member.chunks:  # an empty file has no chunk, and no rows
                member.manifests[member.chunks[0].index] = m
        rows = sum(m.rows for m in manifest.members)
        self.report.chunk_records.append(ChunkRecord(
            f"bundle-{run.id}", f"{len(run.members)} files", manifest.worker, manifest.started,
            manifest.finished, rows, run.size, sum(m.error_count for m in manifest.members),
            run.attempts))
        self.ready_bundles.append((run, manifest))

    def _chunk_failure(self, run: FileRun, spec: ChunkSpec, error_type: str,
                       message: str) -> ChunkManifest:
        """A chunk that produced nothing: one ``_errors`` row, the file goes on."""
        manifest = ChunkManifest(spec.id, spec.file_id, spec.index, failed=message,
                                 started=time.time(), finished=time.time())
        rejected = Rejected("chunk", error_type, message, spec.offset)
        table = errors_table([(spec.file_id, run.planned.source.path, spec.index, rejected)],
                             self.run_id)
        manifest.fragments = [stage_errors(self.sink, spec.id, table)]
        manifest.error_count = 1
        return manifest

    def _settle(self, run: FileRun) -> list[ChunkSpec]:
        """Reconcile a finished file; returns chunks to run again, or commits the file."""
        planned = run.planned
        reader = get_reader(planned.reader)()
        if reader.reconciles:
            # Failed chunks still report what they learnt (quote counts): later chunks get
            # checked all the same, and the failed one counts as a gap.
            facts = [dict(run.manifests[c.index].facts, failed=bool(run.manifests[c.index].failed))
                     for c in run.chunks]
            rec = reader.reconcile(planned.source, planned.description, run.chunks, facts)
            if rec.replace_plan is not None:
                self._discard(run, list(run.manifests.values()))
                run.manifests.clear()
                run.chunks = rec.replace_plan
                run.attempts += 1
                run.notes.append(rec.note or "re-planned")
                log.warning("chunkmill: %s: %s", planned.source.path, rec.note)
                self.report.chunk_reruns += len(rec.replace_plan)
                return list(rec.replace_plan)
            if rec.rerun:
                self._discard(run, [run.manifests.pop(c.index) for c in rec.rerun])
                by_index = {c.index: c for c in rec.rerun}
                run.chunks = [by_index.get(c.index, c) for c in run.chunks]
                run.attempts += 1
                self.report.chunk_reruns += len(rec.rerun)
                return list(rec.rerun)
        self._complete_file(run)
        return []

    def _discard(self, run: FileRun, manifests: list[ChunkManifest]) -> None:
        for m in manifests:
            for frag in m.fragments:
                self.store.remove(frag.staged)

    # --- commit ---------------------------------------------------------------------------------
    def _rel(self, path: str) -> str:
        return path[len(self.store.root):].lstrip("/")

    def _complete_file(self, run: FileRun) -> None:
        """Queue a verified file for the next commit batch."""
        self.ready.append(run)

    def _catalog_row(self, run: FileRun) -> dict[str, Any]:
        planned, source = run.planned, run.planned.source
        manifests = [run.manifests[c.index] for c in run.chunks]
        rows = sum(m.rows for m in manifests)
        errors = sum(m.error_count for m in manifests)
        failed = [m.failed for m in manifests if m.failed]
        if failed and rows == 0 and len(failed) == len(manifests):
            status = "failed"
            self.report.failures.append(failed[0])
        else:
            status = "partial" if errors else "ok"
        metadata = dict(planned.description.metadata if planned.description else {})
        if planned.description is not None:
            metadata.update(get_reader(planned.reader)().summarize(
                source, planned.description, run.chunks, [m.facts for m in manifests]))
        if run.notes:
            metadata["notes"] = run.notes
        if any(m.facts.get("unterminated_quote_at_eof") for m in manifests):
            metadata["warning"] = "file ends inside an open quoted field"
        return {"file_id": source.file_id, "path": source.path, "format": planned.reader,
                "size_bytes": source.size, "mtime": source.mtime,
                "fingerprint": source.fingerprint, "status": status, "tables": planned.tables,
                "rows": rows, "chunks": len(manifests), "error_count": errors,
                "duration_s": round(time.time() - run.started, 3), "metadata": metadata,
                "run_id": self.run_id, "ingested_at": time.time()}

    def _commit_ready(self) -> None:
        """Commit every queued file and bundle: one journal write (and fsync) per step.

        All renames come before any removal of previous fragments, so a run killed in between
        leaves the old fragments whole until the new ones all are (see `_carry_source`).
        """
        if not self.ready and not self.ready_bundles:
            return
        batch, self.ready = self.ready, []
        bundles, self.ready_bundles = self.ready_bundles, []
        batch += [m for run, _ in bundles for m in run.members]
        work = []  # (file id, fingerprint, config, catalog row, fragments, final, previous)
        for run in batch:
            fragments = [f for c in run.chunks for f in run.manifests[c.index].fragments]
            fid = run.planned.source.file_id
            work.append((fid, run.planned.source.fingerprint, self.config,
                         self._catalog_row(run), fragments,
                         list(dict.fromkeys(self._rel(f.final) for f in fragments)),
                         self._previous(fid)))
        forget = []
        for run, manifest in bundles:
            for carry in run.carries:  # gone files: same record, new fragments
                record = self.done[carry.file_id]
                work.append((carry.file_id, "" if carry.retry else record.fingerprint,
                             record.config,
                             dict(record.catalog, rows=manifest.carried.get(carry.file_id, 0)),
                             manifest.fragments,
                             list(dict.fromkeys(self._rel(f.final) for f in manifest.fragments)),
                             self._previous(carry.file_id)))
            forget += [(fid, self._previous(fid)) for fid in run.forget]
        self.journal.append(*({"event": "committing", "file_id": fid, "run": self.run_id,
                               "fragments": final, "previous": previous}
                              for fid, _, _, _, _, final, previous in work))
        renamed: set[str] = set()
        staged = [f for item in work for f in item[4]]
        for i, frag in enumerate(staged):
            if i == len(staged) // 2:
                crash_point("mid_commit")
            if frag.staged not in renamed:
                renamed.add(frag.staged)
                self.store.replace(frag.staged, frag.final)
        batch_ids = {item[0] for item in work} | {fid for fid, _ in forget}
        keep = {rel for item in work for rel in item[5]}
        gone = {rel for item in work for rel in item[6]} | {rel for _, p in forget for rel in p}
        for rel in sorted(gone - keep):
            # A fragment another file's record still lists is never deleted under it. Only
            # fragments shared when the run began can have other users: ask just those.
            users = self.sharing.get(rel, set()) - batch_ids
            if not any(rel in self.done[fid].fragments for fid in users if fid in self.done):
                self.store.remove(self.store.path(rel))
        failing = {c.file_id for run, _ in bundles for c in run.carries if c.retry}
        for item in work:
            if item[0] not in failing:  # its file-level error row is from this very run
                self.store.remove(self.store.path(ERRORS_DIR, f"{item[0]}-file.parquet"))
        self.journal.append(*({"event": "committed", "file_id": fid, "run": self.run_id,
                               "fingerprint": fingerprint, "config": config,
                               "fragments": final,
                               "catalog": {k: v for k, v in row.items() if k != "run_id"}}
                              for fid, fingerprint, config, row, _, final, _ in work),
                            *({"event": "forget", "file_id": fid, "run": self.run_id}
                              for fid, _ in forget))
        carried = {c.file_id for run, _ in bundles for c in run.carries}
        for fid, fingerprint, config, row, _, final, _ in work:
            self.done[fid] = FileRecord(fid, fingerprint, config, final, row)
            if fid in carried:
                continue  # not an input of this run: its catalog row stays as it was
            self.catalog.append(row)
            self.report.rows += row["rows"]
            self.report.errors += row["error_count"]
            self.report.bytes_read += row["size_bytes"]
            self.report.chunks += row["chunks"]
        for fid, _ in forget:
            record = self.done.pop(fid, None)
            self.report.notes.append(f"pruned {record.catalog.get('path', fid) if record else fid}")

    def _previous(self, file_id: str) -> list[str]:
        prev = list(self.done[file_id].fragments) if file_id in self.done else []
        return prev + [p for p in self.interrupted.pop(file_id, []) if p not in prev]

    def _fail_file(self, planned: PlannedFile, message: str) -> None:
        source = planned.source
        rejected = Rejected("file", "FileError", message, None)
        table = errors_table([(source.file_id, source.path, None, rejected)], self.run_id)
        self.store.write_table_atomic(
            self.store.path(ERRORS_DIR, f"{source.file_id}-file.parquet"), table,
            self.options.compression)
        self.report.failures.append(message)
        self.report.errors += 1
        row = {"file_id": source.file_id, "path": source.path, "format": planned.reader,
               "size_bytes": source.size, "mtime": source.mtime,
               "fingerprint": source.fingerprint, "status": "failed", "tables": planned.tables,
               "rows": 0, "chunks": 0, "error_count": 1, "duration_s": 0.0,
               "metadata": {"error": message}, "run_id": self.run_id,
               "ingested_at": time.time()}
        self.journal.append({"event": "failed", "file_id": source.file_id, "run": self.run_id,
                             "catalog": row})
        self.catalog.append(row)

    def _prune(self, plan: Plan) -> None:
        """Forget files that are no longer among the inputs, with their fragments."""
        seen = {f.source.file_id for f in plan.files}
        for file_id, record in list(self.done.items()):
            if file_id in seen or file_id in self.group:
                continue  # a file sharing a bundle's fragment goes with that bundle's commit
            for rel in record.fragments:
                self.store.remove(self.store.path(rel))
            self.store.remove(self.store.path(ERRORS_DIR, f"{file_id}-file.parquet"))
            self.journal.append({"event": "forget", "file_id": file_id, "run": self.run_id})
            self.done.pop(file_id)
            self.report.notes.append(f"pruned {record.catalog.get('path', file_id)}")

    def _finish(self) -> None:
        for row in self.catalog:
            self.report.files[row["status"]] = self.report.files.get(row["status"], 0) + 1
        # The catalog holds every file ever ingested into OUT (this run's rows win), so a run
        # over other inputs does not hide earlier ones; --prune drops inputs that are gone.
        rows = {r.file_id: r.catalog for r in self.done.values() if r.catalog}
        rows.update({row["file_id"]: row for row in self.catalog})
        crash_point("catalog")
        self.store.write_table_atomic(self.store.path(CATALOG_DIR, "catalog.parquet"),
                                      catalog_table(sorted(rows.values(),
                                                           key=lambda r: r["path"])),
                                      self.options.compression)
        self.store.rmtree(self.store.path(STATE_DIR, "staging", self.run_id))
        self.report.finished = time.time()
        self._save_report()

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

    opts = IngestOptions.from_kwargs(out, **options)
    return Runner(as_paths(paths), opts).run()


__all__ = ["ingest", "Runner", "config_token", "FILE_ID"]

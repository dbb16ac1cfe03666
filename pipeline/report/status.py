"""``chunkmill status OUT``: what is done, pending and failed, from the journal and run reports."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from pipeline.errors import UsageError
from pipeline.output.journal import Journal
from pipeline.output.layout import STATE_DIR, path_text
from pipeline.output.lock import OutputLock
from pipeline.output.store import open_store


def status(out: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-table and per-file state of OUT, and the last run's report."""
    store = open_store(out, storage_options)
    if not store.exists(store.path(STATE_DIR)):
        raise UsageError(f"{out}: not a chunkmill output directory (no {STATE_DIR}/)")
    entries = list(Journal(store).entries())
    journal = Journal(store).load(entries)
    done, interrupted = journal.done, journal.interrupted
    runs = store.glob(store.path(STATE_DIR, "runs", "*.json"))
    last: dict[str, Any] = {}
    if runs:
        last = json.loads(store.read_bytes(runs[-1]))
    # After the last report: a run that ends in between leaves an unfinished report and a
    # free lock, and the advice to re-run is then right; the other order could advise a
    # re-run while a run that just started holds the lock (exit 4).
    live = OutputLock(store).live()
    # From the journal, which holds every file's catalog row as of its last ingest (the
    # catalog is written from it): no pyarrow to import, which was most of the command's time.
    files: dict[str, dict[str, Any]] = {}
    for record in sorted(done.values(), key=lambda r: str(r.catalog.get("path", ""))):
        row = record.catalog
        if not row.get("path"):
            continue
        state = "failed" if row.get("status") == "failed" else "done"
        if record.file_id in interrupted:
            state = "pending"
        files[path_text(row["path"])] = {
            "state": state, "status": row.get("status"), "rows": row.get("rows"),
            "tables": row.get("tables"), "errors": row.get("error_count")}
    if live is not None:
        live = _live_progress(live, entries, last)
    unfinished = not last.get("finished")
    for path_ in [path_text(p) for p in last.get("planned", [])] if unfinished else []:
        if path_ not in files or files[path_]["state"] != "done":
            files.setdefault(path_, {"status": None, "rows": 0, "tables": [], "errors": 0})
            files[path_]["state"] = "pending"
    tables: dict[str, Counter] = {}
    for info in files.values():
        for table in info.get("tables") or [NOT_READ]:
            tables.setdefault(table, Counter())[info["state"]] += 1
    return {"out": out, "files": files, "tables": {t: dict(c) for t, c in tables.items()},
            "totals": dict(Counter(i["state"] for i in files.values())),
            "last_run": {k: last.get(k) for k in ("run_id", "started", "finished", "rows",
                                                  "errors", "files", "failures")},
            "last_run_finished": not unfinished, "live": live}


NOT_READ = "(not read yet)"
"""The table of a planned file that no run has read yet."""


def _live_progress(owner: dict[str, Any], entries: list[dict[str, Any]],
                   last: dict[str, Any]) -> dict[str, Any]:
    """What the live run (holder of the lock) has done so far, from the journal."""
    run = owner.get("run")
    committed = [e for e in entries if e.get("event") == "committed" and e.get("run") == run
                 and run is not None]
    staged = {(e.get("file_id"), e.get("index")) for e in entries
              if e.get("event") == "staged" and e.get("run") == run and run is not None}
    planned = last.get("planned") if run is not None and last.get("run_id") == run else None
    return {"pid": owner.get("pid"), "host": owner.get("host"),
            "started": owner.get("started"), "run_id": run,
            "files_planned": None if planned is None else len(planned),
            "files_committed": len(committed),
            "chunks_committed": sum(int(e.get("catalog", {}).get("chunks") or 0)
                                    for e in committed),
            "rows_committed": sum(int(e.get("catalog", {}).get("rows") or 0)
                                  for e in committed),
            "chunks_staged": len(staged)}


def _live_line(live: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(live.get("started") or 0))
    planned = live["files_planned"]
    files = (f"{live['files_committed']} of {planned} file(s)" if planned is not None
             else f"{live['files_committed']} file(s)")
    return (f"run {live.get('run_id') or '?'} is live: pid {live.get('pid')} on "
            f"{live.get('host')}, started {started}\n"
            f"  so far {files} committed ({live['chunks_committed']} chunk(s), "
            f"{live['rows_committed']:,} rows), {live['chunks_staged']} chunk(s) staged\n"
            "  wait for it to finish (or stop it) before starting another run into this OUT")


def format_status(info: dict[str, Any]) -> str:
    totals = info["totals"]
    last = info["last_run"]
    live = info.get("live")
    lines = [f"{info['out']}: {totals.get('done', 0)} done, {totals.get('pending', 0)} pending, "
             f"{totals.get('failed', 0)} failed"]
    if live is not None:
        lines.append(_live_line(live))
    if live is None or live.get("run_id") != last.get("run_id"):
        lines.append(f"last run {last.get('run_id')}: "
                     + ("finished" if info["last_run_finished"] else
                        "did not finish (the live run resumes it)" if live is not None else
                        "did not finish (re-run to resume)")
                     + f", {last.get('rows') or 0:,} rows, {last.get('errors') or 0:,} "
                       "rejected")
    for table, counts in sorted(info["tables"].items()):
        lines.append(f"  table {table}: " + ", ".join(f"{n} {s}" for s, n in
                                                      sorted(counts.items())))
    for path, f in sorted(info["files"].items()):
        lines.append(f"  {f['state']:8} {f.get('status') or '-':9} {f.get('rows') or 0:>12,} "
                     f"rows  {path}")
    return "\n".join(lines)

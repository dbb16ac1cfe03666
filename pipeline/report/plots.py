"""Bokeh views of a saved run report: chunks per worker thread, throughput, memory and
pressure, and tables of the run's files and errors.

Every function takes the report as the plain dict saved under ``OUT/_chunkmill/runs/`` (a
`RunReport` works too) and tolerates missing parts: a report saved before any chunk finished,
or written by a version without ``memory_timeline``, still renders, with a note in the plot.
Times are seconds since the run started, shared by all plots so they pan and zoom together.

    from pipeline.report import plots
    report = plots.load_report("lake/")          # latest run that did work
    errors = plots.load_errors("lake/", report["run_id"])
    plots.save_html(report, "run.html", errors)  # standalone page, works offline
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import (
    BoxAnnotation,
    ColumnDataSource,
    Div,
    HoverTool,
    Label,
    Legend,
    LegendItem,
    NumeralTickFormatter,
    Range1d,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.resources import INLINE

from pipeline.errors import SourceNotFound
from pipeline.output.layout import ERRORS_DIR
from pipeline.output.store import Store, open_store
from pipeline.pressure.events import MemoryPoint, PressureEvent, PressureLevel

__all__ = ["load_report", "list_runs", "format_runs", "load_errors", "did_work",
           "chunks_per_worker", "throughput", "memory_timeline", "report_layout", "save_html"]

RUNS_DIR = "_chunkmill/runs"
LEVEL_COLORS = {PressureLevel.NORMAL: "#43a047", PressureLevel.ELEVATED: "#fdd835",
                PressureLevel.HIGH: "#fb8c00", PressureLevel.CRITICAL: "#e53935"}
NO_WORKER = "(no worker)"
REJECTED_OUTLINE = "#d32f2f"
TOOLS = "xpan,xwheel_zoom,box_zoom,reset,save"


# --- loading ------------------------------------------------------------------------------------
def did_work(report: Mapping[str, Any]) -> bool:
    """The run read, committed or failed something (not a re-run that found all unchanged)."""
    files = report.get("files") or {}
    return bool(report.get("chunk_records") or report.get("rows") or report.get("errors")
                or any(n for status, n in files.items() if status != "unchanged"))


def _runs(out: str | os.PathLike[str], storage_options: dict[str, Any] | None
          ) -> tuple[Store, list[str]]:
    """OUT's store and the ids of its saved run reports. Listed through `Store`, which
    reads OUT's own path as a name, not a pattern (``/data/run[2]/out``)."""
    store = open_store(os.fspath(out), storage_options)
    names = sorted(p.rsplit("/", 1)[-1][:-5]
                   for p in store.glob(store.path(RUNS_DIR, "*.json")))
    if not names:
        raise SourceNotFound(f"no run reports under {os.fspath(out)}/{RUNS_DIR} "
                             "(is this the --out of a chunkmill ingest?)")
    return store, names


def _read_report(store: Store, run_id: str) -> dict[str, Any]:
    return json.loads(store.read_bytes(store.path(RUNS_DIR, f"{run_id}.json")))


def _newest_first(store: Store, names: list[str]) -> Iterator[dict[str, Any]]:
    """Saved reports from the newest back, read one stamp at a time (run ids start with a
    UTC stamp to the second; runs sharing one are ordered by their start times)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.split("-", 1)[0], []).append(n)
    for stamp in sorted(groups, reverse=True):
        reports = [_read_report(store, n) for n in groups[stamp]]
        yield from sorted(reports, key=lambda r: float(r.get("started") or 0.0), reverse=True)


def load_report(out: str | os.PathLike[str], run_id: str | None = None,
                storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The saved report of run ``run_id`` of output ``out``; by default the latest run that
    did work (`did_work`), else the latest run.

    Runs after the one returned (re-runs that found every file unchanged) are named in its
    ``skipped_runs`` key. ``out`` is the ``--out`` of the run: a local directory or an fsspec
    URL. Raises `SourceNotFound` (exit code 2 in the CLI) naming the runs available when there
    is no match.
    """
    store, names = _runs(out, storage_options)
    if run_id is not None:
        run_id = run_id.removesuffix(".json")
        if run_id not in names:
            shown = ", ".join(names[-5:])
            raise SourceNotFound(f"no run {run_id!r} under {os.fspath(out)}/{RUNS_DIR} "
                                 f"(latest: {shown})")
        return _read_report(store, run_id)
    skipped: list[dict[str, Any]] = []
    for report in _newest_first(store, names):
        if did_work(report):
            if skipped:
                report["skipped_runs"] = [str(r.get("run_id")) for r in skipped]
            return report
        skipped.append(report)
    return skipped[0]  # no run did anything: the latest


def list_runs(out: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """Every run of ``out``, oldest first: run id, start, duration, files per status, rows,
    rejected, whether it finished and whether it did work."""
    store, names = _runs(out, storage_options)
    listed = []
    for r in reversed(list(_newest_first(store, names))):
        started, finished = float(r.get("started") or 0), float(r.get("finished") or 0)
        listed.append({"run_id": r.get("run_id"), "started": started,
                       "duration_s": max(0.0, finished - started) if finished else None,
                       "files": r.get("files") or {}, "rows": int(r.get("rows") or 0),
                       "rejected": int(r.get("errors") or 0), "finished": finished > 0,
                       "did_work": did_work(r)})
    return listed


def format_runs(runs: list[dict[str, Any]]) -> str:
    """``--list``: one line per run; ``*`` marks the one ``report`` shows by default."""
    shown = next((r["run_id"] for r in reversed(runs) if r["did_work"]),
                 runs[-1]["run_id"] if runs else None)
    lines = [f"  {'run':<24} {'started (UTC)':<20} {'duration':>9}  {'rows':>13}  files"]
    for r in runs:
        start = dt.datetime.fromtimestamp(r["started"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        took = f"{r['duration_s']:,.1f}s" if r["duration_s"] is not None else "unfinished"
        files = ", ".join(f"{n} {s}" for s, n in sorted(r["files"].items()) if n) or "none"
        mark = "*" if r["run_id"] == shown else " "
        lines.append(f"{mark} {r['run_id']:<24} {start:<20} {took:>9}  {r['rows']:>13,}  {files}")
    return "\n".join(lines)


def load_errors(out: str | os.PathLike[str], run_id: str, storage_options:
                dict[str, Any] | None = None, limit: int = 200) -> dict[str, Any]:
    """The run's rows of ``OUT/_errors`` (as many as are still there: a later run that read a
    file again replaced its rows): counts per file and error type, and the first ``limit``."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    store = open_store(os.fspath(out), storage_options)
    where = store.path(ERRORS_DIR)
    empty: dict[str, Any] = {"counts": [], "rows": [], "total": 0}
    if not store.exists(where):
        return empty
    columns = ["path", "chunk", "byte_offset", "kind", "error_type", "message"]
    try:
        table = ds.dataset(where, filesystem=store.filesystem, format="parquet").to_table(
            columns=columns, filter=pc.field("run_id") == run_id)
    except (OSError, ValueError):  # nothing readable there
        return empty
    counts = table.group_by(["path", "error_type"]).aggregate([([], "count_all")])
    counts = sorted(counts.to_pylist(), key=lambda r: -r["count_all"])
    return {"counts": [(r["path"], r["error_type"], r["count_all"]) for r in counts],
            "rows": table.slice(0, limit).to_pylist(), "total": table.num_rows}


def _as_dict(report: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Accept the saved JSON dict or a live `RunReport`."""
    if hasattr(report, "asdict"):
        return report.asdict()
    return dict(report)


# --- time base ----------------------------------------------------------------------------------
def _times(report: Mapping[str, Any]) -> tuple[float, float]:
    """(t0, t_end) in epoch seconds; an unfinished run ends at its last observation."""
    seen = [float(c.get("finished") or 0) for c in report.get("chunk_records") or []]
    seen += [float(s.get("time") or 0) for s in report.get("memory_timeline") or []]
    seen += [float(e.get("time") or 0) for e in report.get("pressure_events") or []]
    seen = [t for t in seen if t > 0]
    t0 = float(report.get("started") or 0) or min(seen, default=0.0)
    end = max(float(report.get("finished") or 0), max(seen, default=0.0))
    return t0, max(end, t0 + 1e-3)


def _x_range(report: Mapping[str, Any]) -> Range1d:
    t0, end = _times(report)
    return Range1d(0, (end - t0) * 1.02 or 1.0)


def _figure(title: str, x_range: Range1d | None, report: Mapping[str, Any], height: int,
            **kwargs: Any) -> Any:
    fig = figure(title=title, x_range=x_range or _x_range(report), height=height,
                 sizing_mode="stretch_width", tools=TOOLS, toolbar_location="above", **kwargs)
    fig.xaxis.axis_label = "seconds since run start"
    return fig


def _note(fig: Any, text: str) -> None:
    """An in-plot message for parts of the report that are empty."""
    fig.add_layout(Label(x=10, y=10, x_units="screen", y_units="screen", text=text,
                         text_color="#757575", text_font_size="11pt"))


# --- figures ------------------------------------------------------------------------------------
def _thread_label(thread: str) -> str:
    """``thread 1`` for Dask's ``0-Dask-Default-Threads-1618-1``; other names as they are."""
    tail = thread.rsplit("-", 1)[-1]
    return f"thread {tail}" if "Dask" in thread and tail.isdigit() else thread


def lanes(records: list[Mapping[str, Any]]) -> list[str]:
    """One lane per worker thread for each chunk record: the worker's address, with the thread
    when the worker ran chunks on several. Records without a thread (older reports) are packed
    into as many lanes as the worker ran chunks at once."""
    threads: dict[str, set[str]] = {}
    for c in records:
        threads.setdefault(str(c.get("worker") or NO_WORKER), set()).add(str(c.get("thread")
                                                                           or ""))
    out: list[str] = [""] * len(records)
    free: dict[str, list[float]] = {}  # packing: when each lane of a worker is free again
    order = sorted(range(len(records)), key=lambda i: float(records[i].get("started") or 0))
    for i in order:
        c = records[i]
        worker, thread = str(c.get("worker") or NO_WORKER), str(c.get("thread") or "")
        if thread:
            out[i] = worker if len(threads[worker]) == 1 else f"{worker} {_thread_label(thread)}"
            continue
        ends = free.setdefault(worker, [])
        start, end = float(c.get("started") or 0), float(c.get("finished") or 0)
        lane = next((k for k, e in enumerate(ends) if e <= start), len(ends))
        ends[lane:lane + 1] = [max(start, end)]
        out[i] = worker if lane == 0 else f"{worker} lane {lane + 1}"
    return out


def chunks_per_worker(report: Mapping[str, Any] | Any, *, x_range: Range1d | None = None) -> Any:
    """Gantt-like timeline: one lane per worker thread, one bar per chunk task from start to
    finish.

    Bars are coloured by input file; chunks with rejected records get a red outline (both in
    the legend). Hover shows the chunk id, file, rows, bytes, rejected records and attempt.
    """
    report = _as_dict(report)
    t0, _ = _times(report)
    records = list(report.get("chunk_records") or [])
    paths = sorted({str(c.get("path", "")) for c in records})
    color_of = {p: Category10_10[i % len(Category10_10)] for i, p in enumerate(paths)}
    data: dict[str, list[Any]] = {k: [] for k in (
        "worker", "lane", "left", "right", "duration", "chunk_id", "path", "rows", "bytes",
        "errors", "attempt", "color", "outline", "width")}
    data["lane"] = lanes(records)
    for c in records:
        started, finished = float(c.get("started") or t0), float(c.get("finished") or t0)
        errors = int(c.get("errors") or 0)
        data["worker"].append(str(c.get("worker") or NO_WORKER))
        data["left"].append(started - t0)
        data["right"].append(max(finished, started) - t0)
        data["duration"].append(max(0.0, finished - started))
        data["chunk_id"].append(str(c.get("chunk_id", "")))
        data["path"].append(str(c.get("path", "")))
        data["rows"].append(int(c.get("rows") or 0))
        data["bytes"].append(int(c.get("bytes") or 0))
        data["errors"].append(errors)
        data["attempt"].append(int(c.get("attempt") or 0))
        data["color"].append(color_of[str(c.get("path", ""))])
        data["outline"].append(REJECTED_OUTLINE if errors else "#424242")
        data["width"].append(2.5 if errors else 1.0)
    workers = sorted(set(data["lane"])) or [NO_WORKER]
    fig = _figure(f"Chunks per worker thread ({len(records)} chunk tasks)", x_range, report,
                  height=max(200, 110 + 30 * len(workers)), y_range=workers[::-1])
    source = ColumnDataSource(data)
    bars = fig.hbar(y="lane", left="left", right="right", height=0.7, fill_color="color",
                    fill_alpha=0.75, line_color="outline", line_width="width", source=source)
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[
        ("chunk", "@chunk_id"), ("file", "@path"), ("worker", "@lane"),
        ("rows", "@rows{0,0}"), ("bytes", "@bytes{0.0 b}"), ("rejected", "@errors"),
        ("attempt", "@attempt"), ("took", "@duration{0.000} s")]))
    items = [LegendItem(label=_short(p), renderers=[bars],
                        index=data["path"].index(p)) for p in paths[:len(Category10_10)]]
    if len(paths) > len(Category10_10):
        items.append(LegendItem(label=f"(+{len(paths) - len(Category10_10)} files: colours "
                                      "repeat; hover a bar)", renderers=[]))
    outline = fig.hbar(y=[], left=[], right=[], height=0.7, fill_color="#ffffff",
                       line_color=REJECTED_OUTLINE, line_width=2.5)
    items.append(LegendItem(label="red outline: chunk with rejected records",
                            renderers=[outline]))
    _legend(fig, items)
    fig.yaxis.axis_label = "worker thread"
    if not records:
        _note(fig, "no chunk tasks recorded")
    return fig


def _short(path: str, keep: int = 48) -> str:
    return path if len(path) <= keep else "…" + path[-(keep - 1):]


def _legend(fig: Any, items: list[Any]) -> None:
    """A legend beside the plot (not over the bars)."""
    if items:
        fig.add_layout(Legend(items=items, label_text_font_size="8pt", click_policy="hide"),
                       "right")


def _window(span_s: float) -> float:
    """Rolling window: about a twentieth of the run, between 1 s and 60 s."""
    return float(min(60.0, max(1.0, span_s / 20)))


def throughput(report: Mapping[str, Any] | Any, *, x_range: Range1d | None = None,
               window_s: float | None = None) -> Any:
    """Input MB/s over time: bytes of chunks finished in a trailing window, divided by it.

    The dashed line is the run's average (all chunk bytes over the run's duration).
    """
    report = _as_dict(report)
    t0, end = _times(report)
    records = list(report.get("chunk_records") or [])
    done = np.array([float(c.get("finished") or t0) - t0 for c in records], dtype=float)
    size = np.array([float(c.get("bytes") or 0) for c in records], dtype=float)
    span = end - t0
    window = window_s or _window(span)
    grid = np.linspace(0.0, span, 300) if records else np.array([], dtype=float)
    if records:
        order = np.argsort(done)
        done, cum = done[order], np.concatenate([[0.0], np.cumsum(size[order])])
        # bytes finished in (t - window, t]: difference of cumulative sums at the two ends
        upper = cum[np.searchsorted(done, grid, side="right")]
        lower = cum[np.searchsorted(done, grid - window, side="right")]
        rate = (upper - lower) / window / 1e6
    else:
        rate = np.array([], dtype=float)
    fig = _figure(f"Throughput (input MB/s, {window:g} s rolling window)", x_range, report,
                  height=220)
    source = ColumnDataSource({"t": grid, "mb_s": rate, "zero": np.zeros_like(rate)})
    fig.varea(x="t", y1="zero", y2="mb_s", source=source, fill_color="#1e88e5",
              fill_alpha=0.2)
    line = fig.line(x="t", y="mb_s", source=source, line_color="#1e88e5", line_width=2)
    fig.add_tools(HoverTool(renderers=[line], mode="vline",
                            tooltips=[("t", "@t{0.0} s"), ("MB/s", "@mb_s{0,0.0}")]))
    items = [LegendItem(label=f"MB/s finished in the trailing {window:g} s", renderers=[line])]
    if records and span > 0:
        average = float(size.sum()) / span / 1e6
        flat = fig.line(x=[0.0, span], y=[average, average], line_dash="dashed",
                        line_color="#616161")
        items.append(LegendItem(label=f"dashed: run average ({average:,.1f} MB/s)",
                                renderers=[flat]))
    else:
        _note(fig, "no chunk tasks recorded")
    _legend(fig, items)
    fig.yaxis.axis_label = "MB/s"
    fig.y_range.start = 0
    return fig


def _level_spans(samples: list[MemoryPoint], events: list[PressureEvent],
                 end: float) -> list[tuple[float, float, PressureLevel]]:
    """(start, stop, level) intervals of the highest level across workers, above NORMAL.

    Taken from the memory samples when there are any, else replayed from the level changes.
    """
    changes = ([(s.time, s.worker, s.level) for s in samples] or
               [(e.time, e.worker, e.new) for e in events])
    changes.sort(key=lambda c: c[0])
    current: dict[str, PressureLevel] = {}
    steps: list[tuple[float, PressureLevel]] = []
    for t, worker, level in changes:
        current[worker] = level
        top = max(current.values())
        if steps and steps[-1][0] == t:
            steps[-1] = (t, top)
        elif not steps or steps[-1][1] != top:
            steps.append((t, top))
    spans = []
    for i, (t, top) in enumerate(steps):
        stop = steps[i + 1][0] if i + 1 < len(steps) else end
        if top > PressureLevel.NORMAL and stop > t:
            spans.append((t, stop, top))
    return spans


def memory_timeline(report: Mapping[str, Any] | Any, *, x_range: Range1d | None = None) -> Any:
    """Memory of each worker over time, with bands where pressure rose above NORMAL.

    Band colour is the highest level any worker was at (yellow ELEVATED, orange HIGH, red
    CRITICAL); triangles mark each recorded level change, at that worker's memory then.
    """
    report = _as_dict(report)
    t0, end = _times(report)
    samples = [MemoryPoint.from_dict(s) for s in report.get("memory_timeline") or []
               if s.get("time") is not None]
    events = [PressureEvent.from_dict(e) for e in report.get("pressure_events") or []
              if e.get("time") is not None]
    fig = _figure("Worker memory and pressure level", x_range, report, height=300)
    sources: list[tuple[ColumnDataSource, str, str]] = []
    by_worker: dict[str, list[MemoryPoint]] = {}
    for s in sorted(samples, key=lambda s: s.time):
        by_worker.setdefault(s.worker or NO_WORKER, []).append(s)
    lines = []
    for i, (worker, rows) in enumerate(sorted(by_worker.items())):
        source = ColumnDataSource({
            "t": [s.time - t0 for s in rows],
            "memory": [s.memory_bytes for s in rows],
            "fraction": [s.memory_fraction or 0.0 for s in rows],
            "pressure": [s.pressure_fraction or 0.0 for s in rows],
            "level": [s.level.name for s in rows],
            "worker": [worker] * len(rows)})
        color = Category10_10[i % len(Category10_10)]
        lines.append(fig.line(x="t", y="memory", source=source, line_width=2, line_color=color))
        sources.append((source, color, worker))
    if lines:
        fig.add_tools(HoverTool(renderers=lines, tooltips=[
            ("worker", "@worker"), ("t", "@t{0.0} s"), ("memory", "@memory{0.0 b}"),
            ("of worker limit", "@fraction{0%}"), ("level", "@level"),
            ("memory used (level)", "@pressure{0%}")]))
    for start, stop, level in _level_spans(samples, events, end):
        fig.add_layout(BoxAnnotation(left=start - t0, right=stop - t0, fill_alpha=0.18,
                                     fill_color=LEVEL_COLORS[level], level="underlay"))
    markers = {k: [] for k in ("t", "memory", "worker", "old", "new", "paused", "color")}
    for e in events:
        worker = e.worker or NO_WORKER
        markers["t"].append(e.time - t0)
        markers["memory"].append(_memory_at(by_worker.get(worker, []), e))
        markers["worker"].append(worker)
        markers["old"].append(e.old.name)
        markers["new"].append(e.new.name)
        markers["paused"].append({True: "yes", False: "no"}.get(e.paused, "?"))
        markers["color"].append(LEVEL_COLORS[e.new])
    tri = fig.scatter(x="t", y="memory", source=ColumnDataSource(markers), marker="triangle",
                      size=11, fill_color="color", line_color="#212121")
    fig.add_tools(HoverTool(renderers=[tri], tooltips=[
        ("worker", "@worker"), ("t", "@t{0.0} s"), ("pressure", "@old → @new"),
        ("paused", "@paused")]))
    items = []
    for (source, color, worker), line in zip(sources, lines, strict=True):
        # a dot per sample: a run with a single sample still shows one
        dots = fig.scatter(x="t", y="memory", source=source, size=5, color=color)
        items.append(LegendItem(label=worker, renderers=[line, dots]))
    for level in (PressureLevel.ELEVATED, PressureLevel.HIGH, PressureLevel.CRITICAL):
        swatch = fig.quad(left=[], right=[], top=[], bottom=[], fill_alpha=0.18,
                          fill_color=LEVEL_COLORS[level], line_color=None)
        items.append(LegendItem(label=f"band: pressure {level.name} (any worker)",
                                renderers=[swatch]))
    items.append(LegendItem(label="triangle: pressure level change", renderers=[tri]))
    _legend(fig, items)
    if not samples:
        _note(fig, "no memory samples recorded" +
              (f"; {len(events)} pressure change(s)" if events else ""))
    fig.yaxis.axis_label = "memory"
    fig.yaxis.formatter = NumeralTickFormatter(format="0.0 b")
    fig.y_range.start = 0
    return fig


def _memory_at(rows: list[MemoryPoint], event: PressureEvent) -> int:
    """The worker's memory nearest the event (the event's own figure is the machine's)."""
    if not rows:
        return int(event.used_bytes or 0)
    return min(rows, key=lambda s: abs(s.time - event.time)).memory_bytes


# --- page ---------------------------------------------------------------------------------------
def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _summary(report: Mapping[str, Any]) -> Div:
    t0, end = _times(report)
    finished = float(report.get("finished") or 0) > 0
    files = report.get("files") or {}
    counts = ", ".join(f"{n} {s}" for s, n in sorted(files.items()) if n) or "none yet"
    duration = end - t0
    nbytes = int(report.get("bytes_read") or 0)
    workers = {c.get("worker") for c in report.get("chunk_records") or [] if c.get("worker")}
    started = dt.datetime.fromtimestamp(t0, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    cells = [
        ("run", str(report.get("run_id", "?")) + ("" if finished else " (unfinished)")),
        ("output", str(report.get("out", ""))),
        ("started", started),
        ("duration", f"{duration:,.1f} s"),
        ("files", counts),
        ("rows", f"{int(report.get('rows') or 0):,}"),
        ("rejected", f"{int(report.get('errors') or 0):,}"),
        ("input", f"{_mb(nbytes)} ({nbytes / 1e6 / duration if duration else 0:,.1f} MB/s)"),
        ("chunks", f"{int(report.get('chunks') or 0):,} "
                   f"(+{int(report.get('chunk_reruns') or 0)} re-run)"),
        ("workers", str(len(workers))),
        ("pressure changes", str(len(report.get("pressure_events") or []))),
        ("spilled", _mb(int(report.get("spilled_bytes") or 0))),
    ]
    rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                   f"<td>{html.escape(v)}</td></tr>" for k, v in cells)
    failures = report.get("failures") or []
    failed = "".join(f"<li>{html.escape(str(f))}</li>" for f in failures[:20])
    if len(failures) > 20:
        failed += f"<li>... {len(failures) - 20} more</li>"
    text = f"<h3>chunkmill run report</h3><table>{rows}</table>"
    skipped = report.get("skipped_runs") or []
    if skipped:
        text += (f"<p>Showing the latest run that did work; {len(skipped)} later run(s) found "
                 f"every file unchanged ({html.escape(', '.join(skipped[:5]))}). "
                 "<code>chunkmill report OUT --list</code> lists every run.</p>")
    if failed:
        text += f"<p style='color:#c62828'><b>failed files</b></p><ul>{failed}</ul>"
    return Div(text=text, sizing_mode="stretch_width")


TABLE_ROWS = 200
"""Most rows of each table on the page."""


def _table(css_class: str, head: list[str], rows: list[list[Any]], numeric: set[int]) -> str:
    cell = "<td style='padding:1px 8px;{}'>{}</td>"
    body = "".join(
        "<tr>" + "".join(cell.format("text-align:right" if i in numeric else "",
                                     html.escape(f"{v:,}" if isinstance(v, int) else str(v)))
                         for i, v in enumerate(r)) + "</tr>" for r in rows[:TABLE_ROWS])
    more = (f"<p>... {len(rows) - TABLE_ROWS:,} more</p>" if len(rows) > TABLE_ROWS else "")
    header = "".join(f"<th style='text-align:left;padding:1px 8px'>{html.escape(h)}</th>"
                     for h in head)
    return (f"<table class='{css_class}' style='border-collapse:collapse;font-size:9pt'>"
            f"<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>{more}")


def files_table(report: Mapping[str, Any] | Any) -> Div:
    """One row per input file of the run: status, rows, rejected, chunks, size, seconds."""
    report = _as_dict(report)
    files = list(report.get("file_rows") or [])
    text = "<h4>Files</h4>"
    if files:
        rows = [[f.get("path"), f.get("format") or "", f.get("status"), int(f.get("rows") or 0),
                 int(f.get("rejected") or 0), int(f.get("chunks") or 0),
                 _mb(int(f.get("bytes") or 0)), f"{float(f.get('seconds') or 0):,.2f}"]
                for f in files]
        text += _table("chunkmill-files", ["file", "format", "status", "rows", "rejected",
                                           "chunks", "size", "seconds"], rows, {3, 4, 5, 6, 7})
    else:
        text += "<p>no per-file record in this report (an unfinished run, or an older version)</p>"
    return Div(text=text, sizing_mode="stretch_width")


def errors_table(report: Mapping[str, Any] | Any, errors: Mapping[str, Any] | None) -> Div:
    """Rejected records and chunks of the run: counts per file and type, then the first ones
    (``errors`` from `load_errors`; without it, the report's own counts and failures)."""
    report = _as_dict(report)
    text = f"<h4>Errors ({int(report.get('errors') or 0):,} rejected in this run)</h4>"
    failures = report.get("failures") or []
    if failures:
        text += _table("chunkmill-failures", ["failed file"], [[f] for f in failures], set())
    if errors is not None and errors.get("total"):
        text += _table("chunkmill-error-counts", ["file", "error type", "rows"],
                       [list(c) for c in errors["counts"]], {2})
        text += "<p>first rows of <code>_errors</code> for this run:</p>" + _table(
            "chunkmill-errors", ["file", "chunk", "byte offset", "kind", "error type", "message"],
            [[r["path"], "" if r["chunk"] is None else r["chunk"],
              "" if r["byte_offset"] is None else r["byte_offset"], r["kind"], r["error_type"],
              r["message"]] for r in errors["rows"]], {1, 2})
    elif int(report.get("errors") or 0):
        counts = [[f.get("path"), int(f.get("rejected") or 0)]
                  for f in report.get("file_rows") or [] if f.get("rejected")]
        text += _table("chunkmill-error-counts", ["file", "rejected"], counts, {1})
        text += "<p>the rows themselves are in <code>OUT/_errors</code></p>"
    elif not failures:
        text += "<p>none</p>"
    return Div(text=text, sizing_mode="stretch_width")


def report_layout(report: Mapping[str, Any] | Any, errors: Mapping[str, Any] | None = None
                  ) -> Any:
    """Summary header, the three plots (their time axes linked), the files and errors tables."""
    report = _as_dict(report)
    x_range = _x_range(report)
    return column(_summary(report), chunks_per_worker(report, x_range=x_range),
                  throughput(report, x_range=x_range), memory_timeline(report, x_range=x_range),
                  files_table(report), errors_table(report, errors),
                  sizing_mode="stretch_width")


def save_html(report: Mapping[str, Any] | Any, path: str | os.PathLike[str],
              errors: Mapping[str, Any] | None = None) -> Path:
    """Write the report page as one standalone HTML file (BokehJS inlined: works offline).

    ``errors``: the run's ``_errors`` rows (`load_errors`) for the errors table. Written to a
    temporary file beside ``path`` then renamed, so a reader never sees half a page. Returns
    the path written.
    """
    report = _as_dict(report)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page = file_html(report_layout(report, errors), resources=INLINE,
                     title=f"chunkmill run {report.get('run_id', '')}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a report page is for sharing
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target

"""Bokeh views of a saved run report: chunks per worker, throughput, memory and pressure.

Every function takes the report as the plain dict saved under ``OUT/_chunkmill/runs/`` (a
`RunReport` works too) and tolerates missing parts: a report saved before any chunk finished,
or written by a version without ``memory_timeline``, still renders, with a note in the plot.
Times are seconds since the run started, shared by all plots so they pan and zoom together.

    from pipeline.report import plots
    report = plots.load_report("lake/")          # latest run
    plots.save_html(report, "run.html")          # standalone page, works offline
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import tempfile
from collections.abc import Mapping
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
    NumeralTickFormatter,
    Range1d,
    Span,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.resources import INLINE

from pipeline.errors import SourceNotFound
from pipeline.pressure.events import MemoryPoint, PressureEvent, PressureLevel

__all__ = ["load_report", "chunks_per_worker", "throughput", "memory_timeline",
           "report_layout", "save_html"]

RUNS_DIR = "_chunkmill/runs"
LEVEL_COLORS = {PressureLevel.NORMAL: "#43a047", PressureLevel.ELEVATED: "#fdd835",
                PressureLevel.HIGH: "#fb8c00", PressureLevel.CRITICAL: "#e53935"}
NO_WORKER = "(no worker)"
TOOLS = "xpan,xwheel_zoom,box_zoom,reset,save"


# --- loading ------------------------------------------------------------------------------------
def load_report(out: str | os.PathLike[str], run_id: str | None = None,
                storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The saved report of run ``run_id`` (default: the latest run) of output ``out``.

    ``out`` is the ``--out`` of the run: a local directory or an fsspec URL. Raises
    `SourceNotFound` (exit code 2 in the CLI) naming the runs available when there is no match.
    """
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(os.fspath(out), **(storage_options or {}))
    runs = f"{root.rstrip('/')}/{RUNS_DIR}"
    names = sorted(p.rsplit("/", 1)[-1][:-5] for p in fs.glob(f"{runs}/*.json"))
    if not names:
        raise SourceNotFound(f"no run reports under {os.fspath(out)}/{RUNS_DIR} "
                             "(is this the --out of a chunkmill ingest?)")
    if run_id is not None:
        run_id = run_id.removesuffix(".json")
        if run_id not in names:
            shown = ", ".join(names[-5:])
            raise SourceNotFound(f"no run {run_id!r} under {os.fspath(out)}/{RUNS_DIR} "
                                 f"(latest: {shown})")
        return _read_json(fs, f"{runs}/{run_id}.json")
    # Run ids start with a UTC stamp to the second: only runs sharing the newest stamp need
    # their start times compared, so a long history is not read in full.
    stamp = names[-1].split("-", 1)[0]
    newest = [_read_json(fs, f"{runs}/{n}.json") for n in names if n.split("-", 1)[0] == stamp]
    return max(newest, key=lambda r: float(r.get("started") or 0.0))


def _read_json(fs: Any, path: str) -> dict[str, Any]:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


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
def chunks_per_worker(report: Mapping[str, Any] | Any, *, x_range: Range1d | None = None) -> Any:
    """Gantt-like timeline: one row per worker, one bar per chunk task from start to finish.

    Bars are coloured by input file; chunks with rejected rows get a red outline. Hover shows
    the chunk id, file, rows, bytes, rejected rows and attempt.
    """
    report = _as_dict(report)
    t0, _ = _times(report)
    records = list(report.get("chunk_records") or [])
    paths = sorted({str(c.get("path", "")) for c in records})
    color_of = {p: Category10_10[i % len(Category10_10)] for i, p in enumerate(paths)}
    data: dict[str, list[Any]] = {k: [] for k in (
        "worker", "left", "right", "duration", "chunk_id", "path", "rows", "bytes", "errors",
        "attempt", "color", "outline")}
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
        data["outline"].append("#d32f2f" if errors else "#424242")
    workers = sorted(set(data["worker"])) or [NO_WORKER]
    fig = _figure(f"Chunks per worker ({len(records)} chunk tasks)", x_range, report,
                  height=max(160, 70 + 30 * len(workers)), y_range=workers[::-1])
    bars = fig.hbar(y="worker", left="left", right="right", height=0.7, fill_color="color",
                    fill_alpha=0.75, line_color="outline", source=ColumnDataSource(data))
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[
        ("chunk", "@chunk_id"), ("file", "@path"), ("worker", "@worker"),
        ("rows", "@rows{0,0}"), ("bytes", "@bytes{0.0 b}"), ("rejected", "@errors"),
        ("attempt", "@attempt"), ("took", "@duration{0.000} s")]))
    fig.yaxis.axis_label = "worker"
    if not records:
        _note(fig, "no chunk tasks recorded")
    return fig


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
    if records and span > 0:
        fig.add_layout(Span(location=float(size.sum()) / span / 1e6, dimension="width",
                            line_dash="dashed", line_color="#616161"))
    else:
        _note(fig, "no chunk tasks recorded")
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
    fig = _figure("Worker memory and pressure level", x_range, report, height=260)
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
        lines.append(fig.line(x="t", y="memory", source=source, line_width=2,
                              line_color=Category10_10[i % len(Category10_10)],
                              legend_label=worker))
    if lines:
        fig.add_tools(HoverTool(renderers=lines, tooltips=[
            ("worker", "@worker"), ("t", "@t{0.0} s"), ("memory", "@memory{0.0 b}"),
            ("of worker limit", "@fraction{0%}"), ("level", "@level"),
            ("memory used (level)", "@pressure{0%}")]))
        fig.legend.location = "top_left"
        fig.legend.click_policy = "hide"
        fig.legend.label_text_font_size = "8pt"
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
    if failed:
        text += f"<p style='color:#c62828'><b>failed files</b></p><ul>{failed}</ul>"
    return Div(text=text, sizing_mode="stretch_width")


def report_layout(report: Mapping[str, Any] | Any) -> Any:
    """Summary header and the three plots in one column, their time axes linked."""
    report = _as_dict(report)
    x_range = _x_range(report)
    return column(_summary(report), chunks_per_worker(report, x_range=x_range),
                  throughput(report, x_range=x_range), memory_timeline(report, x_range=x_range),
                  sizing_mode="stretch_width")


def save_html(report: Mapping[str, Any] | Any, path: str | os.PathLike[str]) -> Path:
    """Write the report page as one standalone HTML file (BokehJS inlined: works offline).

    Written to a temporary file beside ``path`` then renamed, so a reader never sees half a
    page. Returns the path written.
    """
    report = _as_dict(report)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page = file_html(report_layout(report), resources=INLINE,
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

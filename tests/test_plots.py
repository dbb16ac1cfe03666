"""`pipeline.report.plots`: figures and the standalone page from a real run's saved JSON, and from
reports with parts missing (no chunks yet, no memory samples, an unfinished run)."""

from __future__ import annotations

import json
import os
import time

import pytest
from bokeh.models import BoxAnnotation, FactorRange, GlyphRenderer, Label

import pipeline
from pipeline.errors import SourceNotFound
from pipeline.pressure.events import PressureEvent, PressureLevel
from pipeline.report import plots


def _write_csv(path, rows: int) -> None:
    lines = ["id,event,value,note"]
    for i in range(rows):
        lines.append(f"{i},{('click', 'view', 'buy')[i % 3]},{i * 0.5},\"note {i}, quoted\"")
        if i == rows // 2:
            lines.append("999999,buy,1.0,ok,ONE,TOO,MANY")  # rejected: a red-outlined chunk
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_scheduler) -> tuple:
    """One small real ingest (several chunks on two workers); its saved JSON and live report."""
    root = tmp_path_factory.mktemp("plots")
    src = root / "logs"
    src.mkdir()
    _write_csv(src / "a.csv", 3000)
    _write_csv(src / "b.csv", 1000)
    out = root / "out"
    report = pipeline.ingest([str(src)], out=str(out), partition_by=["event"],
                             chunk_size="16KB", scheduler=shared_scheduler)
    assert report.chunks >= 4 and report.errors == 2
    return out, plots.load_report(out), report


def _source(fig, glyph: str) -> dict:
    renderers = [r for r in fig.renderers
                 if isinstance(r, GlyphRenderer) and type(r.glyph).__name__ == glyph]
    assert renderers, f"no {glyph} in {fig.title.text}"
    return renderers[0].data_source.data


def _notes(fig) -> list[str]:
    return [m.text for m in fig.center if isinstance(m, Label)]


def _bands(fig) -> list[BoxAnnotation]:
    # fig.select would also find the box-zoom tool's own overlay
    return [b for b in fig.center if isinstance(b, BoxAnnotation)]


def test_load_report_is_the_saved_json(run) -> None:
    out, saved, report = run
    assert saved["run_id"] == report.run_id
    assert plots.load_report(out, run_id=report.run_id)["run_id"] == report.run_id
    assert plots.load_report(out, run_id=report.run_id + ".json")["rows"] == report.rows
    assert len(saved["chunk_records"]) == report.chunks


def test_chunks_per_worker_has_a_bar_per_chunk_on_its_worker(run) -> None:
    _, saved, _ = run
    fig = plots.chunks_per_worker(saved)
    data = _source(fig, "HBar")
    records = saved["chunk_records"]
    assert sorted(data["chunk_id"]) == sorted(c["chunk_id"] for c in records)
    assert isinstance(fig.y_range, FactorRange)
    assert set(fig.y_range.factors) == {c["worker"] for c in records}
    assert all(0 <= left <= right for left, right in zip(data["left"], data["right"],
                                                         strict=True))
    assert sum(data["rows"]) == saved["rows"]
    assert sum(data["errors"]) == saved["errors"] == 2  # one bad record per file
    assert not _notes(fig)


def test_throughput_accounts_for_every_byte(run) -> None:
    _, saved, _ = run
    fig = plots.throughput(saved, window_s=1.0)
    data = _source(fig, "Line")
    assert len(data["t"]) == len(data["mb_s"]) > 0
    assert min(data["mb_s"]) >= 0 and max(data["mb_s"]) > 0


def test_throughput_rolling_rate_is_exact_on_a_regular_run() -> None:
    # ten 1 MB chunks finishing once a second: 1 MB/s whatever the trailing 2 s window sees
    chunks = [{"chunk_id": f"c{i}", "path": "p", "worker": "w", "started": 100.0 + i - 1,
               "finished": 100.0 + i, "rows": 1, "bytes": 1_000_000} for i in range(1, 11)]
    report = {"run_id": "r", "started": 100.0, "finished": 110.0, "chunk_records": chunks}
    data = _source(plots.throughput(report, window_s=2.0), "Line")
    inside = [r for t, r in zip(data["t"], data["mb_s"], strict=True) if 2.5 < t < 9.5]
    assert inside and all(abs(r - 1.0) < 1e-9 for r in inside)


def test_memory_timeline_from_the_run(run) -> None:
    _, saved, _ = run
    fig = plots.memory_timeline(saved)
    samples = saved.get("memory_timeline") or []
    lines = [r for r in fig.renderers if type(r.glyph).__name__ == "Line"]
    workers = {r["worker"] for r in saved["chunk_records"]}
    assert workers <= {s["worker"] for s in samples}  # every worker that ran a chunk has a line
    assert len(lines) == len({s["worker"] for s in samples})
    assert not any("no memory samples" in text for text in _notes(fig))


def test_memory_timeline_bands_and_markers() -> None:
    t0 = 1000.0
    levels = ["NORMAL"] * 4 + ["ELEVATED"] * 4 + ["HIGH"] * 2 + ["NORMAL"] * 2
    samples = [{"time": t0 + i * 0.5, "worker": w, "memory_bytes": 10**8 * (i + 1),
                "memory_fraction": None if w == "tcp://b:2" else 0.1 * i,
                "level": level if w == "tcp://a:1" else "NORMAL"}
               for i, level in enumerate(levels) for w in ("tcp://a:1", "tcp://b:2")]
    # as saved by older versions (no memory figures), and as the plugin logs them now
    events = [{"time": t0 + 2.0, "worker": "tcp://a:1", "old": "NORMAL", "new": "ELEVATED"},
              PressureEvent(t0 + 4.0, "tcp://a:1", PressureLevel.ELEVATED, PressureLevel.HIGH,
                            0.85, 850 * 10**9, 1000 * 10**9, True).asdict(),
              {"time": t0 + 5.0, "worker": "tcp://a:1", "old": "HIGH", "new": "NORMAL"}]
    report = {"run_id": "r", "started": t0, "finished": t0 + 6, "memory_timeline": samples,
              "pressure_events": events}
    fig = plots.memory_timeline(report)
    bands = sorted((b.left, b.right, b.fill_color) for b in _bands(fig))
    assert bands == [(2.0, 4.0, plots.LEVEL_COLORS[PressureLevel.ELEVATED]),
                     (4.0, 5.0, plots.LEVEL_COLORS[PressureLevel.HIGH])]
    markers = _source(fig, "Scatter")
    assert markers["new"] == ["ELEVATED", "HIGH", "NORMAL"]
    assert markers["memory"] == [5 * 10**8, 9 * 10**8, 11 * 10**8]  # that worker's memory then
    assert markers["paused"] == ["?", "yes", "?"]
    # without samples, the bands are replayed from the level changes alone
    fig = plots.memory_timeline(dict(report, memory_timeline=[]))
    assert len(_bands(fig)) == 2


def test_save_html_is_standalone_and_holds_the_run(run, tmp_path) -> None:
    _, saved, _ = run
    page = plots.save_html(saved, tmp_path / "site" / "run.html")
    assert page == tmp_path / "site" / "run.html" and page.exists()
    assert os.listdir(page.parent) == ["run.html"]  # no temporary file left behind
    text = page.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "cdn.bokeh.org" not in text  # BokehJS is inlined: the page works offline
    for record in saved["chunk_records"]:
        assert record["chunk_id"] in text
        assert record["worker"] in text
    assert saved["run_id"] in text


def test_live_run_report_is_accepted(run, tmp_path) -> None:
    _, _, report = run
    assert plots.save_html(report, tmp_path / "live.html").exists()


@pytest.mark.parametrize("report", [
    {},
    {"run_id": "r", "out": "o", "started": 1000.0},  # saved at start: no chunks, no samples
    {"run_id": "r", "started": 1000.0, "finished": 0.0, "memory_timeline": None,
     "chunk_records": [{"chunk_id": "c0", "path": "p", "worker": "", "started": 1000.5,
                        "finished": 1001.0, "rows": 0, "bytes": 10, "errors": 1}]},
    {"run_id": "r", "started": 1000.0, "finished": 1002.0, "chunk_records": [],
     "pressure_events": [{"time": 1001.0, "worker": "w", "level": "HIGH",
                          "previous": "NORMAL"}]},  # the pressure plugin's own event shape
], ids=["empty", "started-only", "unfinished", "events-only"])
def test_partial_reports_still_render(report, tmp_path) -> None:
    for make in (plots.chunks_per_worker, plots.throughput, plots.memory_timeline):
        make(report)
    page = plots.save_html(report, tmp_path / "partial.html")
    assert "chunkmill run report" in page.read_text(encoding="utf-8")


def test_load_report_latest_and_missing(tmp_path) -> None:
    runs = tmp_path / "_chunkmill" / "runs"
    with pytest.raises(SourceNotFound, match="no run reports"):
        plots.load_report(tmp_path)
    runs.mkdir(parents=True)
    now = time.time()
    # two runs started within the same second: the stamp ties, the start time decides
    for run_id, started in (("20260101T000000-aaaaaa", now - 99),
                            ("20260102T101010-ffffff", now - 5),
                            ("20260102T101010-000000", now)):
        (runs / f"{run_id}.json").write_text(json.dumps({"run_id": run_id, "started": started}))
    assert plots.load_report(tmp_path)["run_id"] == "20260102T101010-000000"
    assert plots.load_report(str(tmp_path), "20260101T000000-aaaaaa")["started"] == now - 99
    with pytest.raises(SourceNotFound, match="20260102T101010-ffffff"):
        plots.load_report(tmp_path, run_id="nope")

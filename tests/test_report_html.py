"""`chunkmill report`: which run it shows, ``--list``, and the HTML page as a real browser draws
it (headless Chromium through chromedriver's WebDriver HTTP API; skipped without them)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline.cli import run as cli
from pipeline.report import plots


def _csv(path: Path, rows: int) -> None:
    lines = ["id,event,value"] + [f"{i},{('a', 'b')[i % 2]},{i}" for i in range(rows)]
    lines.insert(rows // 2, "1,2,3,4")  # one rejected record per file
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> tuple[Path, Any]:
    """A multi-chunk run on the in-process worker's threads, then an unchanged re-run."""
    root = tmp_path_factory.mktemp("report")
    (root / "in").mkdir()
    _csv(root / "in" / "a.csv", 60_000)
    _csv(root / "in" / "b.csv", 30_000)
    out = root / "out"
    first = pipeline.ingest(str(root / "in"), out=str(out), chunk_size="64KB",
                            layout="threads", small_file_size="0")
    again = pipeline.ingest(str(root / "in"), out=str(out), layout="threads",
                            small_file_size="0")
    assert first.errors == 2 and again.files == {"unchanged": 2}
    return out, first


def test_default_is_the_last_run_that_did_work_and_list_shows_all(lake, capsys) -> None:
    out, first = lake
    assert cli(["report", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"run {first.run_id}, the latest that did work" in printed.err
    assert f"{first.rows:,} rows" in printed.out
    assert cli(["report", str(out), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3 and listed[1].startswith(f"* {first.run_id}")
    assert "2 partial" in listed[1] and "2 unchanged" in listed[2]
    runs = plots.list_runs(out)
    assert [r["did_work"] for r in runs] == [True, False] and runs[0]["rows"] == first.rows


def test_lanes_per_worker_thread() -> None:
    dask = "0-Dask-Default-Threads-9-"
    records = [{"worker": "w1", "thread": dask + "0", "started": 0, "finished": 2},
               {"worker": "w1", "thread": dask + "1", "started": 0, "finished": 2},
               {"worker": "w2", "thread": "T", "started": 0, "finished": 1},
               # older reports name no thread: overlapping chunks get lanes of their own
               {"worker": "w3", "started": 0, "finished": 2},
               {"worker": "w3", "started": 1, "finished": 3},
               {"worker": "w3", "started": 2.5, "finished": 4}]
    assert plots.lanes(records) == ["w1 thread 0", "w1 thread 1", "w2", "w3", "w3 lane 2", "w3"]


def test_the_run_records_threads_memory_at_start_and_end_and_files(lake) -> None:
    _, first = lake
    pairs = {(c.worker, c.thread) for c in first.chunk_records}
    assert all(thread for _, thread in pairs)
    fig = plots.chunks_per_worker(first)
    assert len(fig.y_range.factors) == len(pairs)  # the two threads do not share a lane
    points = {}
    for p in first.memory_timeline:
        points.setdefault(p.worker, []).append(p.time)
    assert points and all(len(t) >= 2 for t in points.values())
    for times in points.values():  # sampled when the chunks started and after they ended
        assert min(times) <= min(c.started for c in first.chunk_records)
        assert max(times) >= max(c.finished for c in first.chunk_records)
    assert sorted((f["path"].rsplit("/", 1)[-1], f["status"], f["rejected"])
                  for f in first.file_rows) == [("a.csv", "partial", 1), ("b.csv", "partial", 1)]


# --- a real browser ----------------------------------------------------------------------------
PROBE = """
const out = {plots: [], tables: {}, glyphs: {}, legend: [], ready: false};
function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    if (el.tagName === 'CANVAS' && el.width >= 200 && el.height >= 100) {
      const d = el.getContext('2d').getImageData(0, 0, el.width, el.height).data;
      let ink = 0, bar = 0;
      for (let i = 0; i < d.length; i += 4) {
        if (d[i + 3] === 0) continue;
        if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) ink++;
        if (Math.abs(d[i] - arguments[0][0]) < 14 && Math.abs(d[i + 1] - arguments[0][1]) < 14
            && Math.abs(d[i + 2] - arguments[0][2]) < 14) bar++;
      }
      out.plots.push({w: el.width, h: el.height, ink: ink, bar: bar});
    }
    if (el.tagName === 'TABLE') {
      out.tables[el.getAttribute('class') || ''] = el.querySelectorAll('tbody tr').length;
    }
    if (el.shadowRoot) walk(el.shadowRoot);
  }
}
walk(document);
if (window.Bokeh && Bokeh.documents.length) {
  for (const m of Bokeh.documents[0].all_models) {
    const name = m.constructor.__name__;
    if (name === 'GlyphRenderer') {
      const g = m.glyph.constructor.__name__;
      (out.glyphs[g] = out.glyphs[g] || []).push(m.data_source.get_length());
    }
    if (name === 'LegendItem') out.legend.push(JSON.stringify(m.label));
  }
  out.ready = out.plots.filter(p => p.ink > 0).length >= 3 && 'chunkmill-files' in out.tables;
}
return out;
""".replace("arguments[0]", "BAR")


def _call(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["value"]


def _render(page: Path, bar_rgb: tuple[int, int, int]) -> dict[str, Any]:
    """Open ``page`` in headless Chromium; what the probe finds once the plots are drawn."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    driver = subprocess.Popen([shutil.which("chromedriver"), f"--port={port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                _call(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        options = {"binary": shutil.which("chromium"),
                   "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=1400,2000"]}
        session = _call(base, "POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})["sessionId"]
        try:
            _call(base, "POST", f"/session/{session}/url", {"url": page.as_uri()})
            script = f"const BAR = {list(bar_rgb)};" + PROBE
            deadline = time.monotonic() + 30
            while True:
                found = _call(base, "POST", f"/session/{session}/execute/sync",
                              {"script": script, "args": []})
                if found["ready"] or time.monotonic() > deadline:
                    return found
                time.sleep(0.2)
        finally:
            _call(base, "DELETE", f"/session/{session}")
    finally:
        driver.terminate()
        driver.wait(10)


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs chromium and chromium-driver (Debian packages)")
def test_the_html_report_draws_in_a_browser(lake, tmp_path, capsys) -> None:
    out, first = lake
    page = tmp_path / "run.html"
    assert cli(["report", str(out), "--html", str(page)]) == 0
    assert "the latest that did work" in capsys.readouterr().err
    # the first file's bars: Category10's blue at fill alpha 0.75 over white
    blue = (0x1F, 0x77, 0xB4)
    found = _render(page, tuple(round(c * 0.75 + 255 * 0.25) for c in blue))
    assert found["ready"], found
    plots_drawn = [p for p in found["plots"] if p["ink"] > 0]
    assert len(plots_drawn) >= 3 and all(p["w"] > 0 and p["h"] > 0 for p in plots_drawn)
    bars = max(p["bar"] for p in found["plots"])
    assert bars > 2000, found["plots"]  # far more than the legend's swatch: the bars are drawn
    assert found["glyphs"]["HBar"][0] == len(first.chunk_records)
    assert found["glyphs"]["Line"][0] > 0  # throughput
    memory = [n for n in found["glyphs"]["Scatter"] if n >= 2]
    assert memory  # a worker's memory samples (at least start and end)
    legend = " ".join(found["legend"])
    assert "red outline" in legend and "dashed: run average" in legend and "band:" in legend
    assert found["tables"]["chunkmill-files"] == 2
    assert found["tables"]["chunkmill-error-counts"] == 2
    assert found["tables"]["chunkmill-errors"] == 2

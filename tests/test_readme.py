"""The README's first steps run as written: ``chunkmill demo``, then its query one-liner and
its Python examples (the blocks that use the demo's ``sample_data/``), in a fresh directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def blocks(language: str) -> list[str]:
    with open(README) as f:
        return re.findall(rf"^```{language}\n(.*?)^```$", f.read(), re.S | re.M)


def test_readme_steps_run_after_the_demo(tmp_path) -> None:
    demo = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", "--rows", "2000"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    query = demo.stdout.split("query it: ", 1)[1].strip()
    # The report a newcomer opens first is the run the README queries: the logs.
    from pipeline.report.plots import load_report

    shown = load_report(tmp_path / "lake")
    paths = {r["path"] for r in shown["chunk_records"]}
    assert paths and all("/logs/" in p for p in paths), paths
    (line,) = [ln for b in blocks("bash") for ln in b.splitlines()
               if ln.startswith('python3 -c "import duckdb')]
    for command in (line, query):  # the README's and the one the demo prints
        res = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0 and "event" in res.stdout, (command, res.stderr)
    python = [b for b in blocks("python") if "sample_data/" in b]
    assert len(python) >= 2
    res = subprocess.run([sys.executable, "-c", "\n".join(python)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run.html").exists()

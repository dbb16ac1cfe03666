"""notebooks/quickstart.ipynb: committed without outputs, and runs top to bottom on a kernel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
ROWS = 4000
#: the notebook adds a CSV of four records, one of them malformed
EXTRA_GOOD_ROWS = 3


def _tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}"
    return cells[0]


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(str(out.data.get("text/plain", "")))
    return "".join(parts)


def _ensure_python3_kernel() -> None:
    """nbclient needs a ``python3`` kernelspec; ipykernel provides one for this interpreter,
    but a stripped environment may lack it: install it for the user only then."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True,
                       capture_output=True)


def test_committed_notebook_is_stripped() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], cell.source[:60]
        assert cell.execution_count is None, cell.source[:60]
    assert "widgets" not in nb.metadata


def test_quickstart_runs(tmp_path, shared_scheduler) -> None:
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _ensure_python3_kernel()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # papermill-style: the "parameters" cell is replaced with a smaller, contained run on the
    # tests' shared cluster (starting one more cluster would double this test's time)
    work = tmp_path / "work"
    _tagged(nb, "parameters").source = (
        "from pathlib import Path\n"
        f"ROWS = {ROWS}\nWORKERS = 2\nSCHEDULER = {shared_scheduler!r}\n"
        f"CHUNK_SIZE = '64KB'\nWORK = Path({str(work)!r})\n")
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    # the kernel imports chunkmill from this checkout even when it is not pip-installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    client.execute(env=env)  # raises CellExecutionError naming the cell on any error

    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
    counted = re.search(r"rows in logs: (\d+)", _text(_tagged(nb, "duckdb-count")))
    assert counted, _text(_tagged(nb, "duckdb-count"))
    assert int(counted.group(1)) == ROWS + EXTRA_GOOD_ROWS
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    # the Bokeh plots were shown inline, and the page was saved
    assert any("application/vnd.bokehjs_exec.v0+json" in o.get("data", {}) for o in outputs)
    assert (work / "run.html").exists()
    # the bad record reached _errors with the offset of that exact line
    raws = duckdb.sql(f"select raw from read_parquet('{work}/lake/_errors/*.parquet')"
                      ).fetchall()
    assert any(raw.startswith(b"900003,") for (raw,) in raws), raws
    # the second run skipped every file
    assert any("(3 unchanged)" in o.get("text", "") for o in outputs)
    # the progress bar is a widget (the notebook extra), not tqdm's warning about its absence
    text = "".join(o.get("text", "") for o in outputs)
    assert "TqdmWarning" not in text and "IProgress not found" not in text, text
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for o in outputs)

"""The package layout's rules: ``readers`` depends on nothing in ``pipeline`` (plugins and the
reader contract kit use it on its own), and every logger is under ``chunkmill``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_readers_import_nothing_from_pipeline() -> None:
    offenders = []
    for path in _modules("readers"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                          if n == "pipeline" or n.startswith("pipeline.")]
    assert not offenders


def test_importing_every_reader_module_loads_no_pipeline_module() -> None:
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in _modules("readers")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'pipeline'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_logger_is_under_chunkmill() -> None:
    offenders = []
    for package in ("pipeline", "readers"):
        for path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "getLogger" and node.args
                        and path.name != "cli.py"):  # cli.py quiets other libraries' loggers
                    arg = node.args[0]
                    if not (isinstance(arg, ast.Constant) and str(arg.value).startswith(
                            "chunkmill")):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders

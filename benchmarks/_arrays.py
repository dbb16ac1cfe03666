"""run.py's array cases: HDF5, Zarr and FITS, chunkmill against a single-process loop each.

DuckDB and Polars read none of these formats, so each is compared with what a user would write
by hand in one process: read a block, convert it with pyarrow, write it with
``pq.ParquetWriter`` (zstd); the loops are `bench_hdf5.BASELINE`, `bench_zarr_fits.ZARR_BASELINE`
and `bench_zarr_fits.FITS_BASELINE`. chunkmill runs on one worker process per core with one
thread each (h5py serialises every call behind one lock per process), 64 MiB chunks, from this
checkout. Inputs of ``--size-gb`` each are generated once under ``<scratch>/inputs/arrays/``.
Rounds interleave as for the text cases (the loop, then chunkmill), and the table gives each
round's own loop / chunkmill wall-time ratio (issue 21's target: at least 1.6).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench_hdf5
import bench_zarr_fits

ARRAY_CASES = ("hdf5", "zarr", "fits")
CHUNK_SIZE = "64MiB"
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class ArrayInput:
    case: str
    path: Path
    rows: int
    bytes: int
    tables: tuple[str, ...]
    """The tables chunkmill writes (their rows are counted)."""
    loop: str
    """The loop's script (argv: SRC OUT BLOCK_BYTES)."""
    loop_name: str


def ensure_input(case: str, scratch: Path, size_gb: float) -> ArrayInput:
    """The case's input (generated once, reused while its sidecar matches)."""
    base = scratch / "inputs" / "arrays"
    base.mkdir(parents=True, exist_ok=True)
    if case == "hdf5":
        path = base / f"bench_{size_gb:g}GB.h5"
        facts = bench_hdf5.generate(path, size_gb, None)
        return ArrayInput(case, path, facts["signal_rows"] + facts["table_rows"],
                          path.stat().st_size, ("signal", "table"), bench_hdf5.BASELINE,
                          "h5py + pyarrow loop")
    if case == "zarr":
        path = base / f"bench_{size_gb:g}GB.zarr"
        rows = bench_zarr_fits.generate_zarr(path, size_gb)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return ArrayInput(case, path, rows, size, ("signal", "counts"),
                          bench_zarr_fits.ZARR_BASELINE, "zarr + pyarrow loop")
    if case == "fits":
        path = base / f"bench_{size_gb:g}GB.fits"
        rows = bench_zarr_fits.generate_fits(path, size_gb)
        return ArrayInput(case, path, rows, path.stat().st_size, ("events",),
                          bench_zarr_fits.FITS_BASELINE, "astropy + pyarrow loop")
    raise ValueError(f"unknown array case {case!r}")


def run_case(inp: ArrayInput, repeat: int, scratch: Path, log: Callable[[str], None]
             ) -> dict[str, list[bench_hdf5.Result]]:
    """``repeat`` rounds of the loop, then chunkmill, on ``inp``."""
    config = f"{os.cpu_count() or 1}x1"
    out = scratch / "out" / inp.case
    runs: dict[str, list[bench_hdf5.Result]] = {"loop": [], "chunkmill": []}
    for i in range(repeat):
        loop = bench_hdf5.run_baseline(inp.path, out / "loop", CHUNK_BYTES, inp.loop,
                                       inp.loop_name)
        runs["loop"].append(loop)
        log(f"  [{inp.case} {i + 1}/{repeat}] loop      {_progress(loop, inp)}")
        mill = bench_hdf5.run_chunkmill(inp.path, out / "chunkmill", config, CHUNK_SIZE,
                                        inp.tables)
        runs["chunkmill"].append(mill)
        log(f"  [{inp.case} {i + 1}/{repeat}] chunkmill {_progress(mill, inp)}")
    return runs


def _ok(r: bench_hdf5.Result, inp: ArrayInput) -> bool:
    return r.exit_code == 0 and r.rows == inp.rows


def _progress(r: bench_hdf5.Result, inp: ArrayInput) -> str:
    rows = "rows ok" if _ok(r, inp) else f"ROWS {r.rows:,} != {inp.rows:,} (exit {r.exit_code})"
    return f"{r.wall_s:.2f} s, CPU {r.cpu_s:.1f} s, {r.peak_rss_mib:.0f} MiB, {rows}"


def summary(runs: list[bench_hdf5.Result], inp: ArrayInput) -> dict[str, Any]:
    """Medians of the runs that finished with every row (None when none did)."""
    good = [r for r in runs if _ok(r, inp)]

    def med(field: str) -> float | None:
        return statistics.median(getattr(r, field) for r in good) if good else None

    return {"wall_s": med("wall_s"), "cpu_s": med("cpu_s"), "peak_rss_mib": med("peak_rss_mib"),
            "output_mib": med("output_mib"), "rows_ok": len(good) == len(runs),
            "config": runs[0].config if runs else ""}


def round_ratios(inp: ArrayInput, runs: dict[str, list[bench_hdf5.Result]]) -> list[float]:
    """Loop wall time over chunkmill's, round by round, where both wrote every row."""
    return [loop.wall_s / mill.wall_s for loop, mill in zip(runs["loop"], runs["chunkmill"],
                                                            strict=False)
            if _ok(loop, inp) and _ok(mill, inp) and mill.wall_s]


def to_json(inp: ArrayInput, runs: dict[str, list[bench_hdf5.Result]]) -> dict[str, Any]:
    return {"case": inp.case, "input": str(inp.path), "input_bytes": inp.bytes,
            "expected_rows": inp.rows, "loop_over_chunkmill": round_ratios(inp, runs),
            "tools": {tool: {"summary": summary(rs, inp), "runs": [asdict(r) for r in rs]}
                      for tool, rs in runs.items()}}


def render(results: list[tuple[ArrayInput, dict[str, list[bench_hdf5.Result]]]]) -> list[str]:
    """The array cases' markdown table."""
    if not results:
        return []
    lines = ["", "Arrays: chunkmill (one worker process per core, one thread each, 64 MiB "
             "chunks) against a single-process loop (medians; the ratio is each round's own):",
             "", "| input | rows | loop | chunkmill | loop / chunkmill, same round | "
             "chunkmill output MiB (loop) | rows ok? |", "|---|--:|---|---|--:|--:|---|"]
    for inp, runs in results:
        cells = []
        for tool in ("loop", "chunkmill"):
            s = summary(runs[tool], inp)
            cells.append("failed" if s["wall_s"] is None else
                         f"{s['wall_s']:.1f} s, {s['cpu_s']:.1f} CPU-s, "
                         f"{s['peak_rss_mib']:.0f} MiB")
        ratios = round_ratios(inp, runs)
        ratio = ("—" if not ratios else f"{statistics.median(ratios):.2f}×" if len(ratios) == 1
                 else f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})")
        loop, mill = summary(runs["loop"], inp), summary(runs["chunkmill"], inp)
        out = ("—" if mill["output_mib"] is None else
               f"{mill['output_mib']:.0f} ({loop['output_mib'] or 0:.0f})")
        ok = "yes" if loop["rows_ok"] and mill["rows_ok"] else "**NO**"
        lines.append(f"| {inp.case} ({inp.bytes / 1e9:.2f} GB, {inp.loop_name}) | "
                     f"{inp.rows:,} | {cells[0]} | {cells[1]} | {ratio} | {out} | {ok} |")
    return lines

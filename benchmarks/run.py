"""Benchmark chunkmill against DuckDB, Polars, dask.dataframe and a bare-pyarrow floor.

Wall time, CPU time, peak memory and row counts.

How to run (from the repository root; needs the ``bench`` extra: duckdb, polars, dask)::

    python benchmarks/run.py                                  # everything, 2 GB inputs, 3 repeats
    python benchmarks/run.py --size-gb 0.05 --repeat 1        # smoke run, a few minutes
    python benchmarks/run.py --cases plain_csv,startup --tools chunkmill,polars
    python benchmarks/run.py --chunkmill-args "--workers 2" --json results.json

Inputs are generated once under ``--scratch`` (default ``/tmp/chunkmill-bench``, never inside
the repository) and reused by later runs of the same size: ``inputs/<size>/plain.csv`` (~87
bytes/row: id, ts, user, event, value, count, message), ``quoted.csv`` (the same, but one row
in three has an RFC 4180 quoted ``message`` with a newline, commas and doubled quotes),
``plain.jsonl`` (the same records as JSON lines), ``inputs/small-10000x10KB/small/`` (10,000
CSV files of ~10 KB) and ``inputs/1MB/plain.csv``. Row counts follow from ``--size-gb``
(2.0 GB -> ~23 M rows). ``--regenerate`` rebuilds them.

Cases (``--cases``, default all): plain_csv, quoted_csv, jsonl, partitioned (plain.csv with
``--partition-by event``), small_files (the 10,000-file directory; chunkmill gets the
directory, the peers a ``*.csv`` glob) and startup (the 1 MB CSV end to end); then the array
cases hdf5, zarr and fits (``--size-gb`` each), which no peer reads: chunkmill runs against a
single-process loop per format instead of the tools below (see ``_arrays.py``; ``--tools``
does not apply to them) and they get a table of their own.

Tools (``--tools``, default all), each a separate process writing zstd Parquet to a fresh
``<scratch>/out/<case>/<tool>/``:

* chunkmill: ``chunkmill ingest INPUT --out DIR --compression zstd [--partition-by event]``
  (+ ``--chunkmill-args``); the ``chunkmill`` console script on PATH, else ``python -m
  pipeline.cli`` from this checkout, else ``--chunkmill-cmd``. If none works the rows show
  the error and the other tools still run.
* DuckDB: ``COPY (SELECT * FROM read_csv|read_json(...)) TO ... (FORMAT parquet, COMPRESSION
  zstd[, PARTITION_BY (event)])``.
* Polars: ``scan_csv|scan_ndjson(...).sink_parquet(..., compression='zstd')``; partitioned
  with ``pl.PartitionBy(dir, key='event')`` (n/a on a polars without a partitioned sink).
* dask: ``dd.read_csv(path, blocksize='64MB')`` / ``dd.read_json(lines=True,
  blocksize=64e6)`` then ``.to_parquet(dir, compression='zstd'[, partition_on=['event']])``,
  default (threaded) scheduler. It is expected to fail or miscount on quoted.csv (blocks are
  split at raw newlines): that is recorded as a finding, not hidden.
* pyarrow, shown as "pyarrow floor (not a product)": not a tool anyone would ship but the
  leanest hand-written hot path on chunkmill's own stack, to show what that stack can do at
  best on this machine. ``os.cpu_count()`` forked processes each parse a 64 MiB byte range
  (end moved forward to the next newline) with ``pyarrow.csv.read_csv`` /
  ``pyarrow.json.read_json`` (``use_threads=False``, the schema inferred once from the first
  1 MiB) and write one zstd file with ``pyarrow.parquet.write_table``; partitioned: each range
  through ``pyarrow.dataset.write_dataset`` (hive ``event=...`` directories); small_files: one
  task per group of whole files (headers checked and dropped, bodies joined, parsed once);
  startup: the same code on the 1 MB file. n/a on quoted.csv (a quote in the first 1 MiB: a
  cut at a raw newline may fall inside a quoted field). No error handling, no memory limit.

What is measured, per run: wall time of the whole process (start to exit, Python start-up and
imports included), and peak RSS summed over the process and all its descendants (psutil walks
the tree every ``--interval`` s, default 0.05, sums RSS per sample and keeps the max; shared
pages are counted once per process, as with RSS anywhere). Each process's kernel high-water mark
(``VmHWM``) is kept too: a note is shown when one process alone beats the sampled sum (a peak
shorter than the sampling interval), and the JSON has the sum of the per-process peaks (an upper
bound). Descendants still alive 2 s after the tool exits are killed and named. The output is
then read back with DuckDB (``read_parquet`` over every ``*.parquet`` under the output, skipping
``_``/``.`` directories such as chunkmill's ``_chunkmill``, ``_catalog`` and ``_errors``) and
its row count compared with the generated count; a mismatch shows in the table. With ``--repeat
N`` (default 3) the runs are interleaved (every tool once, then again) and the table shows the
medians, and the median and range of each round's own wall-time ratio to Polars (the
machine's speed drifts between rounds; within one it barely moves).

Output: a markdown table on stdout (also saved as ``<scratch>/results/<stamp>.md``) and the
full results, every run and command included, as JSON in ``<scratch>/results/<stamp>.json``,
``<scratch>/results/latest.json`` and ``--json PATH``. Each run's output is in
``<scratch>/logs/``.

Caveats: inputs are read from the page cache (they were just written, or read by the previous
run) on every run, so this measures CPU and memory, not the disk; each tool uses its own
defaults for threads, memory limits and type inference (DuckDB and chunkmill may parse ``ts``
as a timestamp where Polars and dask keep a string).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import _arrays
import _common as c


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    input: str  # a name ensure_inputs knows
    partition_by: str | None = None


CASES: dict[str, Case] = {case.name: case for case in (
    Case("plain_csv", "plain CSV", "plain.csv"),
    Case("quoted_csv", "CSV, 1/3 of rows with quoted newlines/commas/quotes", "quoted.csv"),
    Case("jsonl", "JSON lines", "plain.jsonl"),
    Case("partitioned", "plain CSV, partitioned by event", "plain.csv", c.PARTITION_COLUMN),
    Case("small_files", "10,000 small CSV files", "small"),
    Case("startup", "1 MB CSV end to end", "tiny"),
)}


def _csv_list(value: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    if value.strip() == "all":
        return list(known)
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in known]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
    return list(dict.fromkeys(items))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Benchmark chunkmill vs DuckDB, Polars, dask and a bare-pyarrow floor "
                    "(wall, peak RSS, rows).",
        epilog="See the docstring at the top of benchmarks/run.py for what is measured.")
    known = [*CASES, *_arrays.ARRAY_CASES]
    p.add_argument("--cases", default="all", type=lambda v: _csv_list(v, known, "case"),
                   help=f"comma-separated cases or 'all' ({', '.join(known)})")
    p.add_argument("--tools", default="all", type=lambda v: _csv_list(v, c.TOOLS, "tool"),
                   help=f"comma-separated tools or 'all' ({', '.join(c.TOOLS)})")
    p.add_argument("--size-gb", type=float, default=2.0,
                   help="size of each big input in GB (1e9 bytes); rows follow (default 2.0)")
    p.add_argument("--repeat", type=int, default=3, help="runs per tool and case (default 3)")
    p.add_argument("--scratch", type=Path, default=c.DEFAULT_SCRATCH,
                   help=f"inputs, outputs, logs, results (default {c.DEFAULT_SCRATCH})")
    p.add_argument("--json", type=Path, help="also write the JSON results here")
    p.add_argument("--small-files", type=int, default=10_000,
                   help="number of files in the small_files case (default 10000)")
    p.add_argument("--small-file-kb", type=float, default=10.0,
                   help="size of each small file in KB (default 10)")
    p.add_argument("--startup-mb", type=float, default=1.0,
                   help="size of the startup case's CSV in MB (default 1)")
    p.add_argument("--chunkmill-cmd",
                   help="how to start chunkmill, e.g. 'chunkmill' or 'python -m pipeline.cli' "
                        "(default: chunkmill on PATH, else python -m pipeline.cli)")
    p.add_argument("--chunkmill-args", default="",
                   help="extra arguments for every chunkmill run, e.g. '--workers 2'")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds before a run is killed and reported as timed out")
    p.add_argument("--interval", type=float, default=0.05,
                   help="RSS sampling interval in seconds (default 0.05)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS for the machine's CPU use to drop "
                        "below 25%% (for shared machines; default 0: don't wait)")
    p.add_argument("--keep-outputs", action="store_true",
                   help="keep each tool's last output under <scratch>/out (default: delete)")
    p.add_argument("--regenerate", action="store_true", help="rebuild the cached inputs")
    p.add_argument("--generate-only", action="store_true",
                   help="only make sure the inputs exist, run nothing")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.size_gb <= 0 or args.small_files < 1 or args.small_file_kb <= 0:
        p.error("sizes and counts must be positive")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_inputs(args: argparse.Namespace, scratch: Path, names: set[str]) -> dict[str, c.Dataset]:
    out: dict[str, c.Dataset] = {}
    for name in sorted(names):
        if name == "small":
            out[name] = c.ensure_small_files(scratch, args.small_files,
                                             int(args.small_file_kb * 1000),
                                             force=args.regenerate, log=log)
        elif name == "tiny":
            out[name] = c.ensure_records(scratch, "plain.csv", int(args.startup_mb * 10**6),
                                         force=args.regenerate, log=log)
        else:
            out[name] = c.ensure_records(scratch, name, int(args.size_gb * c.GB),
                                         force=args.regenerate, log=log)
    return out


def run_case(case: Case, ds: c.Dataset, args: argparse.Namespace, scratch: Path,
             chunkmill: c.ChunkmillCommand | None) -> dict[str, list[c.RunRecord]]:
    records: dict[str, list[c.RunRecord]] = {tool: [] for tool in args.tools}
    extra = shlex.split(args.chunkmill_args)
    for i in range(args.repeat):
        for tool in args.tools:
            if tool == "chunkmill" and chunkmill is not None and chunkmill.missing and i:
                continue  # no point repeating "not found"
            if args.wait_quiet > 0:
                c.wait_until_quiet(args.wait_quiet, log=log)
            rec = c.run_tool(
                tool, ds, scratch / "out" / case.name / tool,
                scratch / "logs" / case.name / f"{tool}-{i + 1}.log",
                partition_by=case.partition_by, chunkmill=chunkmill, chunkmill_args=extra,
                timeout=args.timeout, interval=args.interval,
                keep_output=args.keep_outputs and i == args.repeat - 1)
            records[tool].append(rec)
            log(f"  [{case.name} {i + 1}/{args.repeat}] {tool:9s} {_progress(rec)}")
    return records


def _progress(rec: c.RunRecord) -> str:
    m = rec.measurement
    if rec.not_applicable:
        return f"n/a: {m.error}"
    if not m.ok:
        return f"FAILED: {m.error}"
    rows = ("rows ok" if rec.rows_ok else
            f"ROWS {rec.check.rows if rec.check else '?'} != {rec.expected_rows}")
    busy = (f", others used {m.others_cpu_share:.0%} of the CPUs"
            if m.others_cpu_share and m.others_cpu_share > c.BUSY_SHARE else "")
    return (f"{m.wall_s:.2f} s, CPU {m.cpu_s or 0:.1f} s, {c.mib(m.peak_rss_bytes):.0f} MiB, "
            f"{rows}{busy}")


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    return f"{value / base:.2f}×"


def paired_ratios(runs: Sequence[c.RunRecord], base: Sequence[c.RunRecord]) -> list[float]:
    """Wall time over the base tool's in the same round, for rounds both finished right.

    Rounds run every tool once in turn, so a pair ran minutes apart at most: the machine's
    slow drift (its speed changes by half within a day here) cancels out of each ratio, where
    a ratio of medians mixes rounds.
    """
    def good(r: c.RunRecord) -> bool:
        return r.measurement.ok and r.rows_ok and bool(r.measurement.wall_s)

    return [a.measurement.wall_s / b.measurement.wall_s  # type: ignore[operator]
            for a, b in zip(runs, base, strict=False) if good(a) and good(b)]


def _paired_cell(ratios: list[float]) -> str:
    if not ratios:
        return "—"
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}×"
    return f"{median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"


def _rows_cell(s: c.Summary) -> str:
    if s.status == "n/a" or (s.rows is None and s.status.startswith("failed")):
        return "—"
    if s.rows_ok:
        return f"yes ({s.expected_rows:,})"
    got = "?" if s.rows is None else f"{s.rows:,}"
    return f"**NO**: {got} of {s.expected_rows:,}"


def render(results: list[dict[str, Any]], host: dict[str, Any], args: argparse.Namespace,
           inputs: dict[str, c.Dataset], chunkmill_how: str | None,
           arrays: list[tuple[_arrays.ArrayInput, dict[str, list[Any]]]] = ()) -> str:
    lines = ["# chunkmill benchmark", "", *c.host_header(host)]
    lines.append(f"- repeat: {args.repeat} (medians shown), RSS sampled every "
                 f"{args.interval:g} s and summed over the process tree; zstd everywhere")
    if chunkmill_how:
        lines.append(f"- chunkmill: {chunkmill_how}"
                     + (f" {args.chunkmill_args}" if args.chunkmill_args else ""))
    for name, ds in inputs.items():
        lines.append(f"- input {name}: {ds.path} ({ds.bytes / c.GB:.3g} GB, {ds.rows:,} rows"
                     + (f", {ds.files:,} files" if ds.files > 1 else "") + ")")
    header = len(lines)
    lines += ["", "| case | tool | wall s | CPU s | peak RSS MiB (summed) | output MiB | rows ok? "
              "| wall vs polars | same-round wall vs polars | RSS vs polars | output vs polars "
              "| notes |",
              "|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|---|"]
    by_case: dict[str, dict[str, c.Summary]] = {}
    runs: dict[str, dict[str, list[c.RunRecord]]] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["tool"]] = r["summary_obj"]
        runs.setdefault(r["case"], {})[r["tool"]] = r["records_obj"]
    for case, tools in by_case.items():
        polars = tools.get("polars")
        for tool, s in tools.items():
            paired = (paired_ratios(runs[case][tool], runs[case]["polars"]) if polars
                      else [])
            wall = "n/a" if s.status == "n/a" else c.fmt_num(s.wall_s, ".2f")
            rss = "n/a" if s.status == "n/a" else c.fmt_num(s.peak_rss_mib, ".0f")
            cpu = "n/a" if s.status == "n/a" else c.fmt_num(s.cpu_s, ".1f")
            base_wall = polars.wall_s if polars else None
            base_rss = polars.peak_rss_mib if polars else None
            base_out = polars.output_mib if polars else None
            size = "n/a" if s.status == "n/a" else c.fmt_num(s.output_mib, ".0f")
            notes = "; ".join(c.md_cell(n) for n in s.notes)
            label = c.TOOL_LABELS.get(tool, tool)
            if s.status not in ("ok", "n/a", "rows mismatch"):
                notes = f"**{s.status}**: {notes}"
            lines.append(
                f"| {case} | {label} | {wall} | {cpu} | {rss} | {size} | {_rows_cell(s)} | "
                f"{_ratio(s.wall_s, base_wall)} | {_paired_cell(paired)} | "
                f"{_ratio(s.peak_rss_mib, base_rss)} | "
                f"{_ratio(s.output_mib, base_out)} | {notes} |")
    lines += ["", "Ratios are tool / polars on the same case (> 1: slower or bigger); the "
              "same-round ratio is the median (and range) of each round's own ratio, which the "
              "machine's drift between rounds does not move. CPU s is "
              "user + system time of the whole process tree; output MiB counts the data Parquet "
              "files only (not chunkmill's _catalog and _errors). Logs of every run: "
              + str(args.scratch_resolved / "logs")]
    if any(r["tool"] == "pyarrow" for r in results):
        lines += ["", f"{c.TOOL_LABELS['pyarrow']}: a hand-written reference point, not a "
                  "product. N forked processes each parse a 64 MiB byte range (or a group of small "
                  "files) with pyarrow.csv/json (use_threads=False, schema from the first 1 MiB) "
                  "and write one zstd Parquet file with pyarrow.parquet: no quoted newlines, no "
                  "error handling, no memory limit, no resumability. Its wall and CPU times are "
                  "the floor of what the stack under chunkmill does on this machine; its memory "
                  "is not a floor (each process holds a whole range and its table)."]
    if not results:  # array cases only
        del lines[header:]
    lines += _arrays.render(list(arrays))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = args.scratch_resolved = c.check_scratch(args.scratch)
    cases = [CASES[name] for name in args.cases if name in CASES]
    host = c.host_info()

    inputs = ensure_inputs(args, scratch, {case.input for case in cases})
    array_inputs = [_arrays.ensure_input(name, scratch, args.size_gb)
                    for name in args.cases if name in _arrays.ARRAY_CASES]
    if args.generate_only:
        for name, ds in inputs.items():
            print(f"{name}: {ds.path} {ds.bytes:,} bytes {ds.rows:,} rows")
        for inp in array_inputs:
            print(f"{inp.case}: {inp.path} {inp.bytes:,} bytes {inp.rows:,} rows")
        return 0

    chunkmill = c.resolve_chunkmill(args.chunkmill_cmd) if "chunkmill" in args.tools else None
    chunkmill_how = None
    if chunkmill is not None:
        chunkmill_how = chunkmill.missing or chunkmill.how
        log(f"chunkmill: {chunkmill_how}")

    results: list[dict[str, Any]] = []
    for case in cases:
        ds = inputs[case.input]
        log(f"case {case.name}: {case.description} ({ds.path}, {ds.rows:,} rows)")
        for tool, records in run_case(case, ds, args, scratch, chunkmill).items():
            summary = c.summarise(records)
            results.append({"case": case.name, "tool": tool, "input": ds.name,
                            "summary_obj": summary, "records_obj": records,
                            "summary": asdict(summary),
                            "runs": [r.to_json() for r in records]})

    arrays = []
    for inp in array_inputs:
        log(f"case {inp.case}: {inp.path} ({inp.rows:,} rows) against the {inp.loop_name}")
        arrays.append((inp, _arrays.run_case(inp, args.repeat, scratch, log)))

    shown = {case.input: inputs[case.input] for case in cases}
    report = render(results, host, args, shown, chunkmill_how, arrays)
    print(report)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    res_dir = scratch / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "host": host,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "chunkmill": chunkmill_how,
        "inputs": {name: asdict(ds) for name, ds in shown.items()},
        "cases": {case.name: asdict(case) for case in cases},
        "results": [{k: v for k, v in r.items() if not k.endswith("_obj")} for r in results],
        "arrays": [_arrays.to_json(inp, runs) for inp, runs in arrays],
    }
    text = json.dumps(payload, indent=2, default=str)
    targets = [res_dir / f"{stamp}.json", res_dir / "latest.json"]
    if args.json:
        targets.append(args.json)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (res_dir / f"{stamp}.md").write_text(report)
    log(f"results: {', '.join(str(t) for t in targets)}, {res_dir / f'{stamp}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

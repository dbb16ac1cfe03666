"""Does chunkmill's peak memory stay flat as the input grows? (claim: 8 GB within 10 % of 1 GB)

How to run (from the repository root)::

    python benchmarks/memory_scaling.py                        # 1 GB vs 8 GB, chunkmill defaults
    python benchmarks/memory_scaling.py --large-gb 4 --repeat 3
    python benchmarks/memory_scaling.py --small-gb 0.05 --large-gb 0.2 --tool polars  # smoke

Runs one tool alone (default chunkmill, default settings: ``chunkmill ingest plain.csv --out
DIR --compression zstd`` plus ``--chunkmill-args``) on two generated ``plain.csv`` inputs of
``--small-gb`` and ``--large-gb`` GB (same generator and cache as ``benchmarks/run.py``, under
``--scratch``, default ``/tmp/chunkmill-bench``) and reports, for each, the wall time, the CPU
time and the peak RSS summed over the whole process tree (sampled every 50 ms), plus the
large/small ratio of the peaks. Each output is read back with DuckDB and its row count checked.

The claim holds when ``large peak <= (1 + --tolerance) * small peak`` (default tolerance 0.10)
and every run succeeded with the right row count. Exit status: 0 when the claim holds, 1 when
it does not (or a run failed), so it can gate a CI job. The markdown report goes to stdout and
the JSON to ``<scratch>/results/memory-scaling-<stamp>.json`` (and ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as c


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/memory_scaling.py",
        description="Peak summed RSS of one tool on a ~1 GB and a larger CSV, and their ratio.")
    p.add_argument("--small-gb", type=float, default=1.0, help="smaller input (default 1.0)")
    p.add_argument("--large-gb", type=float, default=8.0, help="larger input (default 8.0)")
    p.add_argument("--tolerance", type=float, default=0.10,
                   help="allowed growth of the peak, as a fraction (default 0.10)")
    p.add_argument("--repeat", type=int, default=1, help="runs per input, medians (default 1)")
    p.add_argument("--tool", choices=c.TOOLS, default="chunkmill",
                   help="tool to run (default chunkmill; the peers are for comparison)")
    p.add_argument("--scratch", type=Path, default=c.DEFAULT_SCRATCH,
                   help=f"inputs, outputs, logs, results (default {c.DEFAULT_SCRATCH})")
    p.add_argument("--json", type=Path, help="also write the JSON results here")
    p.add_argument("--chunkmill-cmd", help="how to start chunkmill (default: on PATH, else "
                                           "python -m pipeline.cli)")
    p.add_argument("--chunkmill-args", default="", help="extra arguments for chunkmill")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run (default 3600)")
    p.add_argument("--interval", type=float, default=0.05, help="RSS sampling interval, s")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS for an idle machine")
    p.add_argument("--regenerate", action="store_true", help="rebuild the cached inputs")
    args = p.parse_args(argv)
    if not 0 < args.small_gb < args.large_gb:
        p.error("need 0 < --small-gb < --large-gb")
    if args.repeat < 1 or args.tolerance < 0:
        p.error("--repeat must be >= 1 and --tolerance >= 0")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = c.check_scratch(args.scratch)
    host = c.host_info()
    inputs = [c.ensure_records(scratch, "plain.csv", int(gb * c.GB), force=args.regenerate,
                               log=log) for gb in (args.small_gb, args.large_gb)]

    chunkmill = c.resolve_chunkmill(args.chunkmill_cmd) if args.tool == "chunkmill" else None
    if chunkmill is not None:
        log(f"chunkmill: {chunkmill.missing or chunkmill.how}")
    extra = shlex.split(args.chunkmill_args)

    records: list[list[c.RunRecord]] = [[], []]
    for i in range(args.repeat):
        for k, ds in enumerate(inputs):
            if args.wait_quiet > 0:
                c.wait_until_quiet(args.wait_quiet, log=log)
            tag = c.size_tag(ds.bytes)
            rec = c.run_tool(args.tool, ds, scratch / "out" / "memory_scaling" / tag,
                             scratch / "logs" / "memory_scaling" / f"{args.tool}-{tag}-{i + 1}.log",
                             chunkmill=chunkmill, chunkmill_args=extra, timeout=args.timeout,
                             interval=args.interval)
            records[k].append(rec)
            m = rec.measurement
            state = (f"{m.wall_s:.1f} s, {c.mib(m.peak_rss_bytes):.0f} MiB, rows "
                     + ("ok" if rec.rows_ok else f"WRONG ({rec.check and rec.check.rows})")
                     if m.ok else f"FAILED: {m.error}")
            log(f"  [{i + 1}/{args.repeat}] {args.tool} on {ds.path}: {state}")
    summaries = [c.summarise(r) for r in records]

    small, large = summaries
    ratio = (large.peak_rss_mib / small.peak_rss_mib
             if small.peak_rss_mib and large.peak_rss_mib else None)
    all_ok = all(s.status == "ok" for s in summaries)
    holds = all_ok and ratio is not None and ratio <= 1 + args.tolerance

    lines = [f"# memory scaling: {args.tool}", "", *c.host_header(host),
             f"- RSS summed over the process tree, sampled every {args.interval:g} s; "
             f"medians of {args.repeat} run(s)"]
    if chunkmill is not None:
        lines.append(f"- chunkmill: {chunkmill.missing or chunkmill.how} "
                     f"{args.chunkmill_args}".rstrip())
    lines += ["", "| input | GB | rows | wall s | CPU s | peak RSS MiB (summed) | rows ok? "
              "| notes |", "|---|--:|--:|--:|--:|--:|---|---|"]
    for ds, s in zip(inputs, summaries, strict=True):
        lines.append(
            f"| {ds.path} | {ds.bytes / c.GB:.2f} | {ds.rows:,} | {c.fmt_num(s.wall_s)} | "
            f"{c.fmt_num(s.cpu_s)} | {c.fmt_num(s.peak_rss_mib, '.0f')} | "
            f"{'yes' if s.rows_ok else '**NO**'} | {'; '.join(c.md_cell(n) for n in s.notes)} |")
    verdict = "HOLDS" if holds else "DOES NOT HOLD"
    ratio_text = "—" if ratio is None else f"{ratio:.3f}"
    lines += ["", f"Peak ratio {args.large_gb:g} GB / {args.small_gb:g} GB: **{ratio_text}** "
              f"(claim: <= {1 + args.tolerance:.2f}): **{verdict}**"
              + ("" if all_ok else " (a run failed or wrote the wrong number of rows)")]
    report = "\n".join(lines) + "\n"
    print(report)

    payload: dict[str, Any] = {
        "host": host,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "chunkmill": chunkmill and (chunkmill.missing or chunkmill.how),
        "inputs": [asdict(ds) for ds in inputs],
        "summaries": [asdict(s) for s in summaries],
        "runs": [[r.to_json() for r in recs] for recs in records],
        "peak_ratio": ratio,
        "claim_holds": holds,
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    targets = [scratch / "results" / f"memory-scaling-{stamp}.json"]
    if args.json:
        targets.append(args.json)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(payload, indent=2, default=str))
    log(f"results: {', '.join(map(str, targets))}")
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())

"""HDF5 -> Parquet: ``chunkmill ingest`` against a plain single-process h5py + pyarrow loop.

Generates (once, cached) a multi-GB HDF5 file under /tmp with a 1-D float64 dataset
(``/signal``) and a compound table dataset (``/table``), then runs each contender as a separate
process and reports wall time and peak RSS summed over the process tree (psutil, every 50 ms),
as a markdown table. Rows written are checked against the file.

    python benchmarks/bench_hdf5.py --size-gb 2 --configs 2x1,1x2

``--configs`` lists chunkmill cluster shapes as WORKERSxTHREADS (h5py serialises calls behind
one lock per process, so ``2x1`` and ``1x2`` compare processes against threads).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import psutil
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
GENERATOR_VERSION = 1
TABLE_DTYPE = np.dtype([("id", "<i8"), ("ts", "<f8"), ("value", "<f4"), ("flag", "u1"),
                        ("name", "S8")])
SIGNAL_CHUNK = 1 << 20  # rows (8 MiB)
TABLE_CHUNK = 1 << 18   # rows (7.3 MiB)

BASELINE = r"""
import sys, h5py, numpy as np, pyarrow as pa, pyarrow.parquet as pq
src, out, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(src, "r") as f:
    for name in ("signal", "table"):
        ds = f[name]
        rows_per = max(ds.chunks[0], block // ds.dtype.itemsize // ds.chunks[0] * ds.chunks[0])
        writer = None
        for a in range(0, ds.shape[0], rows_per):
            b = min(a + rows_per, ds.shape[0])
            buf = np.empty(b - a, dtype=ds.dtype)
            ds.read_direct(buf, np.s_[a:b])
            cols = {"row": pa.array(np.arange(a, b, dtype=np.int64))}
            if buf.dtype.names:
                for field in buf.dtype.names:
                    col = np.ascontiguousarray(buf[field])
                    cols[field] = (pa.array(col).cast(pa.string()) if col.dtype.kind == "S"
                                   else pa.array(col))
            else:
                cols[name] = pa.array(buf)
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(f"{out}/{name}.parquet", table.schema,
                                          compression="zstd")
            writer.write_table(table)
            del buf, table, cols
        writer.close()
"""


@dataclass
class Result:
    tool: str
    config: str
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    rows: int
    output_mib: float
    exit_code: int


def generate(path: Path, size_gb: float, compression: str | None) -> dict:
    """The benchmark file (reused when its sidecar matches): half signal, half table bytes."""
    meta_path = path.with_suffix(".json")
    target = int(size_gb * 1e9)
    n_signal = target // 2 // 8
    n_table = target // 2 // TABLE_DTYPE.itemsize
    expect = {"version": GENERATOR_VERSION, "signal_rows": n_signal, "table_rows": n_table,
              "compression": compression}
    if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == expect:
        return expect
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    started = time.time()
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["generator"] = "chunkmill bench_hdf5"
        # HDF5 refuses a chunk longer than its dataset: small sizes get one chunk each
        sig = f.create_dataset("signal", shape=(n_signal,), dtype="f8",
                               chunks=(max(1, min(SIGNAL_CHUNK, n_signal)),),
                               compression=compression)
        for a in range(0, n_signal, 8 * SIGNAL_CHUNK):
            b = min(a + 8 * SIGNAL_CHUNK, n_signal)
            sig[a:b] = rng.standard_normal(b - a)
        tab = f.create_dataset("table", shape=(n_table,), dtype=TABLE_DTYPE,
                               chunks=(max(1, min(TABLE_CHUNK, n_table)),),
                               compression=compression)
        for a in range(0, n_table, 8 * TABLE_CHUNK):
            b = min(a + 8 * TABLE_CHUNK, n_table)
            block = np.empty(b - a, dtype=TABLE_DTYPE)
            block["id"] = np.arange(a, b)
            block["ts"] = 1.7e9 + np.arange(a, b) / 1000
            block["value"] = rng.standard_normal(b - a).astype("f4")
            block["flag"] = rng.integers(0, 4, b - a)
            block["name"] = np.char.add(b"n", (np.arange(a, b) % 100_000).astype("S7"))
            tab[a:b] = block
    tmp.rename(path)
    meta_path.write_text(json.dumps(expect))
    print(f"generated {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.time() - started:.0f}s",
          file=sys.stderr)
    return expect


def measure(cmd: list[str], env: dict[str, str] | None = None, interval: float = 0.05
            ) -> tuple[float, int, float, int]:
    """(wall seconds, peak RSS of the process tree in bytes, CPU seconds, exit code).

    CPU seconds (user + system, last sample of every process seen, so up to one interval per
    process is missed) are less disturbed than wall time when other jobs share the machine.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    cpu: dict[int, float] = {}
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                total += p.memory_info().rss
                times = p.cpu_times()  # own time only: children_* would count them twice
                cpu[p.pid] = times.user + times.system
            except psutil.Error:  # exited between listing and sampling
                pass
        peak = max(peak, total)
        time.sleep(interval)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        print(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-2000:]}", file=sys.stderr)
    return wall, peak, sum(cpu.values()), proc.returncode


def parquet_rows(paths: list[Path]) -> tuple[int, int]:
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    return rows, sum(p.stat().st_size for p in paths)


def run_chunkmill(src: Path, out: Path, config: str, chunk_size: str,
                  tables: tuple[str, ...] = ("signal", "table"), label: str = "chunkmill"
                  ) -> Result:
    """``chunkmill ingest`` on a WORKERSxTHREADS cluster; rows and bytes of ``tables``."""
    workers, threads = config.split("x")
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", str(src), "--out", str(out),
           "--workers", workers, "--threads-per-worker", threads, "--chunk-size", chunk_size,
           "--no-progress", "-q"]
    wall, peak, cpu, code = measure(cmd, env)
    files = [p for t in tables for p in (out / t).rglob("*.parquet")]
    rows, size = parquet_rows(files)
    return Result(label, f"{workers} proc x {threads} thr", wall, cpu, peak / 2**20, rows,
                  size / 2**20, code)


def run_baseline(src: Path, out: Path, chunk_size: int, script: str = BASELINE,
                 name: str = "h5py+pyarrow loop") -> Result:
    """The single-process loop ``script`` (argv: SRC OUT CHUNK_SIZE)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wall, peak, cpu, code = measure([sys.executable, "-c", script, str(src), str(out),
                                     str(chunk_size)])
    rows, size = parquet_rows(sorted(out.glob("*.parquet")))
    return Result(name, "1 proc", wall, cpu, peak / 2**20, rows, size / 2**20, code)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/chunkmill-bench-hdf5"))
    ap.add_argument("--configs", default=f"{os.cpu_count() or 1}x1",
                    help="chunkmill cluster shapes WORKERSxTHREADS, comma separated")
    ap.add_argument("--chunk-size", default="64MiB")
    ap.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none",
                    help="HDF5 filter of the generated datasets")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from pipeline.config import parse_size

    compression = None if args.compression == "none" else args.compression
    src = args.scratch / f"bench_{args.size_gb:g}GB_{args.compression}.h5"
    facts = generate(src, args.size_gb, compression)
    load = os.getloadavg()[0]
    expected = facts["signal_rows"] + facts["table_rows"]
    size = src.stat().st_size
    results = [run_baseline(src, args.scratch / "out-baseline", parse_size(args.chunk_size))]
    for config in args.configs.split(","):
        results.append(run_chunkmill(src, args.scratch / f"out-{config}", config.strip(),
                                     args.chunk_size))
    print(f"\nHDF5 {size / 1e9:.2f} GB ({facts['signal_rows']:,} float64 rows + "
          f"{facts['table_rows']:,} compound rows, compression {args.compression}), "
          f"chunk size {args.chunk_size}, {os.cpu_count()} cores\n")
    print(f"1-min load average at start: {load:.1f}, at end: {os.getloadavg()[0]:.1f}\n")
    print("| tool | config | wall s | MB/s | CPU s | peak RSS MiB | rows ok | Parquet MiB |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    for r in results:
        ok = "yes" if r.rows == expected and r.exit_code == 0 else f"NO ({r.rows:,})"
        print(f"| {r.tool} | {r.config} | {r.wall_s:.1f} | {size / 1e6 / r.wall_s:.0f} | "
              f"{r.cpu_s:.1f} | {r.peak_rss_mib:.0f} | {ok} | {r.output_mib:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"file_bytes": size, "expected_rows": expected,
                                         "results": [asdict(r) for r in results]}, indent=2))
    return 0 if all(r.exit_code == 0 and r.rows == expected for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

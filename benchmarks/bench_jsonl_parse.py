"""JSON-lines parsers inside one chunk task (issue 21, item 1): CPU per 64 MiB, and exactness.

One range of ``--chunk-mib`` MiB of a JSON-lines file (default: the benchmark's ``plain.jsonl``
of ``--size-gb``, written under ``--scratch`` as ``benchmarks/run.py`` writes it) is parsed in
this process by each candidate, round-robin ``--repeat`` times; the table gives the median CPU
seconds (user + sys of this process) per 64 MiB of input. The schema is the one chunkmill
infers from the file's head, and every candidate's table is checked equal to chunkmill's.

Candidates: chunkmill's line screen (`object_lines`, run before every parse); pyarrow.json at
several block sizes; chunkmill's chunk parse today (`JSONLReader._checked`: pyarrow.json, UTF-8
validation, the strict date/time cast); ``polars.read_ndjson`` given the same schema, alone and
with what a chunk task would need to hand the writer the same table (``to_arrow`` + a cast to
the reader's types); and, for scale, the Parquet zstd write of the chunk with the writer's
options. DuckDB's ``read_json`` (the reference for chunkmill's types) is measured too, given the
same columns and the bytes as a file object. Polars and DuckDB run on one thread
(``POLARS_MAX_THREADS=1``, set before it is imported; DuckDB's ``threads=1``), as one chunk task
per core would; importing each is timed in a child process.

``--probe`` (on by default) then parses hostile lines three ways: chunkmill's real chunk path
(rows and ``_errors``) against ``polars.read_ndjson`` and DuckDB's ``read_json`` given the same
schema. A line is exact when the candidate gives the same rows and chunkmill rejected nothing,
or the candidate raises (a chunk task could then fall back to pyarrow); otherwise it would
silently write other data.

    python benchmarks/bench_jsonl_parse.py                      # 0.2 GB input, 64 MiB, 5 rounds
    python benchmarks/bench_jsonl_parse.py --input big.jsonl --repeat 9
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # before polars is imported, anywhere

import pyarrow as pa  # noqa: E402
import pyarrow.json as pajson  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import _common as c  # noqa: E402

from readers._jsonlines import object_lines  # noqa: E402
from readers._text import TextOptions  # noqa: E402
from readers.jsonl import JSONLReader, text_times  # noqa: E402

#: Lines polars may read differently from chunkmill; each follows a head that types the
#: columns as ``a`` int64, ``b`` string, ``c`` double, ``e`` struct<x: int64>, ``f`` list<int64>.
PROBES = {
    "a field not in the schema": b'{"a":1,"zz":2}',
    "a null field not in the schema": b'{"a":1,"zz":null}',
    "a nested field not in the schema": b'{"e":{"x":1,"y":2}}',
    "an empty key": b'{"":1}',
    "a duplicate key": b'{"a":1,"a":2}',
    "an integer in a string column": b'{"b":1}',
    "1e3 in a string column": b'{"b":1e3}',
    "1.0 in a string column": b'{"b":1.0}',
    "an object in a string column": b'{"b":{"z":[1,"y"]}}',
    "a list in a string column": b'{"b":[1,2]}',
    "a lone surrogate escape": b'{"b":"\\ud800"}',
    "a float in an int column": b'{"a":1.5}',
    "a string in an int column": b'{"a":"1"}',
    "a boolean in an int column": b'{"a":true}',
    "a numeric string in a float column": b'{"c":"1.5"}',
    "invalid UTF-8": b'{"b":"\xff"}',
    "two objects on a line": b'{"a":1} {"a":2}',
    "a list element of another type": b'{"f":["x"]}',
}
_HEAD = b'{"a":1,"b":"x","c":1.5,"e":{"x":1},"f":[1]}\n' * 3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, help="a JSON-lines file (default: generate one)")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/chunkmill-bench"))
    p.add_argument("--size-gb", type=float, default=0.2, help="size of the generated input")
    p.add_argument("--chunk-mib", type=float, default=64, help="bytes parsed per candidate")
    p.add_argument("--repeat", type=int, default=5, help="rounds over all candidates")
    p.add_argument("--no-probe", dest="probe", action="store_false")
    return p.parse_args()


def chunk_bytes(path: Path, mib: float) -> bytes:
    with open(path, "rb") as f:
        data = f.read(int(mib * (1 << 20)))
    return data[: data.rfind(b"\n") + 1]


def cpu_s(fn: Callable[[], Any]) -> float:
    t = time.process_time()  # user + sys of this process, finer than os.times' ticks
    fn()
    return time.process_time() - t


def candidates(data: bytes, schema: pa.Schema) -> tuple[dict[str, Callable[[], Any]], Any]:
    import polars as pl

    from pipeline.output.writer import dictionary_columns

    reader, options = JSONLReader(), TextOptions()
    parse_schema = text_times(schema)
    pl_schema = pl.from_arrow(parse_schema.empty_table()).schema
    view = memoryview(bytearray(data))  # as a chunk task holds its range
    expected = object_lines(data)
    today = reader._checked(view, schema, expected, options)

    def pyarrow_json(block: int) -> Callable[[], pa.Table]:
        parse = pajson.ParseOptions(explicit_schema=parse_schema,
                                    unexpected_field_behavior="error")
        read = pajson.ReadOptions(use_threads=False, block_size=block)
        return lambda: pajson.read_json(pa.BufferReader(view), parse_options=parse,
                                        read_options=read)

    def polars_to_arrow() -> pa.Table:
        table = pl.read_ndjson(bytes(view), schema=pl_schema).to_arrow().cast(parse_schema)
        return table.cast(schema) if parse_schema is not schema else table

    duck = duckdb_reader(parse_schema)

    def parquet_write() -> int:
        sink = pa.BufferOutputStream()
        writer = pq.ParquetWriter(sink, today.schema, compression="zstd",
                                  use_dictionary=dictionary_columns(today))
        writer.write_table(today, row_group_size=1 << 19)
        writer.close()
        return sink.getvalue().size

    runs = {
        "screen (object_lines)": lambda: object_lines(view),
        "pyarrow.json, 1 MiB blocks": pyarrow_json(1 << 20),
        "pyarrow.json, 4 MiB blocks": pyarrow_json(4 << 20),
        "pyarrow.json, one block": pyarrow_json(len(data) + 1),
        "chunkmill parse today (_checked)":
            lambda: reader._checked(view, schema, expected, options),
        "polars.read_ndjson": lambda: pl.read_ndjson(bytes(view), schema=pl_schema),
        "polars.read_ndjson + to_arrow + cast": polars_to_arrow,
        "duckdb read_json (threads=1) + cast": lambda: duck(bytes(view)).cast(schema),
        "Parquet zstd write (writer's options)": parquet_write,
    }
    checks = {"pyarrow.json, 1 MiB blocks": runs["pyarrow.json, 1 MiB blocks"]().cast(schema),
              "polars.read_ndjson + to_arrow + cast": polars_to_arrow(),
              "duckdb read_json": duck(data).cast(schema)}
    return runs, {k: t.equals(today) for k, t in checks.items()}


def duckdb_type(typ: pa.DataType) -> str:
    """DuckDB's name for an Arrow type of a JSON schema (dates and times arrive as text)."""
    if pa.types.is_struct(typ):
        return "STRUCT(" + ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in typ) + ")"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return duckdb_type(typ.value_type) + "[]"
    names = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN",
             pa.string(): "VARCHAR"}
    return names[typ]


def duckdb_reader(parse_schema: pa.Schema) -> Callable[[bytes], pa.Table]:
    """DuckDB's ``read_json`` of newline-delimited bytes into ``parse_schema``'s columns."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 1")
    columns = {f.name: duckdb_type(f.type) for f in parse_schema}
    return lambda data: con.read_json(io.BytesIO(data), format="newline_delimited",
                                      columns=columns).to_arrow_table().cast(parse_schema)


def import_cpu_s(module: str) -> float:
    code = ("import os; t = os.times(); import " + module +
            "; u = os.times(); print(u.user - t.user + u.system - t.system)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return float(out.stdout)


def chunkmill_read(path: Path) -> tuple[list[dict], list[str], pa.Schema]:
    """Rows and ``_errors`` codes of a small file read by chunkmill's chunk path."""
    import fsspec

    from pipeline.planning.discover import describe_file
    from readers import get_reader
    from readers.base import ChunkContext

    found = describe_file(fsspec.filesystem("file"), str(path), "t", "jsonl", {})
    reader = get_reader(found.reader)()
    options = reader.configure({"infer_bytes": len(_HEAD)})  # types from the head alone
    description = reader.describe(found.source, options)
    rows, errors = [], []
    for spec in reader.plan(found.source, description, options):
        ctx = ChunkContext(found.source, spec)
        for _table, table in reader.read(found.source, spec, description, options, ctx):
            rows += table.to_pylist()
        errors += [r.error_type for r in ctx.rejected]
    return rows, errors, next(iter(description.tables.values()))


def probe(scratch: Path) -> list[tuple[str, str, str, str]]:
    """(case, chunkmill's outcome, a candidate's outcome, verdict) per hostile line."""
    import polars as pl

    def polars(data: bytes, parse_schema: pa.Schema) -> pa.Table:
        schema = pl.from_arrow(parse_schema.empty_table()).schema
        return pl.read_ndjson(data, schema=schema).to_arrow().cast(parse_schema)

    def duck(data: bytes, parse_schema: pa.Schema) -> pa.Table:
        return duckdb_reader(parse_schema)(data)

    out = []
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        for name, line in PROBES.items():
            path = Path(tmp) / "probe.jsonl"
            path.write_bytes(_HEAD + line + b"\n")
            rows, errors, schema = chunkmill_read(path)
            mine = f"_errors {errors[0]}" if errors else f"row {rows[-1]}"
            for who, parse in (("polars", polars), ("duckdb", duck)):
                try:
                    theirs = parse(path.read_bytes(), text_times(schema)).cast(schema).to_pylist()
                except Exception as exc:  # noqa: BLE001 - any error: fall back to pyarrow
                    theirs, said = None, f"raises {type(exc).__name__}"
                else:
                    said = f"row {theirs[-1]}" if len(theirs) == len(rows) + len(errors) \
                        else f"{len(theirs) - 3} rows"
                exact = theirs is None or (not errors and theirs == rows)
                out.append((f"{who}: {name}", mine, f"{who} {said}",
                            "exact" if exact else "NOT EXACT"))
    return out


def main() -> None:
    args = parse_args()
    path = args.input
    if path is None:
        path = Path(c.ensure_records(c.check_scratch(args.scratch), "plain.jsonl",
                                     int(args.size_gb * c.GB), log=print).path)
    data = chunk_bytes(path, args.chunk_mib)
    scale = 64 * (1 << 20) / len(data)
    schema, _, _ = JSONLReader()._infer(data[:TextOptions().infer_bytes], False, TextOptions())
    runs, equal = candidates(data, schema)
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            seconds[name].append(cpu_s(fn) * scale)
    print(f"{path}: {len(data) / (1 << 20):.1f} MiB, {object_lines(data):,} lines, "
          f"median of {args.repeat} (CPU-s per 64 MiB, user + sys)")
    for name, values in seconds.items():
        print(f"  {name:40s} {statistics.median(values):6.3f}   "
              f"(min {min(values):.3f}, max {max(values):.3f})")
    for module in ("pyarrow", "polars", "duckdb"):
        print(f"  import {module:33s} {import_cpu_s(module):6.3f}   (once per process)")
    for name, same in equal.items():
        print(f"  table of {name}: {'equal to' if same else 'DIFFERS from'} chunkmill's")
    if args.probe:
        print("hostile lines, chunkmill's chunk path against candidates given the same schema:")
        for name, mine, theirs, verdict in probe(c.check_scratch(args.scratch)):
            print(f"  {verdict:9s} {name}: chunkmill {mine}; {theirs}")


if __name__ == "__main__":
    main()

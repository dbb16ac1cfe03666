"""Issue 20, delimited text: regressions for hangs, lost rows and slow paths found by probing.

Each test names the issue item it guards. Readers are driven in-process (`conftest.run_reader`,
exactly as the runner settles a file) unless the item is about the whole run.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from conftest import run_reader

import pipeline
from pipeline.execution.task import ChunkManifest, read_chunk
from pipeline.planning.discover import describe_file
from readers import detect, get_reader
from readers._boundaries import last_record_end
from readers.base import ChunkContext, ChunkSpec, Rejected, Source
from readers.csv import CSVReader, convert_options
from readers.errors import ErrorCode, RecordTooLong
from readers.settle import FileChunks, read_settled
from readers.widening import conform

PARSE = pacsv.ParseOptions(newlines_in_values=True)


# --- item 8: wide files are linear in their columns ----------------------------------------------
def test_conform_is_linear_in_columns() -> None:
    """Name lookups in lists per column made 100,000 columns take hours."""
    n = 30_000
    column = pa.array([7], pa.int64())
    table = pa.Table.from_arrays([column] * n, names=[f"c{i}" for i in range(n)])
    schema = pa.schema([("extra", pa.string())] + [(f"c{i}", pa.int64()) for i in range(n)])
    started = time.perf_counter()
    out = conform(table, schema)
    assert time.perf_counter() - started < 10
    assert out.schema == schema and out.column(n).to_pylist() == [7]
    assert out.column("extra").to_pylist() == [None]


def test_wide_csv_reads_in_linear_time(tmp_path) -> None:
    """5,000 columns x 20 rows took 80 s (10,000: 170 s); pyarrow itself needs ~1 s here."""
    n = 20_000
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(n)) + "\n"
                    + ",".join(str(i) for i in range(n)) + "\n")
    started = time.perf_counter()
    got, rejected, _ = run_reader(str(path), "csv")
    assert time.perf_counter() - started < 30
    assert not rejected and got.num_columns == n and got.column(n - 1).to_pylist() == [n - 1]


# --- helpers -------------------------------------------------------------------------------------
@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: the old read loop spun forever on a shrunken file."""
    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_changed(path: str, change: Callable[[], None], reader: str = "csv", *,
                 chunk_size: int = 1 << 20, **options: object
                 ) -> tuple[list[dict], list[Rejected]]:
    """Plan ``path`` as it is, ``change()`` it, then read and settle it as the runner does."""
    import fsspec

    found = describe_file(fsspec.filesystem("file"), os.path.abspath(path), "t", reader, {})
    r = get_reader(found.reader)()
    opts = r.configure({"chunk_size": chunk_size, **options})
    desc = r.describe(found.source, opts)
    specs = r.plan(found.source, desc, opts)
    change()
    rows: dict[int, list[pa.Table]] = {}
    rejected: dict[int, list[Rejected]] = {}

    def run(chunk: ChunkSpec) -> ChunkManifest:
        held = rows.setdefault(chunk.index, [])
        held.clear()
        manifest, ctx = read_chunk(r, found.source, chunk, desc, opts, 0,
                                   lambda _t, t: held.append(t), held.clear)
        rejected[chunk.index] = ctx.rejected
        return manifest

    file = read_settled(FileChunks(found.source, type(r), desc, specs), run,
                        lambda m: (rows.pop(m.index, None), rejected.pop(m.index, None)))
    order = [c.index for c in file.chunks]
    return ([row for i in order for t in rows.get(i, []) for row in t.to_pylist()],
            [e for i in order for e in rejected.get(i, [])])


def truncate(path: str, size: int) -> Callable[[], None]:
    return lambda: os.truncate(path, size)


# --- item 1: a file truncated during the run -----------------------------------------------------
@pytest.mark.parametrize("chunk_size", [7, 64, 1 << 20])
@pytest.mark.parametrize("quoted", [False, True])
def test_file_truncated_after_planning_ends_with_an_error_not_a_hang(tmp_path, chunk_size,
                                                                     quoted) -> None:
    """copytruncate of a log being ingested: reads come back short of the planned size."""
    note = '"x, ""y""\nz"' if quoted else "plain"
    body = "".join(f"{i},{note}\n" for i in range(40))
    path = tmp_path / "log.csv"
    path.write_text("id,note\n" + body)
    cut = len("id,note\n") + len(body) // 2 + 3  # inside a record
    with deadline(20):
        rows, rejected = read_changed(str(path), truncate(str(path), cut),
                                      chunk_size=chunk_size)
    kept = path.read_bytes()
    whole = [r for r in pacsv.read_csv(pa.py_buffer(kept[:kept.rfind(b"\n") + 1]),
                                       parse_options=PARSE).to_pylist()]
    assert [r["id"] for r in rows] == [r["id"] for r in whole]  # every complete record
    truncated = [e for e in rejected if e.error_type == ErrorCode.TRUNCATED]
    assert truncated and all(str(path) in e.message and f"offset {cut}" in e.message
                             for e in truncated)
    assert any(e.raw and kept[e.byte_offset:].startswith(e.raw) for e in truncated)


def test_truncated_file_in_one_stream(tmp_path) -> None:
    """The whole-file stream (used after a fallback) checks the planned size too."""
    path = tmp_path / "s.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(100)))
    source = Source(f"file://{path}", path.stat().st_size + 50, None, "f", "", "t")
    reader = CSVReader()
    opts = reader.configure({})
    desc = reader.describe(source, opts)
    ctx = ChunkContext(source, ChunkSpec("f", 0, 4, source.size))
    with deadline(20):
        got = list(reader._read_stream(source, desc, opts, ctx))
    assert sum(t.num_rows for t in got if t is not None) == 100
    (error,) = ctx.rejected
    assert error.error_type == ErrorCode.TRUNCATED and error.raw in (b"", None)
    assert f"offset {path.stat().st_size}" in error.message


TRUNCATE_AFTER_PLANNING = """
import os, sys

import pipeline
from readers.csv import CSVReader

plan = CSVReader.plan

def plan_then_truncate(self, source, description, options):
    chunks = plan(self, source, description, options)
    os.truncate(source.path, int(sys.argv[3]))
    return chunks

CSVReader.plan = plan_then_truncate
report = pipeline.ingest([sys.argv[1]], out=sys.argv[2], chunk_size="8KB", layout="threads")
print(report.files)
"""


def test_truncated_during_ingest(tmp_path) -> None:
    """End to end: the file shrinks between planning and reading; the run ends, rows kept.

    In a child process: the old code spun forever in a worker thread nothing could stop.
    """
    path = tmp_path / "t.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(5000)))
    cut = path.stat().st_size // 2 + 3
    done = subprocess.run([sys.executable, "-c", TRUNCATE_AFTER_PLANNING, str(path),
                           str(tmp_path / "o"), str(cut)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'partial': 1" in done.stdout
    kept = path.read_bytes()
    complete = kept[:kept.rfind(b"\n") + 1].count(b"\n") - 1
    rows = duckdb.sql(f"select count(*) from '{tmp_path}/o/t/*.parquet'").fetchall()[0][0]
    errors = duckdb.sql(f"select error_type, byte_offset, raw from '{tmp_path}/o/_errors/*.parquet'"
                        ).fetchall()
    assert rows == complete
    assert [(e[0], e[1], bytes(e[2])) for e in errors] == [
        ("Truncated", kept.rfind(b"\n") + 1, kept[kept.rfind(b"\n") + 1:])]


# --- item 9: a record over --max-record-bytes costs only itself ----------------------------------
def long_record_file(tmp_path, fmt: str, compress: bool) -> tuple[str, list[int], int]:
    """200 records with one of ~300 KB in the middle: (path, ids of the others, its offset)."""
    if fmt == "jsonl":
        lines = [json.dumps({"id": i, "text": f"note {i}"}) for i in range(200)]
        lines[100] = json.dumps({"id": 100, "text": "long " * 60_000})
        head = ""
    else:
        note = '"note, ""quoted""\nover two lines"' if fmt == "quoted" else "plain note"
        lines = [f"{i},{note}" for i in range(200)]
        long = '"' + "long\n" * 60_000 + '"' if fmt == "quoted" else "x" * 300_000
        lines[100] = "100," + long
        head = "id,text\n"
    text = head + "\n".join(lines) + "\n"
    suffix = ".jsonl" if fmt == "jsonl" else ".csv"
    path = tmp_path / ("f" + suffix + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return str(path), [i for i in range(200) if i != 100], len(head + "\n".join(lines[:100]) + "\n")


@pytest.mark.parametrize("fmt", ["csv", "quoted", "jsonl"])
@pytest.mark.parametrize("chunk_size,compress", [(16_000, False), (50_000, False),
                                                 (1 << 20, True)])
def test_record_too_long_keeps_the_rows_around_it(tmp_path, fmt, chunk_size, compress) -> None:
    path, ids, offset = long_record_file(tmp_path, fmt, compress)
    got, rejected, _ = run_reader(path, "jsonl" if fmt == "jsonl" else "csv",
                                  chunk_size=chunk_size, max_record_bytes=64_000,
                                  stream_block_bytes=32_000)
    assert got.column("id").to_pylist() == ids
    (error,) = rejected
    assert error.error_type == ErrorCode.RECORD_TOO_LONG and error.byte_offset == offset
    assert error.raw.startswith(b'{"id": 100' if fmt == "jsonl" else b"100,")


# --- item 11: no-quote and quoted tails are found without a walk per line ------------------------
def test_last_record_end_is_not_a_walk_over_lines() -> None:
    """A compressed stream's 8 MiB block of ``1,2,3`` lines: the old tail search walked every
    line in Python (a 6.4 MB gzip took 433 s); quoted blocks are scanned vectorised."""
    plain = bytearray(b"1,2,3\n" * ((8 << 20) // 6) + b"1,2")
    quoted = bytearray(b'"a",b,"c\nd"\n' * ((8 << 20) // 12) + b'"a')
    for buf, expected in ((plain, len(plain) - 4), (quoted, len(quoted) - 3)):
        started = time.perf_counter()
        for _ in range(10):
            assert last_record_end(buf) == expected
        assert time.perf_counter() - started < 2  # 10 blocks (was minutes)
    # Every line quoted and none ever closed before the end: the whole block is scanned.
    worst = bytearray(b'x,"' + b"y\n" * (4 << 20))
    started = time.perf_counter()
    assert last_record_end(worst) == -1
    assert time.perf_counter() - started < 5


# --- item 20: classic Mac line ends (a lone CR) --------------------------------------------------
@pytest.mark.parametrize("data", [
    b"a,b\r1,2\r3,4\r",  # all CR: was 0 rows, status ok
    b"a,b\r1,2\n3,4\n",  # the header ends in CR: lost the first row
    b"a,b\r\n1,2\r3,4",  # mixed, no line end at the end
    b'a,b\r"x\ry",2\r\r3,"4\r\n"\r',  # CRs inside quotes, an empty CR line
])
def test_lone_cr_ends_a_record(tmp_path, data) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes(data)
    expected = pacsv.read_csv(path, parse_options=PARSE,
                              convert_options=convert_options({"a": pa.string(),
                                                               "b": pa.string()})).to_pylist()
    assert len(expected) == 2
    for chunk in range(1, len(data) + 2):
        got, rejected, info = run_reader(str(path), "csv", chunk_size=chunk, string_columns=True)
        assert not rejected and info["serial"] is None
        assert got.to_pylist() == expected, chunk


def test_lone_cr_small_files_end_to_end(tmp_path) -> None:
    """Through ingest, where small files are described and read many at a time."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        newline = ["\r", "\n", "\r\n"][i % 3]
        text = newline.join(["a,b", f"{i},x", f"{i},y"]) + newline
        (src / f"f{i}.csv").write_text(text, newline="")
    report = pipeline.ingest([str(src)], out=str(tmp_path / "o"), layout="threads")
    rows = duckdb.sql(f"select a, b from '{tmp_path}/o/in/*.parquet' order by a, b").fetchall()
    assert rows == [(i, v) for i in range(6) for v in "xy"] and report.files == {"ok": 6}


def test_lone_cr_header_decides_the_dialect() -> None:
    """The header of a Mac file is its first CR-ended line, not the whole head."""
    head = b"name\tnote\rann\ta, b, c\rbob\td, e\r"
    assert detect(head, "/data/export.txt").name == "tsv"


# --- item 21: a stray quote in the header --------------------------------------------------------
def test_stray_quote_in_header_keeps_every_row(tmp_path) -> None:
    data = b'a"b,c\n1,2\n3,"x\ny"\n5,6\n'
    path = tmp_path / "h.csv"
    path.write_bytes(data)
    for chunk in (1, 3, 7, 1 << 20):
        got, rejected, info = run_reader(str(path), "csv", chunk_size=chunk)
        assert got.column_names == ['a"b', "c"] and not rejected
        assert got.to_pylist() == [{'a"b': 1, "c": "2"}, {'a"b': 3, "c": "x\ny"},
                                   {'a"b': 5, "c": "6"}]


def test_header_that_never_closes_its_quote_is_an_error(tmp_path) -> None:
    """Every line would be one header field: an error, not a file of 0 rows and status ok."""
    path = tmp_path / "h.csv"
    path.write_bytes(b'"a,b\n1,2\n3,4\n')
    with pytest.raises(ValueError, match="never closed"):
        run_reader(str(path), "csv")


def _unterminated(chunk: int, data: bytes, tmp_path, **options: object
                  ) -> tuple[list[dict], list[tuple]]:
    path = tmp_path / "u.csv"
    path.write_bytes(data)
    got, rejected, _ = run_reader(str(path), "csv", chunk_size=chunk, string_columns=True,
                                  **options)
    return ([] if got is None else got.to_pylist(),
            [(str(r.error_type), r.byte_offset, r.raw) for r in rejected])


@pytest.mark.parametrize("data,cut", [
    (b'a;b\n1;x\n2;y\n3;"unterminated\n', 12),  # the last line opens a quote
    (b'a,b\n1,x\n2,"y\r\n3,z\n4,w', 8),  # every line after the quote, CRLF, no last newline
    (b'a,b\n1,"q,""uoted"""\n2,"y', 20),  # a closed quoted field first
])
def test_quote_never_closed_at_the_end_is_an_error_row(tmp_path, data: bytes, cut: int) -> None:
    """pyarrow reads an open quote at the end of the file as one value running to the end
    (``unterminated\\n``, swallowing the lines after it) and says nothing; DuckDB refuses the
    file. The record holding the quote is an `_errors` row at its offset, at every chunk size
    and in the stream path (gzip), and the records before it are kept."""
    delimiter = ";" if b";" in data else ","
    whole = pacsv.read_csv(pa.py_buffer(data[:cut]), parse_options=pacsv.ParseOptions(
        delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={"a": pa.string(), "b": pa.string()}))
    expected = (whole.to_pylist(), [(ErrorCode.UNTERMINATED_QUOTE, cut, data[cut:])])
    for chunk in (1, 5, 11, 1 << 20):
        assert _unterminated(chunk, data, tmp_path, delimiter=delimiter) == expected, chunk
    gz = tmp_path / "u.csv.gz"
    gz.write_bytes(gzip.compress(data))
    got, rejected, _ = run_reader(str(gz), "csv", string_columns=True, delimiter=delimiter)
    assert got.to_pylist() == expected[0]
    assert [(str(r.error_type), r.byte_offset, r.raw) for r in rejected] == expected[1]
    assert "decompressed offset" in rejected[0].message


def test_quote_never_closed_through_the_cli(tmp_path) -> None:
    src = tmp_path / "u.csv"
    src.write_bytes(b'id,note\n1,ok\n2,"never closed\n3,swallowed\n')
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", str(src), "--out",
                           str(out), "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    con = duckdb.connect()
    rows = con.sql(f"select id, note from read_parquet('{out}/u/*.parquet')").fetchall()
    assert rows == [(1, "ok")]
    errors = con.sql(f"select error_type, byte_offset, message from read_parquet("
                     f"'{out}/_errors/*.parquet')").fetchall()
    assert [(t, o) for t, o, _ in errors] == [("UnterminatedQuote", 13)]
    assert "never closed" in errors[0][2] and "--quote" in errors[0][2]


# --- item 25: a header longer than the inference head --------------------------------------------
def test_header_longer_than_a_mebibyte(tmp_path) -> None:
    # 1.2 MB of header in 4,000 long names (40,000 short ones spent 3 s on the column count,
    # which test_wide_csv_reads_in_linear_time covers with 20,000 columns)
    names = [f"column_with_a_long_name_{i:04d}_" + "x" * 270 for i in range(4_000)]
    assert len(",".join(names)) > 1.1 * 2**20
    path = tmp_path / "wide.csv"
    path.write_text(",".join(names) + "\n" + ",".join(["1"] * len(names)) + "\n")
    got, rejected, _ = run_reader(str(path), "csv", max_record_bytes=64 << 20)
    assert not rejected and got.num_rows == 1 and got.column_names == names
    assert got.schema.field(names[-1]).type == pa.int64()
    with pytest.raises(RecordTooLong):  # a header over the record limit is one too
        run_reader(str(path), "csv", max_record_bytes=1 << 20)

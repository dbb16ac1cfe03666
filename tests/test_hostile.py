"""Hostile input: fuzzed files end as rows or _errors rows, hostile values stay inside OUT."""

from __future__ import annotations

import gzip
import json
import os

import duckdb
import pyarrow.dataset as pads
import pytest
from conftest import run_reader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline
from pipeline.planning.discover import discover

VALID_CSV = b'id,name,note\n1,a,"x\ny"\n2,b,plain\n3,"c ""q""",z\n' * 20
VALID_JSONL = b"".join(json.dumps({"id": i, "v": [i, "s"], "o": {"k": i}}).encode() + b"\n"
                       for i in range(40))
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


def survives(path: str, reader: str, chunk: int) -> None:
    """The reader either rejects the file cleanly at describe time or yields rows/rejects."""
    try:
        table, rejected, _ = run_reader(path, reader, chunk_size=chunk)
    except AssertionError:
        raise
    except Exception as exc:  # describe may refuse a file: it must say why, not crash oddly
        assert str(exc), f"{type(exc).__name__} without a message"
        return
    rows = 0 if table is None else table.num_rows
    assert rows + len(rejected) >= 0
    for r in rejected:
        assert r.message and (r.byte_offset is None or r.byte_offset >= 0)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, len(VALID_CSV))),
       chunk=st.sampled_from([7, 64, 1 << 20]))
def test_csv_flipped_and_truncated(tmp_path, flips, cut, chunk) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(mutate(VALID_CSV, flips, cut))
    survives(str(path), "csv", chunk)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, len(VALID_JSONL))),
       chunk=st.sampled_from([5, 100, 1 << 20]))
def test_jsonl_flipped_and_truncated(tmp_path, flips, cut, chunk) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(mutate(VALID_JSONL, flips, cut))
    survives(str(path), "jsonl", chunk)


@FUZZ
@given(data=st.binary(max_size=3000), reader=st.sampled_from(["csv", "tsv", "jsonl"]),
       chunk=st.sampled_from([3, 50, 1 << 20]))
def test_random_bytes_forced_through_text_readers(tmp_path, data, reader, chunk) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    survives(str(path), reader, chunk)


def test_corrupt_gzip_stream(tmp_path, shared_scheduler) -> None:
    blob = bytearray(gzip.compress(VALID_CSV * 2000))
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "f.csv.gz").write_bytes(bytes(blob))
    out = tmp_path / "o"
    pipeline.ingest([str(tmp_path / "f.csv.gz")], out=str(out), scheduler=shared_scheduler)
    ((status, rows),) = duckdb.sql(f"select status, rows from '{out}/_catalog/*.parquet'"
                                   ).fetchall()
    assert status in ("partial", "failed")
    errors = duckdb.sql(f"select path, message from '{out}/_errors/*.parquet'").fetchall()
    assert errors and all(p == str(tmp_path / "f.csv.gz") and p not in m for p, m in errors)


HOSTILE = ["a/b", "..", "../../escape", "k=v", "nul\x00byte", "x" * 10_000, "", ".hidden",
           "%2F", "space and\ttab", "naïve €", None]


def test_hostile_partition_values_stay_inside_out(tmp_path, shared_scheduler) -> None:
    lines = [json.dumps({"id": i, "part": v}) for i, v in enumerate(HOSTILE)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "lake" / "out"
    report = pipeline.ingest([str(tmp_path / "in.jsonl")], out=str(out), partition_by=["part"],
                             scheduler=shared_scheduler)
    assert report.ok and report.rows == len(HOSTILE)
    real_out = os.path.realpath(out)
    outside = {str(tmp_path / "in.jsonl"), str(tmp_path / "lake"), real_out}
    for root, dirs, files in os.walk(tmp_path):
        for name in dirs + files:
            full = os.path.realpath(os.path.join(root, name))
            assert full in outside or full.startswith(real_out + os.sep), full
            assert len(name.encode()) <= 255
    back = pads.dataset(out / "in", partitioning="hive").to_table().to_pylist()
    got = {r["id"]: r["part"] for r in back}
    for i, value in enumerate(HOSTILE):
        if value is None or len(value) <= 100:
            assert got[i] == value, (i, value, got[i])
        else:  # long values are cut and hashed in the path, distinct from any other
            assert got[i].startswith("x" * 50) and "~" in got[i]
    duck = duckdb.sql(f"select count(distinct part), count(*) from read_parquet("
                      f"'{out}/in/**/*.parquet', hive_partitioning=true)").fetchall()
    assert duck == [(len(HOSTILE) - 1, len(HOSTILE))]


def test_symlink_loops_and_special_files(tmp_path) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.csv").write_text("x\n1\n")
    os.symlink(root, root / "sub" / "loop")  # a directory cycle
    os.symlink(root / "nowhere.csv", root / "dangling.csv")
    os.mkfifo(root / "pipe.csv")
    found = discover([str(root)])
    assert [os.path.basename(f.source.path) for f in found] == ["a.csv"]


@pytest.mark.parametrize("text", ["", "a,b\n", "a,b", "\n\n\n", "\xef\xbb\xbf"])
def test_degenerate_csv(tmp_path, text) -> None:
    path = tmp_path / "d.csv"
    path.write_text(text)
    table, rejected, _ = run_reader(str(path), "csv", chunk_size=1)
    assert (table is None or table.num_rows == 0) and not rejected

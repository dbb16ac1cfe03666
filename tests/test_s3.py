"""Inputs and OUT on S3, for real: an S3 endpoint (moto's server) on 127.0.0.1, reached through
s3fs and delta-rs, with ``AWS_ENDPOINT_URL`` or ``--storage-option``. Kill and resume, two
concurrent Delta runs into one prefix, the hive lock object, the journal as objects."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import duckdb
import pyarrow as pa
import pytest
from conftest import thorough

import pipeline
from pipeline.errors import OutputLocked

pytest.importorskip("moto")
s3fs = pytest.importorskip("s3fs")
deltalake = pytest.importorskip("deltalake")

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint():
    """moto's S3 server in a process of its own (delta-rs holds the GIL in some calls, so a
    server thread in this process could not answer them)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in {**KEYS, "AWS_ENDPOINT_URL": url}.items():
                mp.setenv(key, value)
            yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def bucket(endpoint):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    name = f"b-{uuid.uuid4().hex[:10]}"
    fs.mkdir(name)
    return fs, name


def make_csv(rows: int, seed: int, start: int = 0) -> bytes:
    rnd = random.Random(seed)
    lines = ["id,event,value,note"]
    for i in range(start, start + rows):
        note = rnd.choice(["plain", "two\nlines", ""])
        lines.append(f"{i},{rnd.choice('abc')},{rnd.random():.4f},\"{note}\"")
    return ("\n".join(lines) + "\n").encode()


def upload(fs, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        fs.pipe_file(f"{prefix}/{name}", data)
    fs.invalidate_cache()


def per_file(table: pa.Table) -> dict[str, tuple[int, int]]:
    rows = table  # noqa: F841 - DuckDB reads the local variable
    got = duckdb.sql("select _file_id, count(*), sum(hash(id, value, note))::hugeint "
                     "from rows group by 1").fetchall()
    return {fid: (n, int(h)) for fid, n, h in got}


def delta_files(uri: str) -> dict[str, tuple[int, int]]:
    return per_file(pa.table(deltalake.DeltaTable(uri, storage_options={
        "AWS_ALLOW_HTTP": "true"}).to_pyarrow_table()))


def hive_files(fs, root: str) -> dict[str, tuple[int, int]]:
    import pyarrow.dataset as pads

    fs.invalidate_cache()
    return per_file(pads.dataset(root, filesystem=fs, format="parquet",
                                 partitioning="hive").to_table())


def expected_files(tmp_path, files: dict[str, bytes]) -> dict[str, tuple[int, int]]:
    """The same inputs ingested from a local directory (file ids differ: keyed by rows)."""
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)
    for name, data in files.items():
        (local / name).write_bytes(data)
    pipeline.ingest([str(local)], out=str(tmp_path / "local-out"), table="t", progress=False)
    import pyarrow.dataset as pads

    return per_file(pads.dataset(tmp_path / "local-out" / "t", partitioning="hive").to_table())


def cli(args: list[str], env: dict[str, str] | None = None, crash_at: str | None = None,
        delay: float | None = None) -> subprocess.Popen:
    env = dict(env or os.environ)
    if crash_at:
        env["CHUNKMILL_CRASH_AT"] = crash_at
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


@pytest.mark.timeout(300)
# Hive output on S3 is also ingested end to end by the lock-object test below.
@pytest.mark.parametrize("fmt", ["hive", "delta"] if thorough() else ["delta"])
def test_s3_inputs_and_output_end_to_end(tmp_path, bucket, fmt) -> None:
    fs, name = bucket
    files = {"a.csv": make_csv(1500, 1), "b.csv": make_csv(300, 2, 10_000)}
    upload(fs, f"{name}/in", files)
    out = f"s3://{name}/out"
    report = pipeline.ingest([f"s3://{name}/in"], out=out, table="t", table_format=fmt,
                             partition_by=["event"], chunk_size="16KB", small_file_size=0,
                             progress=False)
    assert report.ok and report.files == {"ok": 2}, report.failures
    got = delta_files(f"{out}/t") if fmt == "delta" else hive_files(fs, f"{name}/out/t")
    assert sorted(got.values()) == sorted(expected_files(tmp_path, files).values())
    # the journal is one object per append, never an object rewritten whole
    fs.invalidate_cache()
    assert not fs.exists(f"{name}/out/_chunkmill/journal.jsonl")
    assert len(fs.ls(f"{name}/out/_chunkmill/journal")) >= 3
    # unchanged objects are skipped from their ETag, size and mtime; a rewritten one is not
    assert pipeline.ingest([f"s3://{name}/in"], out=out, table="t", table_format=fmt,
                           partition_by=["event"], progress=False).files == {"unchanged": 2}
    files["b.csv"] = make_csv(350, 3, 10_000)
    upload(fs, f"{name}/in", {"b.csv": files["b.csv"]})
    report = pipeline.ingest([f"s3://{name}/in"], out=out, table="t", table_format=fmt,
                             partition_by=["event"], chunk_size="16KB", small_file_size=0,
                             progress=False)
    assert report.files == {"ok": 1, "unchanged": 1}
    got = delta_files(f"{out}/t") if fmt == "delta" else hive_files(fs, f"{name}/out/t")
    (tmp_path / "v2").mkdir()
    assert sorted(got.values()) == sorted(expected_files(tmp_path / "v2", files).values())
    if fmt == "hive":  # the unified schema beside the fragments
        assert fs.exists(f"{name}/out/t/_common_metadata")
        assert not fs.exists(f"{name}/out/_chunkmill/lock.json")  # released
    # status and report read the S3 OUT; here the endpoint comes from --storage-option only
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    code, text = finish(cli(["status", out, "--storage-option", f"endpoint_url={endpoint}"],
                            env))
    assert code == 0 and "2 done, 0 pending, 0 failed" in text, text
    code, text = finish(cli(["report", out, "--json", "--storage-option",
                             f"endpoint_url={endpoint}"], env))
    assert code == 0 and json.loads(text)["files"] == {"ok": 1, "unchanged": 1}


@pytest.mark.timeout(400)
def test_s3_delta_run_killed_then_resumed_is_exactly_once(tmp_path, bucket) -> None:
    fs, name = bucket
    files = {f"f{n}.csv": make_csv(2500, 20 + n, n * 100_000) for n in range(2)}
    upload(fs, f"{name}/in", files)
    out = f"s3://{name}/out"
    args = ["ingest", f"s3://{name}/in", "--out", out, "--table", "t", "--table-format",
            "delta", "--chunk-size", "24KB", "--small-file-size", "0", "--no-progress"]
    codes = [finish(cli(args, crash_at=c, delay=d))[0]
             for c, d in [("staged:2", None), ("mid_commit", None), (None, 4.0)][
                 :None if thorough() else 2]]
    assert -signal.SIGKILL in codes, codes
    code, text = finish(cli(args))
    assert code == 0, text
    assert sorted(delta_files(f"{out}/t").values()) == sorted(
        expected_files(tmp_path, files).values())
    code, text = finish(cli(args))
    assert code == 0 and "2 unchanged" in text, text


@pytest.mark.timeout(400)
def test_two_concurrent_delta_runs_into_one_prefix(tmp_path, bucket) -> None:
    fs, name = bucket
    shared = {f"s{n}.csv": make_csv(1200, 40 + n, n * 100_000) for n in range(2)}
    only_a, only_b = {"a.csv": make_csv(700, 50, 900_000)}, {"b.csv": make_csv(800, 51, 950_000)}
    upload(fs, f"{name}/in/shared", shared)
    upload(fs, f"{name}/in/a", only_a)
    upload(fs, f"{name}/in/b", only_b)
    out = f"s3://{name}/out"
    common = ["--out", out, "--table", "t", "--table-format", "delta", "--chunk-size", "16KB",
              "--small-file-size", "0", "--no-progress"]
    args_a = ["ingest", f"s3://{name}/in/shared", f"s3://{name}/in/a", *common]
    args_b = ["ingest", f"s3://{name}/in/shared", f"s3://{name}/in/b", *common]
    first, second = cli(args_a), cli(args_b)
    results = [finish(first), finish(second)]
    # each run either committed its files or says which it left for the next run; neither
    # crashes and nothing is lost or doubled
    for code, text in results:
        assert code in (0, 1), text
        assert "internal error" not in text and "Traceback" not in text, text
    for args, (code, _) in zip([args_a, args_b], results, strict=True):
        if code:
            assert finish(cli(args))[0] == 0
    expected = expected_files(tmp_path, {**shared, **only_a, **only_b})
    assert sorted(delta_files(f"{out}/t").values()) == sorted(expected.values())
    history = deltalake.DeltaTable(f"{out}/t", storage_options={
        "AWS_ALLOW_HTTP": "true"}).history()
    assert len({h.get("chunkmill.run_id") for h in history} - {None}) >= 2
    # the catalog names every file, whichever run wrote it
    code, text = finish(cli(["status", out]))
    assert code == 0 and "4 done, 0 pending, 0 failed" in text, text


def test_hive_output_on_s3_is_locked_by_an_object(bucket) -> None:
    fs, name = bucket
    upload(fs, f"{name}/in", {"a.csv": make_csv(50, 1)})
    out = f"s3://{name}/out"
    lock = f"{name}/out/_chunkmill/lock.json"
    fs.pipe_file(lock, json.dumps({"pid": 1, "host": "elsewhere", "started": 0}).encode())
    with pytest.raises(OutputLocked, match="in use by another chunkmill run"):
        pipeline.ingest([f"s3://{name}/in"], out=out, progress=False)
    from pipeline.report.status import status

    assert status(out)["live"]["host"] == "elsewhere"  # status says who holds it
    # a lock left by a dead process of this host is taken over, and released after the run
    fs.pipe_file(lock, json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname(),
                                   "started": 0}).encode())
    assert pipeline.ingest([f"s3://{name}/in"], out=out, progress=False).ok
    fs.invalidate_cache()
    assert not fs.exists(lock)
    # A failed file's _errors object goes once it reads: the commit finds it by listing.
    upload(fs, f"{name}/in", {"b.csv": b"a,b\n\xff,1\n"})
    assert pipeline.ingest([f"s3://{name}/in"], out=out, progress=False).files.get("failed")
    fs.invalidate_cache()
    assert len(fs.glob(f"{name}/out/_errors/*-file.parquet")) == 1
    upload(fs, f"{name}/in", {"b.csv": b"a,b\n1,2\n"})
    assert pipeline.ingest([f"s3://{name}/in"], out=out, progress=False).ok
    fs.invalidate_cache()
    assert fs.glob(f"{name}/out/_errors/*-file.parquet") == []

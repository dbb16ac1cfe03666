"""Binary fallback reader: block rows (offset, length, hash, entropy), root digest, containers."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import tracemalloc
import zipfile

import duckdb
import numpy as np
import pytest

import pipeline
from readers import detect, get_reader
from readers.base import ChunkContext, ChunkOutcome, Source
from readers.binary import (
    BLOCK_SIZE,
    BinaryReader,
    container_of,
    entropy,
    root_digest,
)

MiB = 1 << 20


def noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> str:
    src = tmp_path_factory.mktemp("blobs")
    blob = noise(2 * MiB + 12345, 1)
    (src / "blob.bin").write_bytes(blob)
    (src / "copy.img").write_bytes(blob[:MiB] + bytes(MiB))  # shares its first block with blob
    (src / "empty.bin").write_bytes(b"")
    with zipfile.ZipFile(src / "docs.zip", "w") as z:
        z.writestr("a.txt", "hello " * 100)
    (src / "noise.gz").write_bytes(gzip.compress(noise(70_000, 3)))
    (src / "paper.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + noise(3000, 4))
    return str(src)


def ingest(src: str, out: str, scheduler: str, chunk_size: str) -> None:
    pipeline.ingest([src], out=out, scheduler=scheduler, chunk_size=chunk_size, progress=False)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, inputs: str, shared_scheduler: str) -> str:
    out = str(tmp_path_factory.mktemp("lake") / "out")
    ingest(inputs, out, shared_scheduler, "1MiB")  # several chunks per file
    return out


def rows(out: str) -> list[dict]:
    return (
        duckdb.sql(
            f"""select regexp_extract(c.path, '[^/]+$') as name, t."offset", t.length, t.hash,
                   t.entropy, t._file_id
            from read_parquet('{out}/chunks/**/*.parquet', hive_partitioning=true) t
            join '{out}/_catalog/*.parquet' c on c.file_id = t._file_id
            order by name, t."offset" """
        )
        .df()
        .to_dict("records")
    )


def catalog(out: str) -> dict[str, dict]:
    found = duckdb.sql(f"select * from '{out}/_catalog/*.parquet'").df().to_dict("records")
    return {os.path.basename(r["path"]): dict(r, metadata=json.loads(r["metadata"])) for r in found}


def test_block_rows_match_the_bytes(lake: str, inputs: str) -> None:
    blob = open(os.path.join(inputs, "blob.bin"), "rb").read()
    got = [r for r in rows(lake) if r["name"] == "blob.bin"]
    assert [(r["offset"], r["length"]) for r in got] == [(0, MiB), (MiB, MiB), (2 * MiB, 12345)]
    for r in got:
        piece = blob[r["offset"] : r["offset"] + r["length"]]
        assert r["hash"] == hashlib.sha256(piece).hexdigest()
        assert 7.9 < r["entropy"] <= 8.0
    zero = [r for r in rows(lake) if r["name"] == "copy.img"][1]
    assert zero["entropy"] == 0.0


def test_duplicate_blocks_across_files(lake: str) -> None:
    dupes = duckdb.sql(f"""select hash, count(distinct _file_id) as files
        from read_parquet('{lake}/chunks/**/*.parquet', hive_partitioning=true)
        group by hash having files > 1""").fetchall()
    assert len(dupes) == 1 and dupes[0][1] == 2


def test_catalog_records_containers(lake: str) -> None:
    cat = catalog(lake)
    assert {n: r["format"] for n, r in cat.items()} == dict.fromkeys(cat, "binary")
    meta = {n: r["metadata"] for n, r in cat.items()}
    assert meta["docs.zip"]["container"] == "zip"
    assert meta["paper.pdf"]["container"] == "pdf"
    assert meta["noise.gz"]["compression"] == "gzip" and meta["noise.gz"]["container"] == "gzip"
    assert meta["blob.bin"]["container"] is None
    assert meta["blob.bin"]["hash"] == "sha256" and meta["blob.bin"]["block_size"] == BLOCK_SIZE
    assert all(r["status"] == "ok" for r in cat.values())
    assert (cat["empty.bin"]["rows"], cat["empty.bin"]["chunks"]) == (0, 0)
    assert (cat["blob.bin"]["rows"], cat["blob.bin"]["chunks"]) == (3, 3)


def test_forced_binary_notes_a_missing_trailer(tmp_path) -> None:
    """A Parquet file without its footer magic goes to the parquet reader (and fails there);
    ``--format binary`` hashes it and the catalog notes the missing trailer."""
    path = tmp_path / "cut.parquet"
    path.write_bytes(b"PAR1" + noise(5000, 2))
    url = "file://" + str(path)
    source = Source(url, path.stat().st_size, None, "id", "fp", "chunks")
    meta = BinaryReader().describe(source, BinaryReader.configure({})).metadata
    assert meta["container"] == "parquet"
    assert "truncated" in meta["container_warning"]


def test_compressed_input_is_hashed_as_stored(lake: str, inputs: str) -> None:
    stored = open(os.path.join(inputs, "noise.gz"), "rb").read()
    got = [r for r in rows(lake) if r["name"] == "noise.gz"]
    assert [(r["offset"], r["length"], r["hash"]) for r in got] == [
        (0, len(stored), hashlib.sha256(stored).hexdigest())
    ]


def test_rows_do_not_depend_on_chunk_size(
    lake: str, inputs: str, tmp_path, shared_scheduler: str
) -> None:
    other = str(tmp_path / "out")
    ingest(inputs, other, shared_scheduler, "64MiB")
    assert rows(other) == rows(lake)
    assert catalog(other)["blob.bin"]["chunks"] == 1


def test_root_digest_over_block_digests(lake: str, inputs: str) -> None:
    got = [r for r in rows(lake) if r["name"] == "blob.bin"]
    expected = hashlib.sha256(b"".join(bytes.fromhex(r["hash"]) for r in got)).hexdigest()
    assert root_digest([r["hash"] for r in got], BLOCK_SIZE) == expected
    assert root_digest([bytes.fromhex(r["hash"]) for r in got]) == expected
    assert root_digest([], BLOCK_SIZE) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ValueError, match="32-byte"):
        root_digest([b"short"])
    with pytest.raises(ValueError, match="positive"):
        root_digest([], 0)
    # The client-side fold of the chunks' facts gives the same digest, whatever the chunking.
    path = os.path.join(inputs, "blob.bin")
    for chunk_size in (MiB, 2 * MiB, 64 * MiB, 1000):
        facts, _, _ = read_all(path, chunk_size)
        assert facts["root_digest"] == expected and facts["blocks"] == 3


def test_catalog_has_the_root_digest(lake: str) -> None:
    cat = catalog(lake)
    hashes = [r["hash"] for r in rows(lake) if r["name"] == "blob.bin"]
    assert cat["blob.bin"]["metadata"]["root_digest"] == root_digest(hashes)
    assert cat["empty.bin"]["metadata"]["root_digest"] == hashlib.sha256(b"").hexdigest()


def read_all(path: str, chunk_size: int, size: int | None = None) -> tuple[dict, list, list]:
    source = Source(
        "file://" + path, size if size is not None else os.path.getsize(path), None, "id", "fp", "t"
    )
    reader = BinaryReader()
    options = reader.configure({"chunk_size": chunk_size})
    desc = reader.describe(source, options)
    specs = reader.plan(source, desc, options)
    outcomes, tables, rejected = [], [], []
    for spec in specs:
        ctx = ChunkContext(source, spec)
        tables += [t for _, t in reader.read(source, spec, desc, options, ctx)]
        outcomes.append(ChunkOutcome(ctx.facts))
        rejected += ctx.rejected
    return reader.summarize(source, desc, specs, outcomes), tables, rejected


def test_file_shorter_than_discovered(tmp_path) -> None:
    path = tmp_path / "shrunk.bin"
    path.write_bytes(noise(MiB + 100, 5))
    summary, tables, rejected = read_all(str(path), MiB, size=3 * MiB)  # file shrank since
    assert [e.error_type for e in rejected] == ["FileChanged", "FileChanged"]
    assert rejected[0].byte_offset == MiB + 100 and str(path) in rejected[0].message
    assert sum(t.num_rows for t in tables) == 2  # the bytes that were there are still rows
    assert summary["root_digest"] is None and "did not report" in summary["root_digest_error"]


def test_read_memory_is_one_block(tmp_path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(noise(16 * MiB, 6))
    read_all(str(path), 64 * MiB)  # warm up: first-use imports allocate too
    tracemalloc.start()
    try:
        summary, tables, _ = read_all(str(path), 64 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tables[0].num_rows == 16 and summary["blocks"] == 16
    assert peak < 4 * MiB, peak  # one 1 MiB buffer plus bincount scratch, not the 16 MiB chunk


def test_sniff_is_the_fallback(tmp_path) -> None:
    for head in (b"", b"\x00\x01", noise(100, 7), b"id,name\n1,a\n", b"\xff\xd8\xff\xe0"):
        assert BinaryReader.sniff(head, "x") == 1
    assert detect(noise(4096, 8), "x.bin") is BinaryReader
    assert detect(b"id,name\n1,a\n", "x.csv") is get_reader("csv")
    assert detect(b"\x89PNG\r\n\x1a\n" + bytes(20), "x.bin") is not BinaryReader


def test_container_magic_table() -> None:
    cases = {
        b"PK\x03\x04": "zip",
        b"\x1f\x8b\x08": "gzip",
        b"PAR1xxxx": "parquet",
        b"ARROW1\x00\x00": "arrow",
        b"%PDF-1.7": "pdf",
        b"SQLite format 3\x00": "sqlite",
        b"\x7fELF\x02": "elf",
        b"\x89HDF\r\n\x1a\n": "hdf5",
        b"RIFF\x00\x00\x00\x00WAVE": "wav",
        b"\x00\x00\x00\x18ftypmp42": "isobmff",
        b"\x28\xb5\x2f\xfd": "zstd",
        b"plain words\n": "text",
        b"\x00\x9f\x92\x96": None,
        b"": None,
    }
    for head, name in cases.items():
        assert container_of(head) == name, head
    tar = bytes(257) + b"ustar\x0000" + bytes(100)
    assert container_of(tar) == "tar"


def test_entropy_values() -> None:
    assert entropy(bytes(range(256)) * 10) == pytest.approx(8.0)
    assert entropy(b"\x07" * 1000) == 0.0
    assert entropy(b"") == 0.0
    assert entropy(b"ab" * 500) == pytest.approx(1.0)
    data = noise(300_001, 9)
    assert entropy(data, slice_bytes=7) == pytest.approx(entropy(data))  # slices add up
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256) / len(data)
    assert entropy(data) == pytest.approx(-(counts * np.log2(counts)).sum())

"""Small files are read many to a task into shared fragments, and stay exactly-once on re-runs."""

from __future__ import annotations

import os
import random
import re

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import thorough
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pipeline
from tests.test_resume import run_cli

BUNDLE = re.compile(r"^bundle-[0-9a-f]{16}\.parquet$")


def write_files(src, count: int, seed: int = 1) -> dict[str, list[tuple[int, str, float]]]:
    """``count`` small CSV files: most plain, some with quotes (read one by one)."""
    src.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    rows = {}
    for n in range(count):
        name = f"part-{n:04d}.csv"
        lines = [(n * 1000 + i, rnd.choice(["a", "b", "c"]), round(rnd.random(), 3))
                 for i in range(rnd.randint(1, 40))]
        text = "id,event,value\n" + "".join(
            f'{i},"{e}, quoted",{v}\n' if n % 7 == 3 else f"{i},{e},{v}\n"
            for i, e, v in lines)
        (src / name).write_text(text)
        rows[name] = [(i, f"{e}, quoted" if n % 7 == 3 else e, v) for i, e, v in lines]
    return rows


def table_rows(out, table: str) -> list[tuple]:
    return sorted(duckdb.sql(
        f"select id, event, value, _file_id from read_parquet('{out}/{table}/**/*.parquet', "
        f"hive_partitioning=true)").fetchall())


def expected_rows(out, rows: dict[str, list[tuple]]) -> list[tuple]:
    ids = dict(duckdb.sql(f"select path, file_id from '{out}/_catalog/*.parquet'").fetchall())
    by_name = {os.path.basename(p): fid for p, fid in ids.items()}
    return sorted((i, e, v, by_name[name]) for name, rs in rows.items() for i, e, v in rs)


def bundle_mates(out, table: str) -> list[str]:
    """Names of two files that share a fragment (so one change rewrites the other's rows)."""
    names = dict(duckdb.sql(f"select file_id, path from '{out}/_catalog/*.parquet'").fetchall())
    for _, _, files in os.walk(out / table):
        for f in files:
            ids = duckdb.sql(f"select distinct _file_id from read_parquet('{out}/{table}/**/{f}')"
                             " order by 1").fetchall()
            if len(ids) >= 2:
                return [os.path.basename(names[i]) for (i,) in ids[:2]]
    raise AssertionError("no fragment holds two files")


def fragments(out, table: str) -> list[str]:
    return sorted(f for _, _, files in os.walk(out / table) for f in files
                  if f != "_common_metadata")


def test_small_files_share_tasks_and_fragments(tmp_path, shared_scheduler) -> None:
    src, out = tmp_path / "logs", tmp_path / "out"
    rows = write_files(src, 60)
    bad = "id,event,value\n1,a,0.5\n3,c\n4,d,1.5,extra\n"
    (src / "part-9998.csv").write_text(bad)
    report = pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler)
    assert report.files == {"ok": 60, "partial": 1}
    rows["part-9998.csv"] = [(1, "a", 0.5)]  # the two ragged records go to _errors
    assert table_rows(out, "logs") == expected_rows(out, rows)
    # a few bundles, not one fragment per file; each row still names its own file
    names = fragments(out, "logs")
    assert len(names) <= 6 and all(BUNDLE.match(n) for n in names), names
    assert len(report.chunk_records) == len(names)
    errors = duckdb.sql(f"select path, byte_offset, kind, message from "
                        f"'{out}/_errors/*.parquet' order by byte_offset").fetchall()
    assert [(os.path.basename(p), off, kind) for p, off, kind, _ in errors] == [
        ("part-9998.csv", bad.index("3,c"), "record"),
        ("part-9998.csv", bad.index("4,d"), "record")]
    # the catalog keeps one row per file, with its own row count
    catalog = dict(duckdb.sql(f"select path, rows from '{out}/_catalog/*.parquet'").fetchall())
    assert len(catalog) == 61
    assert all(catalog[str(src / n)] == len(r) for n, r in rows.items())


def test_concatenated_parse_matches_one_by_one(tmp_path, shared_scheduler) -> None:
    src = tmp_path / "t"
    rows = write_files(src, 40, seed=5)
    together = pipeline.ingest([str(src)], out=str(tmp_path / "a"), scheduler=shared_scheduler)
    alone = pipeline.ingest([str(src)], out=str(tmp_path / "b"), scheduler=shared_scheduler,
                            small_file_size=0)
    assert together.rows == alone.rows == sum(len(r) for r in rows.values())
    assert table_rows(tmp_path / "a", "t") == table_rows(tmp_path / "b", "t")
    assert len(fragments(tmp_path / "b", "t")) == 40
    schema_a = pq.read_schema(next((tmp_path / "a" / "t").glob("*.parquet")))
    schema_b = pq.read_schema(next((tmp_path / "b" / "t").glob("*.parquet")))
    assert schema_a.equals(schema_b)


def test_changed_member_rewrites_its_bundle_exactly_once(tmp_path, shared_scheduler) -> None:
    src, out = tmp_path / "logs", tmp_path / "out"
    rows = write_files(src, 30)
    pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler, partition_by="event")
    before = fragments(out, "logs")
    (src / "part-0004.csv").write_text("id,event,value\n77,b,7.5\n78,d,8.5\n")
    rows["part-0004.csv"] = [(77, "b", 7.5), (78, "d", 8.5)]
    again = pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler,
                            partition_by="event")
    # the changed file's bundle mates are read again with it; other bundles are untouched
    assert again.files.get("unchanged", 0) > 0 and again.files.get("ok", 0) > 1
    assert table_rows(out, "logs") == expected_rows(out, rows)
    assert set(before) & set(fragments(out, "logs"))  # untouched bundles kept their files
    assert pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler,
                           partition_by="event").files == {"unchanged": 30}


def test_deleted_member_is_carried_or_pruned(tmp_path, shared_scheduler) -> None:
    src, out = tmp_path / "logs", tmp_path / "out"
    rows = write_files(src, 12)
    pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler, partition_by="event")
    # one file of a bundle changes, another is deleted: without --prune the deleted one's rows
    # are kept, copied out of the fragment being replaced
    changed, deleted = bundle_mates(out, "logs")
    (src / changed).write_text("id,event,value\n5,a,1.0\n")
    rows[changed] = [(5, "a", 1.0)]
    (src / deleted).unlink()
    pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler, partition_by="event")
    catalog = {os.path.basename(p) for (p,) in
               duckdb.sql(f"select path from '{out}/_catalog/*.parquet'").fetchall()}
    assert deleted in catalog
    assert table_rows(out, "logs") == expected_rows(out, rows)
    pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler, partition_by="event",
                    prune=True)
    del rows[deleted]
    assert table_rows(out, "logs") == expected_rows(out, rows)


@pytest.mark.timeout(600)
def test_killed_bundle_commit_resumes_exactly_once(tmp_path, shared_scheduler) -> None:
    src, out = tmp_path / "logs", tmp_path / "out"
    rows = write_files(src, 40)
    args = ["ingest", str(src), "--out", str(out), "--workers", "2", "--no-progress"]
    # The first, uninterrupted run only makes the bundles the killed run rewrites: the same
    # ingest on the tests' cluster, shaped as --workers 2 (two one-thread workers: the same
    # bundles, byte for byte), instead of a CLI process that starts a cluster of its own.
    assert pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler, workers=2,
                           progress=False).ok
    changed, deleted = bundle_mates(out, "logs")
    (src / changed).write_text("id,event,value\n1,a,1.0\n2,b,2.0\n")
    rows[changed] = [(1, "a", 1.0), (2, "b", 2.0)]
    (src / deleted).unlink()  # carried: its rows must survive the crashes too
    for crash_at in ("mid_commit", "before_commit") if thorough() else ("mid_commit",):
        assert run_cli(args, crash_at=crash_at) != 0
        assert all(BUNDLE.match(n) for n in fragments(out, "logs"))
    assert run_cli(args) == 0
    assert table_rows(out, "logs") == expected_rows(out, rows)


def test_member_that_empties_or_breaks_keeps_the_bundle_exact(tmp_path, shared_scheduler
                                                             ) -> None:
    src, out = tmp_path / "logs", tmp_path / "out"
    rows = write_files(src, 12, seed=3)
    pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler)
    emptied, broken = bundle_mates(out, "logs")
    (src / emptied).write_text("id,event,value\n")  # header only now: no rows, no chunk
    rows[emptied] = []
    (src / broken).write_bytes(b"\x1f\x8b\x08\x00garbage")  # unreadable now: rows kept
    report = pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler)
    assert report.files.get("failed") == 1
    assert table_rows(out, "logs") == expected_rows(out, rows)
    # the unreadable file is tried again next time; its old rows are still there
    (src / broken).write_text("id,event,value\n9,z,9.5\n")
    rows[broken] = [(9, "z", 9.5)]
    pipeline.ingest([str(src)], out=str(out), scheduler=shared_scheduler)
    assert table_rows(out, "logs") == expected_rows(out, rows)


def test_equal_schemas_are_one_object_in_the_plan(tmp_path) -> None:
    """Bundle tasks pickle each member's description; shared schema objects pickle once."""
    for i in range(6):
        (tmp_path / f"f{i}.csv").write_text(f"a,b\n{i},x\n")
    (tmp_path / "other.csv").write_text("a,c\n1,2.5\n")
    plan = pipeline.plan([str(tmp_path)], table="t")
    schemas = [f.description.tables["t"] for f in plan.files]
    assert len(schemas) == 7 and len({id(s) for s in schemas}) == 2


def test_small_files_read_together_are_parsed_as_each_batch_fills(tmp_path, monkeypatch) -> None:
    """A bundle's files are read and parsed a batch (``parse_block_bytes``) at a time: the
    first rows come out before most files are read, so a bundle never holds all its files."""
    from readers.base import Source
    from readers.csv import CSVReader
    from readers.testing import source_of

    reader = CSVReader()
    options = reader.configure({"parse_block_bytes": 2000})
    members = []
    for i in range(40):
        path = tmp_path / f"f{i:02d}.csv"
        path.write_text("a,b\n" + "".join(f"{i},{j}\n" for j in range(50)))  # ~300 bytes
        source = source_of(path)
        description = reader.describe(source, options)
        (chunk,) = reader.plan(source, description, options)
        members.append((source, chunk, description))
    read: list[str] = []
    original = Source.read_range
    monkeypatch.setattr(Source, "read_range",
                        lambda self, start, end: read.append(self.url) or original(self, start,
                                                                                  end))
    batches = reader.read_together(members, options)
    first = next(batches)
    assert len(read) < 10 and first.members == list(range(len(read)))
    rest = list(batches)
    assert len(read) == 40 and sum(len(b.members) for b in [first, *rest]) == 40
    rows = pa.concat_tables([b.rows for b in [first, *rest]])
    assert rows.num_rows == 40 * 50 and rows.column("a").to_pylist()[::50] == list(range(40))


_LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\n\r\n", "\n\r\n"])
_RECORDS = st.one_of(st.integers(0, 99).map(lambda n: f"{n},x{n}"),
                     st.sampled_from(['"q",1', "", "7,", ",y", '5,"x\ny"', '6,"a""b"',
                                      '7,"open', '8,x"y', '9,"cr\r"', '10,"\r\n\n"']))
_BODIES = st.lists(st.tuples(_RECORDS, _LINE_ENDS), min_size=1, max_size=6).map(
    lambda lines: "".join(r + e for r, e in lines))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(st.tuples(_BODIES, st.booleans()), min_size=1, max_size=6),
       block=st.sampled_from([16, 4096]))
# A lone CR ends a record without a newline, an empty line is a newline without a row: counted
# by lines, two such files would be off in opposite directions and their sum would add up.
@example(bodies=[("1,x1\r2,x2\n", True), ("3,x3\n\n", True)], block=4096)
@example(bodies=[("1,x1\n\r\n", True), ("2,x2\r3,x3", False)], block=4096)
@example(bodies=[("1,x1\r", False), ("\n2,x2\n", True)], block=4096)
@example(bodies=[("1,x1\r", True), ("2,x2\n3,x3", False)], block=4096)  # a lone CR at the end
# Quoted newlines: a file ending inside quotes would join its last record with the next file's.
@example(bodies=[('1,"a\nb"\n2,x\n', True), ('3,"open\n', True), ("4,y\n", True)], block=4096)
@example(bodies=[('1,"a\n\nb"\n', True), ("2,x\n\n", True), ('3,"c\r"\r', True)], block=4096)
@example(bodies=[('3,"open\n', True), ('more"\n5,z\n', True)], block=4096)  # closed next door
def test_files_parsed_together_get_exactly_their_own_rows(tmp_path_factory, bodies, block
                                                          ) -> None:
    """Each file a batch keeps gets the rows it gives read alone, whatever its line ends
    (CRLF, a lone CR, empty lines, quoted newlines, a quote left open, no final newline): the
    check of a whole batch lets through only files that end outside quotes and have no empty
    record, and counts each one's records as the parser will."""
    from readers.base import ChunkContext
    from readers.csv import CSVReader
    from readers.testing import source_of

    tmp = tmp_path_factory.mktemp("together")
    reader = CSVReader()
    options = reader.configure({"parse_block_bytes": block})
    first = reader.describe(source_of(_write(tmp / "first.csv", "a,b\n1,x1\n")), options)
    members = []
    for i, (body, final_newline) in enumerate(bodies):
        text = "a,b\n" + (body if final_newline else body.rstrip("\r\n") or body)
        source = source_of(_write(tmp / f"f{i}.csv", text))
        description = reader.describe(source, options)
        # One schema for every member, as a plan gives a table's files.
        description.tables = dict(first.tables)
        chunks = reader.plan(source, description, options)
        if len(chunks) == 1:
            members.append((source, chunks[0], description))

    together = set()
    for read in reader.read_together(members, options):
        together.update(read.members)
        at = 0
        for member, count in zip(read.members, read.counts, strict=True):
            source, chunk, description = members[member]
            ctx = ChunkContext(source, chunk)
            alone = [rows for _, rows in reader.read(source, chunk, description, options, ctx)]
            assert not ctx.rejected
            expected = pa.concat_tables(alone).to_pylist() if alone else []
            assert read.rows.slice(at, count).to_pylist() == expected, source.path
            at += count
        assert at == read.rows.num_rows
    plain = all('"' not in body and "\r" not in body and "\n\n" not in "\n" + body
                for body, _ in bodies)
    if plain:  # nothing stops them: all are parsed together (the fast path is taken)
        assert together == set(range(len(members)))


def _write(path, text: str):
    path.write_bytes(text.encode())
    return path


def test_quoted_small_files_are_parsed_together(tmp_path) -> None:
    """Quoted newlines, doubled quotes and CRLF inside quotes do not keep a file out of a joint
    parse: its records are counted as the parser reads them."""
    from readers.csv import CSVReader
    from readers.testing import source_of

    reader = CSVReader()
    options = reader.configure({})
    texts = ['a,b\n1,"a\nb"\n2,x\n', 'a,b\n5,"a""b"\n6,y\n', 'a,b\n7,"c\r\nd"\r\n']
    first = reader.describe(source_of(_write(tmp_path / "first.csv", "a,b\n1,x\n")), options)
    members = []
    for i, text in enumerate(texts):
        source = source_of(_write(tmp_path / f"f{i}.csv", text))
        description = reader.describe(source, options)
        description.tables = dict(first.tables)
        (chunk,) = reader.plan(source, description, options)
        members.append((source, chunk, description))
    (read,) = reader.read_together(members, options)
    assert read.members == [0, 1, 2] and read.counts == [2, 2, 1]
    assert read.rows.column("b").to_pylist() == ["a\nb", "x", 'a"b', "y", "c\r\nd"]


@pytest.mark.parametrize("bad", ["2,x\n\n3,y\n", "2,x\r\n\r\n3,y\r\n", "\n2,x\n"])
def test_a_file_with_an_empty_line_leaves_the_others_parsed_together(tmp_path, bad) -> None:
    """The parser skips empty lines, so such a file cannot be counted by its records: it goes
    one by one, and the files beside it are still parsed together."""
    from readers.csv import CSVReader
    from readers.testing import source_of

    reader = CSVReader()
    options = reader.configure({})
    first = reader.describe(source_of(_write(tmp_path / "first.csv", "a,b\n1,x\n")), options)
    members = []
    for i, body in enumerate(["1,x\n", bad, '4,"z\nz"\n']):
        source = source_of(_write(tmp_path / f"f{i}.csv", "a,b\n" + body))
        description = reader.describe(source, options)
        description.tables = dict(first.tables)
        (chunk,) = reader.plan(source, description, options)
        members.append((source, chunk, description))
    (read,) = reader.read_together(members, options)
    assert read.members == [0, 2] and read.counts == [1, 1]


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=300),
       max_bytes=st.integers(1000, 60_000), min_bundles=st.integers(1, 8))
def test_pack_makes_bundles_of_about_equal_size(sizes, max_bytes, min_bundles) -> None:
    """Every member once and in order; no bundle past ``max_bytes`` (but an item bigger
    than that alone); with items small against a bundle's share, at least as many bundles as
    the limit or ``min_bundles`` ask (exactly as many where shares leave room for an item:
    shares close to the limit may need more), their sizes within two items of each other: no
    last bundle of a few files. (200,000 random cases of this held when it was written.)"""
    from pipeline.execution.bundles import pack

    items = [([i], n) for i, n in enumerate(sizes)]
    bundles = pack(items, max_bytes, min_bundles)
    assert [m for b in bundles for m in b] == list(range(len(sizes)))
    weights = [sum(sizes[m] for m in b) for b in bundles]
    assert all(w <= max_bytes or len(b) == 1 for w, b in zip(weights, bundles, strict=True))
    total, biggest = sum(sizes), max(sizes)
    wanted = max(min_bundles, -(-total // max_bytes))
    if 4 * biggest <= min(max_bytes, total / wanted):  # items small against a share
        assert len(bundles) >= wanted and max(weights) - min(weights) <= 2 * biggest, weights
        if total / wanted + biggest <= max_bytes:  # shares leave room for an item
            assert len(bundles) == wanted


def test_ten_thousand_small_files_make_exactly_the_bundles_asked_for() -> None:
    """10,000 files of about 10 KB (sizes differ by a few bytes, as real files do) in the
    four bundles two threads ask for, not four filled to the limit and a fifth of two."""
    from pipeline.execution.bundles import pack

    rng = random.Random(1)
    sizes = [rng.randint(9_900, 10_100) for _ in range(10_000)]
    bundles = pack([([i], n) for i, n in enumerate(sizes)], 32 << 20, 4)
    weights = [sum(sizes[m] for m in b) for b in bundles]
    assert len(bundles) == 4 and max(weights) - min(weights) < 2 * 10_100, weights

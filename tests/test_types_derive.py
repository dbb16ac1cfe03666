"""Declared type names, derived-column specs and the bucket hash (issue 16, points 1 and 6)."""

from __future__ import annotations

import datetime as dt
import random

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import UsageError
from pipeline.execution.hook import TableHook, TransformError
from pipeline.planning.derive import bucket, iceberg_hash, parse_derive
from pipeline.planning.types import parse_schema, parse_type, type_name


def _murmur3(data: bytes) -> int:
    """murmur3_x86_32, seed 0, one value at a time (the reference for the numpy version)."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    h, n = 0, len(data)
    for i in range(0, n - n % 4, 4):
        k = rotl((int.from_bytes(data[i:i + 4], "little") * c1) & mask, 15) * c2 & mask
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & mask
    tail = data[n - n % 4:]
    if tail:
        h ^= rotl((int.from_bytes(tail, "little") * c1) & mask, 15) * c2 & mask
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def _signed(values: np.ndarray) -> list[int]:
    return values.astype(np.uint32).view(np.int32).tolist()


@pytest.mark.parametrize(("name", "expected"), [
    ("varchar", pa.string()), ("TEXT", pa.string()), ("string", pa.string()),
    ("bigint", pa.int64()), ("int64", pa.int64()), ("int8", pa.int64()),
    ("int", pa.int32()), ("integer", pa.int32()), ("int32", pa.int32()),
    ("smallint", pa.int16()), ("tinyint", pa.int8()), ("ubigint", pa.uint64()),
    ("double", pa.float64()), ("float64", pa.float64()), ("float", pa.float32()),
    ("bool", pa.bool_()), ("boolean", pa.bool_()), ("date", pa.date32()),
    ("timestamp", pa.timestamp("us")), ("datetime", pa.timestamp("us")),
    ("timestamp_ns", pa.timestamp("ns")),
    ("timestamptz", pa.timestamp("us", tz="UTC")),
    ("timestamp with time zone", pa.timestamp("us", tz="UTC")),
    ("decimal(10,2)", pa.decimal128(10, 2)), ("NUMERIC( 38 , 0 )", pa.decimal128(38, 0)),
    ("decimal", pa.decimal128(18, 3)), ("decimal(5)", pa.decimal128(5, 0)),
    ("blob", pa.binary()), ("binary", pa.binary()), ("bytea", pa.binary()),
])
def test_type_names_follow_duckdb(name, expected) -> None:
    assert parse_type(name) == expected


def test_type_names_mean_what_duckdb_means() -> None:
    """Each name gives the Arrow type that DuckDB reads back as its own type of that name."""
    names = ["varchar", "bigint", "int8", "integer", "smallint", "tinyint", "double",
             "float", "boolean", "date", "timestamp", "timestamptz", "decimal(10,2)", "blob"]
    schema = pa.schema([(f"c{i}", parse_type(n)) for i, n in enumerate(names)])
    con = duckdb.connect()
    con.register("t", schema.empty_table())
    got = [r[1] for r in con.sql("describe select * from t").fetchall()]
    want = [con.sql(f"select typeof(null::{n})").fetchall()[0][0] for n in names]
    assert got == want


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown type 'number'.*known types: varchar"):
        parse_schema("a=number")
    with pytest.raises(UsageError, match="P <= 38"):
        parse_type("decimal(40,2)")
    with pytest.raises(UsageError, match="COL=TYPE"):
        parse_schema("just-a-name")


def test_schema_forms() -> None:
    text = parse_schema(["zip=varchar,amount=decimal(10,2)", "ts=timestamptz"])
    assert text == {"zip": pa.string(), "amount": pa.decimal128(10, 2),
                    "ts": pa.timestamp("us", tz="UTC")}
    assert parse_schema({"zip": "text", "n": pa.int16()}) == {"zip": pa.string(),
                                                              "n": pa.int16()}
    assert parse_schema(pa.schema([("a", pa.date32())])) == {"a": pa.date32()}
    assert type_name(pa.decimal128(10, 2)) == "decimal(10,2)" and type_name(pa.int32()) == \
        "integer"


def test_iceberg_spec_hash_vectors() -> None:
    """Appendix B of the Apache Iceberg table spec (32-bit hash requirements)."""
    assert _signed(iceberg_hash(pa.array([34], pa.int32()))) == [2017239379]
    assert _signed(iceberg_hash(pa.array([34], pa.int64()))) == [2017239379]
    assert _signed(iceberg_hash(pa.array([dt.date(2017, 11, 16)]))) == [-653330422]
    ts = dt.datetime(2017, 11, 16, 22, 31, 8)
    assert _signed(iceberg_hash(pa.array([ts], pa.timestamp("us")))) == [-2047944441]
    assert _signed(iceberg_hash(pa.array([ts], pa.timestamp("ns", tz="UTC")))) == [-2047944441]
    assert _signed(iceberg_hash(pa.array([ts], pa.timestamp("s")))) == [-2047944441]
    assert _signed(iceberg_hash(pa.array(["iceberg"]))) == [1210000089]
    assert _signed(iceberg_hash(pa.array([b"\x00\x01\x02\x03"]))) == [-188683207]
    assert bucket(pa.array([34, None]), 16).to_pylist() == [3, None]  # the spec's bucket[16]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), min_size=1, max_size=50),
       st.integers(0, 5))
def test_string_hash_matches_the_scalar_reference(values, cut) -> None:
    arr = pa.array(values, pa.string()).slice(min(cut, len(values) - 1))
    got = iceberg_hash(arr)
    for value, h in zip(arr.to_pylist(), got.tolist(), strict=True):
        if value is not None:
            assert h == _murmur3(value.encode())


def test_bucket_is_vectorised_and_stable() -> None:
    rng = random.Random(7)
    ids = pa.array([rng.randrange(-2**63, 2**63) for _ in range(20000)], pa.int64())
    got = bucket(ids, 64)
    ref = [(_murmur3(v.to_bytes(8, "little", signed=True)) & 0x7FFFFFFF) % 64
           for v in ids.to_pylist()[:500]]
    assert got.to_pylist()[:500] == ref
    assert got.type == pa.int32() and set(got.to_pylist()) == set(range(64))


def test_derive_specs() -> None:
    specs = parse_derive(["day=date(ts)", "b = bucket(user id, 64)"])
    assert [(d.name, d.func, d.column, d.buckets) for d in specs] == [
        ("day", "date", "ts", 0), ("b", "bucket", "user id", 64)]
    for bad, match in [("day=week(ts)", "unknown function 'week'"), ("day", "NAME=FUNC"),
                       ("b=bucket(id)", "number of buckets"), ("b=bucket(id, 0)", "N >= 1"),
                       (["d=day(ts)", "d=hour(ts)"], "more than once")]:
        with pytest.raises(UsageError, match=match):
            parse_derive(bad)


def test_derived_values_match_duckdb() -> None:
    ts = [dt.datetime(2024, 2, 29, 23, 59, 59), None, dt.datetime(1969, 12, 31, 0, 30)]
    table = pa.table({"ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                      "d": pa.array([t.date() if t else None for t in ts])})
    derive = parse_derive(["day=date(ts)", "y=year(ts)", "m=month(ts)", "dd=day(ts)",
                           "h=hour(ts)", "hd=hour(d)"])
    out = TableHook(derive={"t": derive}).apply("t", table)
    con = duckdb.connect()
    con.execute("set TimeZone='UTC'")
    con.register("src", table)
    want = con.sql("select date(ts), year(ts), month(ts), day(ts), hour(ts), "
                   "hour(d::timestamp) from src").fetchall()
    got = list(zip(*[out.column(n).to_pylist() for n in ("day", "y", "m", "dd", "h", "hd")],
                   strict=True))
    assert got == want


def test_transform_output_must_keep_its_schema() -> None:
    def widen(t: pa.Table) -> pa.Table:
        return t.append_column("n2", pa.array([None] * t.num_rows))

    schema = pa.schema([("n", pa.int64()), ("n2", pa.float64())])
    hook = TableHook(transform=widen, transform_schemas={"t": schema})
    out = hook.apply("t", pa.table({"n": [1, 2]}))
    assert out.schema == schema  # an all-null column takes the planned type
    with pytest.raises(TransformError, match="widen returned columns"):
        hook.apply("t", pa.table({"n": ["x"]}))

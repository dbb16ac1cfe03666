"""Arrow arrays built from buffers (no pandas import) equal what pa.array makes."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.output.columns import (
    int64_array,
    int64_from_numpy,
    repeated_text,
    text_array,
    timestamp_array,
)


@settings(deadline=None)
@given(st.lists(st.one_of(st.none(), st.text())))
def test_text_array_matches_pa_array(values) -> None:
    got = text_array(values)
    got.validate(full=True)
    clean = [None if v is None else v.encode("utf-8", "replace").decode() for v in values]
    assert got.equals(pa.array(clean, pa.string()))


@settings(deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary())))
def test_binary_array_matches_pa_array(values) -> None:
    got = text_array(values, pa.binary())
    got.validate(full=True)
    assert got.equals(pa.array(values, pa.binary()))


@settings(deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1))))
def test_int64_array_matches_pa_array(values) -> None:
    got = int64_array(values)
    got.validate(full=True)
    assert got.equals(pa.array(values, pa.int64()))


@settings(deadline=None)
@given(st.lists(st.integers(-2**63, 2**63 - 1)))
def test_int64_from_numpy_matches_pa_array(values) -> None:
    import numpy as np

    got = int64_from_numpy(np.array(values, dtype=np.int64))
    assert got.equals(pa.array(values, pa.int64()))


@settings(deadline=None)
@given(st.text(), st.integers(0, 3000))
def test_repeated_text_matches_pa_repeat(value, count) -> None:
    got = repeated_text(value, count)
    got.validate(full=True)
    clean = value.encode("utf-8", "replace").decode()
    assert got.equals(pa.repeat(pa.scalar(clean, pa.string()), count))


@settings(deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(-4e9, 4e9))))
def test_timestamp_array_rounds_as_datetime(values) -> None:
    """POSIX seconds to microseconds exactly as ``datetime.fromtimestamp`` rounds them (the
    catalog's mtime and ingested_at)."""
    got = timestamp_array(values)
    got.validate(full=True)
    expected = [None if v is None else dt.datetime.fromtimestamp(v, dt.UTC) for v in values]
    assert got.equals(pa.array(expected, pa.timestamp("us", tz="UTC")))

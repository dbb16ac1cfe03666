"""Delta Lake tables in OUT (``--table-format delta``), committed through delta-rs (`deltalake`).

This module covers: the Delta types and schema of a table, the statistics and partition
values of a fragment's ``add`` action, the storage options delta-rs needs, and committing one
table's part of a commit plan as one Delta transaction. It does not decide what a commit
does (`pipeline.output.commit` does) nor write data (`pipeline.output.writer` does).

How a file's commit maps onto Delta: chunk tasks write their fragments straight into the
table's directory under names no other attempt uses (a Delta reader sees only the files the
table's log lists, so nothing needs a rename). The client then commits, per table, ONE
transaction holding an ``add`` (with statistics) for every new fragment, a ``remove`` for
every previous fragment of the files being committed, and one ``txn`` action per input file
(app id ``chunkmill:<file_id>``, a version counting that file's commits). A reader of any
version sees each file either wholly old or wholly new.

Two writers of one table: delta-rs retries a commit that lost the race on the log's next
version after checking it against the winner; two commits of the same input file conflict
through their ``txn`` app id (``ConcurrentTransaction``) or their removes
(``ConcurrentDeleteDelete``), and blind adds of different files rebase. chunkmill's journal
records the ``txn`` version of a commit before making it, so a run that finds a version it
does not know (another run committed that file since it read the journal) reads the journal
again and re-plans, instead of leaving the other run's fragments in place: `DeltaConflict`.

See also: README "Table formats".
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ChunkmillError, UsageError
from pipeline.output.layout import FILE_ID
from pipeline.output.store import Store

APP = "chunkmill:"
"""Prefix of the ``txn`` app id of each input file's commits."""
COMMIT_ATTEMPTS = 20
"""Tries of one table's commit while other writers keep winning the race for the log."""
STAT_TEXT_MAX = 64
"""Longest text value kept as a min/max statistic (a longer one is left out, never cut)."""


class DeltaConflict(ChunkmillError, RuntimeError):
    """Another writer committed some of the same input files: read the journal again and
    re-plan the commit."""


def require() -> Any:
    """The ``deltalake`` module, or a usage error naming the pip command to run."""
    try:
        import deltalake
    except ImportError as exc:
        raise UsageError("--table-format delta needs the deltalake package: "
                         "python3 -m pip install 'chunkmill[delta]' (or deltalake)") from exc
    return deltalake


# --- types ---------------------------------------------------------------------------------------
def delta_type(kind: pa.DataType) -> pa.DataType:
    """The type a column of ``kind`` has in a Delta table: Delta has no unsigned integers,
    half floats, nanosecond times, time-of-day, durations, fixed-size lists or 256-bit
    decimals, so each becomes the nearest type that holds every value."""
    t = pa.types
    if t.is_dictionary(kind):
        return delta_type(kind.value_type)
    if t.is_uint8(kind):
        return pa.int16()
    if t.is_uint16(kind):
        return pa.int32()
    if t.is_uint32(kind):
        return pa.int64()
    if t.is_uint64(kind):
        return pa.decimal128(20, 0)
    if t.is_float16(kind):
        return pa.float32()
    if t.is_string(kind) or t.is_large_string(kind) or t.is_string_view(kind) or t.is_null(kind):
        return pa.string()
    if (t.is_binary(kind) or t.is_large_binary(kind) or t.is_fixed_size_binary(kind)
            or t.is_binary_view(kind)):
        return pa.binary()
    if t.is_date(kind):
        return pa.date32()
    if t.is_timestamp(kind):
        return pa.timestamp("us", tz="UTC" if kind.tz else None)
    if t.is_time(kind) or t.is_decimal256(kind) or t.is_interval(kind):
        return pa.string()
    if t.is_duration(kind):
        return pa.int64()
    if t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind) or (
            t.is_list_view(kind) or t.is_large_list_view(kind)):
        return pa.list_(pa.field("element", delta_type(kind.value_type)))
    if t.is_struct(kind):
        return pa.struct([pa.field(f.name, delta_type(f.type)) for f in kind])
    if t.is_map(kind):
        return pa.map_(delta_type(kind.key_type), delta_type(kind.item_type))
    return kind


def table_schema(schema: pa.Schema) -> pa.Schema:
    """The Delta table's schema for a planned table schema: Delta types, ``_file_id`` last,
    every column nullable (Delta adds columns as nullable only)."""
    fields = [pa.field(f.name, delta_type(f.type)) for f in schema if f.name != FILE_ID]
    return pa.schema(fields + [pa.field(FILE_ID, pa.string())])


def cast(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` in ``schema``'s (Delta) types; nanoseconds are cut to microseconds."""
    if rows.schema.equals(schema):
        return rows
    return rows.cast(pa.schema([schema.field(n) for n in rows.column_names]), safe=False)


def settle(current: pa.Schema | None, planned: pa.Schema) -> tuple[pa.Schema, list[str]]:
    """The schema to write a Delta table in, given its ``current`` Delta schema and the
    ``planned`` (unified) one, with notes on what changed.

    New columns are added (Delta schema evolution: older files read them as NULL). A column
    whose planned type differs from the table's in Delta terms keeps the table's type: Delta
    cannot change a column's type in place, so the new files are read into it and values
    that do not fit are rejected into ``_errors`` (``TypeMismatch``) instead.
    """
    if current is None:
        return planned, []
    notes, fields = [], []
    for f in planned:
        if f.name in current.names and f.name != FILE_ID:
            have = current.field(f.name).type
            if delta_type(f.type) != have:
                notes.append(f"column {f.name}: the new files need {f.type}, the Delta table "
                             f"has {have}; kept {have}, values that do not fit go to _errors")
                f = pa.field(f.name, have)
        fields.append(f)
    added = [f.name for f in planned if f.name not in current.names]
    if added:
        notes.append(f"new column(s) {', '.join(added)} added to the Delta table (older "
                     "files read them as NULL)")
    return pa.schema(fields), notes


# --- add actions ---------------------------------------------------------------------------------
def partition_value(value: object) -> str | None:
    """A partition value as Delta serializes it in ``partitionValues``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def file_stats(metadata: pq.FileMetaData, schema: pa.Schema) -> str:
    """The ``stats`` of a fragment's ``add`` action, from its own Parquet footer: rows, and
    null counts and exact min/max of its top-level numeric, text and date columns (readers
    skip files with them; a statistic left out only costs skipping)."""
    kinds = {f.name: f.type for f in schema}
    nulls: dict[str, int] = {}
    lows: dict[str, Any] = {}
    highs: dict[str, Any] = {}
    unusable: set[str] = set()
    for r in range(metadata.num_row_groups):
        group = metadata.row_group(r)
        for c in range(group.num_columns):
            column = group.column(c)
            name = column.path_in_schema
            if name not in kinds:
                continue  # a nested leaf
            stats = column.statistics
            if stats is None or not stats.has_null_count:
                unusable.add(name)
                continue
            nulls[name] = nulls.get(name, 0) + stats.null_count
            if not stats.has_min_max:
                if stats.null_count != group.num_rows:
                    unusable.add(name)  # values without bounds: no min/max for the file
                continue
            low, high = _stat(stats.min, kinds[name]), _stat(stats.max, kinds[name])
            if low is None or high is None:
                unusable.add(name)
                continue
            lows[name] = low if name not in lows else min(lows[name], low)
            highs[name] = high if name not in highs else max(highs[name], high)
    out: dict[str, Any] = {"numRecords": metadata.num_rows,
                           "nullCount": {k: v for k, v in nulls.items() if k not in unusable}}
    keep = [k for k in lows if k not in unusable]
    out["minValues"] = {k: _json(lows[k]) for k in keep}
    out["maxValues"] = {k: _json(highs[k]) for k in keep}
    return json.dumps(out, separators=(",", ":"))


def _stat(value: Any, kind: pa.DataType) -> Any:
    t = pa.types
    if t.is_integer(kind) or t.is_date32(kind):
        return value
    if t.is_floating(kind):
        return None if value is None or math.isnan(value) or math.isinf(value) else value
    if t.is_string(kind):
        return value if isinstance(value, str) and len(value) <= STAT_TEXT_MAX else None
    return None


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


# --- storage options ------------------------------------------------------------------------------
_FSSPEC_TO_DELTA = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY",
                    "token": "AWS_SESSION_TOKEN", "endpoint_url": "AWS_ENDPOINT_URL",
                    "region_name": "AWS_REGION"}


def storage_options(options: Mapping[str, Any]) -> dict[str, str]:
    """delta-rs storage options for the fsspec ``options`` chunkmill was given.

    fsspec (s3fs) and delta-rs (object_store) name the same settings differently: the usual
    S3 ones are translated (``endpoint_url`` -> ``AWS_ENDPOINT_URL``, ``key`` ->
    ``AWS_ACCESS_KEY_ID``, ...), options already in upper case are passed through, and the
    rest are fsspec's alone. The standard ``AWS_*`` environment variables reach both.
    """
    out: dict[str, str] = {}
    flat = dict(options)
    flat.update(flat.pop("client_kwargs", None) or {})
    for key, value in flat.items():
        if key in _FSSPEC_TO_DELTA:
            out[_FSSPEC_TO_DELTA[key]] = str(value)
        elif key.isupper():
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    endpoint = out.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL", "")
    if endpoint.startswith("http://"):
        out.setdefault("AWS_ALLOW_HTTP", "true")  # a local or test endpoint without TLS
    return out


# --- tables ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TableChange:
    """One Delta table's part of a commit: ONE transaction."""

    table: str
    adds: tuple[Any, ...]
    """`Fragment` objects of the new fragments (already in place, at ``final``)."""
    removes: tuple[str, ...]
    """Previous fragments (relative to OUT) to remove, if the table still lists them."""
    versions: tuple[tuple[str, int], ...]
    """(file id, ``txn`` version) of every input file whose rows this changes."""


class DeltaOut:
    """The Delta tables of one OUT, for one run (the client side; workers never commit)."""

    def __init__(self, store: Store, partition_by: Sequence[str] = ()) -> None:
        self.deltalake = require()
        self.store = store
        self.partition_by = tuple(partition_by)
        self.options = storage_options(store.storage_options)
        self._open: dict[str, Any] = {}
        self.removed: set[str] = set()
        """Tables this run removed files from (vacuumed at its end)."""

    def uri(self, table: str) -> str:
        return self.store.uri(self.store.path(table))

    def table(self, name: str, fresh: bool = True) -> Any | None:
        """The table's `DeltaTable` at its latest version, or None if it does not exist."""
        dt_ = self._open.get(name)
        if dt_ is None:
            if not self.deltalake.DeltaTable.is_deltatable(self.uri(name), self.options):
                return None
            dt_ = self._open[name] = self.deltalake.DeltaTable(self.uri(name),
                                                                storage_options=self.options)
        elif fresh:
            dt_.update_incremental()
        return dt_

    def schema(self, name: str) -> pa.Schema | None:
        """The table's columns in Arrow types (``_file_id`` left out), None if no table."""
        dt_ = self.table(name)
        if dt_ is None:
            return None
        schema = pa.schema(dt_.schema().to_arrow())
        return pa.schema([f for f in schema if f.name != FILE_ID])

    def partition_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.partition_by) if all(
            c in schema.names for c in self.partition_by) else []

    def ensure(self, name: str, schema: pa.Schema) -> None:
        """Create the table for ``schema`` (a planned schema), or add the columns it lacks."""
        wanted = table_schema(schema)
        parts = self.partition_columns(schema)
        dt_ = self.table(name)
        if dt_ is None:
            try:
                self._open[name] = self.deltalake.DeltaTable.create(
                    self.uri(name), wanted, mode="ignore", partition_by=parts or None,
                    storage_options=self.options)
            except Exception:  # another run created it at the same moment
                dt_ = self.table(name)
                if dt_ is None:
                    raise
            else:
                return
        have = list(dt_.metadata().partition_columns)
        if have != parts:
            raise UsageError(
                f"table {name} is a Delta table partitioned by {have or 'nothing'}; this run "
                f"would partition it by {parts or 'nothing'}. A Delta table's partitioning is "
                "fixed: use the same --partition-by, or another --out")
        current = pa.schema(dt_.schema().to_arrow())
        missing = [f for f in wanted if f.name not in current.names]
        if missing:
            fields = self.deltalake.Schema.from_arrow(pa.schema(missing)).fields
            dt_.alter.add_columns(fields)

    def commit(self, change: TableChange, run_id: str) -> bool:
        """Carry out ``change`` as one transaction; False if nothing was left to do (a retry
        after it was done). Raises `DeltaConflict` when another writer got in the way."""
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import CommitProperties, Transaction

        # delta-rs rebases a commit that lost the race onto the winner without looking at
        # the winner's txn actions, so two runs committing the same input file would both
        # add it. Commit without its retries instead: a lost race fails, and the next
        # attempt reads the log again, where the winner's txn for the file shows.
        for attempt in range(COMMIT_ATTEMPTS):
            dt_ = self.table(change.table)
            if dt_ is None:
                raise DeltaConflict(f"table {change.table}: no Delta table at "
                                    f"{self.uri(change.table)}")
            for file_id, version in change.versions:
                seen = dt_.transaction_version(APP + file_id)
                if seen is not None and seen >= version:
                    raise DeltaConflict(f"table {change.table}: file {file_id} was committed "
                                        "by another run since this one read the journal")
            adds, removes = self._actions(dt_, change)
            if not adds and not removes:
                return False
            schema = self.deltalake.Schema.from_arrow(pa.schema(dt_.schema().to_arrow()))
            try:
                dt_.create_write_transaction(
                    [*adds, *removes], mode="append", schema=schema,
                    partition_by=list(dt_.metadata().partition_columns) or None,
                    commit_properties=CommitProperties(
                        custom_metadata={"chunkmill.run_id": run_id}, max_commit_retries=0,
                        app_transactions=[Transaction(APP + fid, v)
                                          for fid, v in change.versions]))
            except CommitFailedError as exc:
                if attempt + 1 == COMMIT_ATTEMPTS:
                    raise DeltaConflict(f"table {change.table}: {exc}") from exc
                time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
                continue
            break
        if removes:
            self.removed.add(change.table)
        return True

    def _actions(self, dt_: Any, change: TableChange) -> tuple[list[Any], list[Any]]:
        """The adds and removes ``change`` still needs against the table's current files."""
        from deltalake.transaction import AddAction, RemoveAction

        actions = pa.table(dt_.get_add_actions(flatten=False)).select(["path", "size_bytes"])
        # The log's paths are URIs (percent-encoded); ours are the files' own names.
        live = dict(zip(map(unquote, actions.column("path").to_pylist()),
                        actions.column("size_bytes").to_pylist(), strict=True))
        prefix = change.table + "/"
        now = int(time.time() * 1000)
        adds = []
        for fragment in change.adds:
            path = _within(self.store.rel(fragment.final), prefix)
            if path not in live:
                adds.append(AddAction(path, fragment.bytes, dict(fragment.values or {}),
                                      fragment.mtime or now, True, fragment.stats or
                                      json.dumps({"numRecords": fragment.rows})))
        added = {a.path for a in adds}
        new = added | {_within(self.store.rel(f.final), prefix) for f in change.adds}
        removes = [RemoveAction(path, True, now, live[path]) for path in
                   dict.fromkeys(_within(rel, prefix) for rel in change.removes)
                   if path in live and path not in new]
        return adds, removes

    def vacuum(self) -> None:
        """Delete the data files this run's commits removed once the table's retention
        (``delta.deletedFileRetentionDuration``, 7 days by default) has passed: readers of
        older versions, and runs in flight, keep their files until then."""
        for name in sorted(self.removed):
            dt_ = self.table(name)
            if dt_ is not None:
                dt_.vacuum(dry_run=False)


def _within(rel: str, prefix: str) -> str:
    """A path relative to OUT, relative to its table instead."""
    rel = rel.lstrip("/")
    return rel[len(prefix):] if rel.startswith(prefix) else rel


def table_of(rel: str) -> str:
    """The table (first directory) of a path relative to OUT."""
    return rel.lstrip("/").split("/", 1)[0]


def tables_of(rels: Iterable[str]) -> set[str]:
    return {table_of(r) for r in rels}


__all__ = ["DeltaOut", "DeltaConflict", "TableChange", "delta_type", "table_schema", "cast",
           "settle", "partition_value", "file_stats", "storage_options", "table_of",
           "tables_of", "require"]

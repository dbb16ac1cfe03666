"""Small files described together (`describe_many`): one inference over their concatenation,
which must give each file the header split, columns and readable types it gets alone, quotes
or not."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from readers.base import ChunkContext
from readers.csv import CSVReader
from readers.testing import source_of


def _sources(tmp, texts: list[str]) -> list:
    sources = []
    for i, text in enumerate(texts):
        path = tmp / f"f{i}.csv"
        path.write_bytes(text.encode())
        sources.append(source_of(path))
    return sources


def _rows(reader, source, description, options) -> tuple[list[dict], list]:
    rows = []
    for chunk in reader.plan(source, description, options):
        ctx = ChunkContext(source, chunk)
        rows += [r for _, t in reader.read(source, chunk, description, options, ctx)
                 for r in t.to_pylist()]
        rejected = ctx.rejected
    return rows, rejected


def test_quoted_small_files_are_described_together(tmp_path) -> None:
    """Quoted newlines, doubled quotes, CRLF inside quotes and a sniffed delimiter do not keep
    files from one inference; each keeps the header split it has alone."""
    reader = CSVReader()
    options = reader.configure({})
    texts = ['a;b\n1;"x\ny"\n', '\ufeffa;b\n2;"p""q"\n', 'a;b\n3;"c\r\nd"\r\n4;e\r\n']
    sources = _sources(tmp_path, texts)
    together = reader.describe_many(sources, options)
    for source, joint in zip(sources, together, strict=True):
        alone = reader.describe(source, options)
        assert joint is not None and joint.metadata["schema_inferred_with_files"] == 3
        assert joint.state.data_start == alone.state.data_start
        assert joint.state.column_names == alone.state.column_names == ("a", "b")
        assert joint.state.dialect.delimiter == ";"
        assert joint.tables == alone.tables
    assert [_rows(reader, s, d, options)[0] for s, d in zip(sources, together, strict=True)] == [
        [{"a": 1, "b": "x\ny"}], [{"a": 2, "b": 'p"q'}], [{"a": 3, "b": "c\r\nd"},
                                                          {"a": 4, "b": "e"}]]


def test_a_file_ending_inside_quotes_is_described_alone(tmp_path) -> None:
    """A quote never closed would swallow the next file's records in the concatenation, and
    its types with them: that file is described on its own, the others still together."""
    reader = CSVReader()
    options = reader.configure({})
    texts = ['a,b\n1,"x\ny"\n', 'a,b\n2,"open\n', 'a,b\nhello,z\n']
    sources = _sources(tmp_path, texts)
    first, opened, last = reader.describe_many(sources, options)
    assert opened is None
    for joint in (first, last):
        assert joint.metadata["schema_inferred_with_files"] == 2
        assert next(iter(joint.tables.values())).field("a").type == pa.string()
    assert _rows(reader, sources[2], last, options) == ([{"a": "hello", "b": "z"}], [])


_LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\n\r\n"])
_RECORDS = st.one_of(st.integers(0, 99).map(lambda n: f"{n},x{n}"),
                     st.sampled_from(['"q",1', "", "7,", ",y", '5,"x\ny"', '6,"a""b"',
                                      '7,"open', '8,x"y', '"9\n",1', 'w,"\r\n\n"', "2.5,z"]))
_BODIES = st.lists(st.tuples(_RECORDS, _LINE_ENDS), min_size=1, max_size=5).map(
    lambda lines: "".join(r + e for r, e in lines))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(_BODIES, min_size=1, max_size=6),
       header=st.sampled_from(["a,b\n", "a,b\r\n", '"a",b\r', '"a\nA",b\n']))
# The open quote in the middle file would hide "q" (a string) from the type of column a.
@example(bodies=["1,x\n", '2,"open\n', '"q",1\n'], header="a,b\n")
@example(bodies=['7,"open\n', '8,x"y\n3,x3\n'], header="a,b\n")
def test_each_file_described_together_reads_as_alone(tmp_path_factory, bodies, header
                                                     ) -> None:
    """Every file `describe_many` describes has the header split and columns it has alone,
    and reads with the joint types to the same rows, with no record rejected that it keeps
    alone: no record of one file was read as part of another's."""
    tmp = tmp_path_factory.mktemp("together")
    reader = CSVReader()
    options = reader.configure({})
    sources = _sources(tmp, [header + body for body in bodies])
    for source, joint in zip(sources, reader.describe_many(sources, options), strict=True):
        if joint is None:
            continue
        alone = reader.describe(source, options)
        assert joint.state.data_start == alone.state.data_start
        assert joint.state.column_names == alone.state.column_names
        rows, rejected = _rows(reader, source, joint, options)
        alone_rows, alone_rejected = _rows(reader, source, alone, options)
        # The joint types are at least as wide as the file's own: no record the file keeps
        # alone is rejected (a record another file swallowed in the inference would be).
        offsets = {r.byte_offset for r in rejected}
        alone_offsets = {r.byte_offset for r in alone_rejected}
        assert offsets <= alone_offsets, source.path
        assert len(rows) == len(alone_rows) + len(alone_offsets - offsets)
        if offsets != alone_offsets:
            continue  # rows a wider type keeps: the rows differ, rightly
        same = [f.name for f in next(iter(joint.tables.values()))
                if f.type == next(iter(alone.tables.values())).field(f.name).type]
        assert [{k: r[k] for k in same} for r in rows] == [
            {k: r[k] for k in same} for r in alone_rows]


def test_a_header_split_by_the_wrong_delimiter_is_not_trusted(tmp_path) -> None:
    """Files are grouped by a header split with the default delimiter; under the sniffed one
    (``;``) the quote opens a field and the header runs on to the next line. The split would
    put the data start inside the header: such files are described alone."""
    reader = CSVReader()
    options = reader.configure({})
    sources = _sources(tmp_path, ['a;"b\nc";d\n1;2;3\n'] * 2)
    for source, joint in zip(sources, reader.describe_many(sources, options), strict=True):
        alone = reader.describe(source, options)
        assert alone.state.column_names == ("a", "b\nc", "d")
        assert joint is None or joint.state.data_start == alone.state.data_start

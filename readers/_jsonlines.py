"""Line screening for JSON lines: what pyarrow's JSON reader must never see, found cheaply.

pyarrow's JSON reader parses a *stream of values*, not lines, and trusts its input:

- a block whose first value is ``null`` crashes the process (SIGSEGV in
  ``arrow::json::HandlerBase::Null``, reached from ``pyarrow.json.read_json``; apache/arrow#47409),
  and a ``null`` later in a block silently becomes a row of NULLs;
- other non-object values (``1``, ``"x"``, ``[...]``) fail the whole block;
- with no explicit schema, a deeply nested record builds as deep a type (thousands of levels
  crash the process while the types are built; far fewer give tables nothing downstream can
  hold, see `MAX_DEPTH`); with an explicit schema a deeper value is a plain parse error, as the
  tokenizer (RapidJSON, iterative mode) needs no C stack per level;
- two values on one line (``{..} {..}``, or records separated by a bare CR) become two rows.

`object_lines` answers the common case in two vectorised passes: every line starts with ``{``
(or is empty), and how many there are. Otherwise `screen` looks at each line that starts
differently, in Python (rare lines), and measures nesting where a line has more opening
brackets than `MAX_DEPTH`; the caller blanks the bad lines out (same length, so byte offsets
hold) and rejects them. The object-line count lets a parse that returns more rows than lines
be caught.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from readers.errors import ErrorCode

MAX_DEPTH = 50
"""Deepest nesting a JSON record may have, counting its own object as level 1.

Every level becomes one level of Arrow type (a struct or a list), and the tightest limit
downstream is Parquet's: pyarrow refuses to read a schema with 51 nested lists ("Parquet schema
too deep"; each list is two Parquet schema levels, a struct one, so structs alone would allow
99). Dask ships tables through Arrow IPC, whose reader stops at 64 levels, and Python pickles
types recursively (about 200 levels). 50 is below all of them. DuckDB's ``read_json`` has no
limit of its own (``maximum_depth`` only stops its type detection)."""

_WHITESPACE = b" \t\r\n"  # JSON's insignificant whitespace
_NEWLINE, _OPEN_BRACE, _OPEN_BRACKET = ord("\n"), ord("{"), ord("[")
_SLICE = 4 << 20  # bytes compared at a time: bounds the temporary masks
_STRING = re.compile(rb'"(?:[^"\\\n]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line the parser must not see, and why."""

    start: int
    end: int
    """Byte range within the screened block, newline included."""
    code: str
    message: str


@dataclass(slots=True)
class Lines:
    """One block's lines: where they start, which hold an object, which are bad."""

    starts: np.ndarray
    """Offset of every line plus the block's length (the boundaries `bisect_records` takes)."""
    objects: np.ndarray
    """``objects[i]``: lines before line ``i`` whose first value is an object (a prefix sum)."""
    bad: list[BadLine] = field(default_factory=list)

    def expected(self, start: int, end: int) -> int:
        """Rows the lines from offset ``start`` to ``end`` (line boundaries) must give."""
        i, j = np.searchsorted(self.starts, [start, end])
        return int(self.objects[j] - self.objects[i])


def object_lines(block: bytes | bytearray | memoryview) -> int | None:
    """How many lines of ``block`` hold an object, when every line starts with ``{`` or is
    empty; None when some line starts otherwise (then `screen` it)."""
    arr = np.frombuffer(block, np.uint8)
    if not len(arr):
        return 0
    if arr[0] != _OPEN_BRACE and arr[0] != _NEWLINE:
        return None
    count = int(arr[0] == _OPEN_BRACE)
    for at in range(0, len(arr) - 1, _SLICE):
        # the byte after every newline (the last byte's newline starts no line)
        part = arr[at:min(at + _SLICE, len(arr) - 1)]
        after = arr[at + 1:at + 1 + len(part)][part == _NEWLINE]
        objects = int(np.count_nonzero(after == _OPEN_BRACE))
        if objects + int(np.count_nonzero(after == _NEWLINE)) != len(after):
            return None
        count += objects
    return count


def screen(block: bytes | bytearray | memoryview, depth: bool = True) -> Lines:
    """Find the lines of ``block`` that are not one JSON object (nested at most `MAX_DEPTH`
    deep, when ``depth``)."""
    arr = np.frombuffer(block, np.uint8)
    n = len(arr)
    newlines, opens = [], []
    for at in range(0, n, _SLICE):
        part = arr[at:at + _SLICE]
        newlines.append(np.flatnonzero(part == _NEWLINE) + at)
        if depth:
            opens.append(np.flatnonzero((part == _OPEN_BRACE) | (part == _OPEN_BRACKET)) + at)
    nl = np.concatenate(newlines) if newlines else np.zeros(0, np.int64)
    starts = np.concatenate(([0], nl + 1)).astype(np.int64)
    starts = starts[starts < n] if n else starts[:0]
    ends = np.append(nl + 1, n)[: len(starts)]
    first = arr[starts]
    is_object = first == _OPEN_BRACE
    plain = is_object | (first == _NEWLINE)
    bad: dict[int, BadLine] = {}
    # Lines that start with whitespace or something else: a closer look, one by one (rare).
    for i in np.flatnonzero(~plain):
        a, b = int(starts[i]), int(ends[i])
        text = bytes(block[a:b]).strip(_WHITESPACE)
        if not text:
            continue
        if text[:1] == b"{":
            is_object[i] = True
            continue
        bad[i] = BadLine(a, b, ErrorCode.JSON_RECORD_ERROR,
                         f"a JSON line must hold an object, not {_kind(text)}")
    # A line cannot nest deeper than it has opening brackets: only lines with more than
    # MAX_DEPTH of them (strings included) are measured exactly.
    if opens and len(starts):
        per_line = np.bincount(np.searchsorted(nl, np.concatenate(opens)),
                               minlength=len(starts))
        for i in np.flatnonzero(per_line[: len(starts)] > MAX_DEPTH):
            if i in bad:
                continue
            a, b = int(starts[i]), int(ends[i])
            problem = too_deep(bytes(block[a:b]))
            if problem:
                bad[i] = BadLine(a, b, ErrorCode.JSON_RECORD_ERROR, problem)
    for i in bad:
        is_object[i] = False
    objects = np.concatenate(([0], np.cumsum(is_object))).astype(np.int64)
    boundaries = np.append(starts, n).astype(np.int64)
    return Lines(boundaries, objects, [bad[i] for i in sorted(bad)])


def too_deep(line: bytes) -> str | None:
    """Why ``line`` nests too deep, or None when it does not."""
    depth = nesting_depth(line)
    if depth <= MAX_DEPTH:
        return None
    return f"nested {depth} levels deep, more than the {MAX_DEPTH} allowed"


def nesting_depth(line: bytes) -> int:
    """Deepest bracket nesting of one JSON line, brackets inside strings not counted."""
    brackets = np.frombuffer(_STRING.sub(b"", line).translate(None, _NOT_BRACKETS), np.uint8)
    step = np.where((brackets == _OPEN_BRACE) | (brackets == _OPEN_BRACKET), 1, -1)
    return int(np.cumsum(step).max(initial=0))


def blanked(block: bytes | bytearray | memoryview, bad: list[BadLine]
            ) -> bytes | bytearray | memoryview:
    """``block`` with the bad lines turned into spaces (a copy: the caller's bytes stay)."""
    if not bad:
        return block
    out = bytearray(block)
    for line in bad:
        end = line.end - 1 if out[line.end - 1:line.end] == b"\n" else line.end
        out[line.start:end] = b" " * (end - line.start)
    return out


def _kind(text: bytes) -> str:
    first = text[:1]
    for prefix, name in ((b"n", "null"), (b"t", "a boolean"), (b"f", "a boolean"),
                         (b'"', "a string"), (b"[", "an array")):
        if first == prefix:
            return name
    if first.isdigit() or first == b"-":
        return "a number"
    return "a JSON value"

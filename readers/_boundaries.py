"""Record boundaries in delimited text, exact for the grammar of pyarrow's CSV parser.

A record belongs to the chunk that holds its first byte. Chunk ``k`` covers the nominal byte range
``[o_k, o_k+1)``; its first record starts right after the first record end at or after ``o_k``.
A record ends at a line end outside quotes: ``\\n``, or a ``\\r`` not followed by ``\\n``
(classic Mac files; ``\\r\\n`` ends a record at its ``\\n``), as pyarrow's parser reads them.

Whether a position lies inside quotes follows pyarrow's grammar (RFC 4180 with its leniencies),
which only a *run* of adjacent quote characters can change:

- a run preceded by a field start (the delimiter, a line end or the record start) opens a field
  when its length is odd (two quotes are an empty field, three open one holding a quote), and
  inside a quoted field an odd run closes it (pairs are escaped quotes): it **toggles** the state;
- a run of odd length anywhere else is a closing quote (inside) or literal text (outside, as in
  ``a"b``): either way the state after it is *outside*: it **resets** the state;
- a run of even length changes nothing.

So the state after a stretch of text is a `Transfer`: a reset followed by some toggles, or only
toggles. Transfers compose, so each chunk reports its own and the client finds every chunk's
true start state by composing them in order (the old model, quote-count parity, is the special
case without resets, and stray quotes such as ``a"b`` broke it). Scans are vectorised over
windows of the buffer and work backwards where that finds the answer sooner (a transfer ends at
the last reset, which in real files is the last closing quote).

A chunk that does not know its start state guesses (`guess_parity`), reports its transfer, and is
re-run when the guess was wrong. Every chunk is also *verified* by the parser itself: a sentinel
record appended after it must come back as a record of its own (see `readers._text`).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any

import numpy as np

QUOTE = 0x22
NEWLINE = 0x0A
CR = 0x0D
OUT, IN = 0, 1
"""Quote states: outside (0) or inside (1) a quoted field."""
_FIELD_START = frozenset(b",\t\n\r;|")

Buffer = bytes | bytearray | memoryview | mmap.mmap

_COUNT_SLICE = 1 << 20  # numpy compares this much at a time: the mask stays in cache
_FIRST_WINDOW = 1 << 12
_MAX_WINDOW = 1 << 22


@dataclass(frozen=True, slots=True)
class Grammar:
    """What ends a record in one text format."""

    quote: int | None = QUOTE
    """The quote byte; None when every newline ends a record (JSON lines)."""
    delimiter: int = 0x2C
    """The field delimiter (a quote run after it opens a field)."""
    cr: bool = True
    """A lone ``\\r`` ends a record (CSV/TSV, as pyarrow reads them)."""
    escape: int | None = None
    """The escape byte: the byte after it is literal (a quote, delimiter or line end it
    escapes does nothing), inside quotes and outside, as pyarrow's parser reads it. Whether a
    byte is escaped depends only on the run of escape bytes before it, so it is settled
    locally and the quote-state `Transfer` model still holds."""


CSV = Grammar()
LINES = Grammar(quote=None, cr=False)


@dataclass(frozen=True, slots=True)
class Transfer:
    """What a stretch of text does to the quote state: ``state -> value`` after a reset,
    ``state -> state ^ value`` without one."""

    reset: bool = False
    value: int = 0

    def apply(self, state: int) -> int:
        return self.value if self.reset else state ^ self.value

    def then(self, later: Transfer) -> Transfer:
        """This stretch followed by ``later``."""
        if later.reset:
            return later
        return Transfer(self.reset, self.value ^ later.value)


IDENTITY = Transfer()


def count_byte(buf: Buffer, char: bytes, start: int = 0, end: int | None = None) -> int:
    """How often the one-byte ``char`` occurs in ``buf[start:end]``.

    ``bytes.count`` walks byte by byte (about 1.5 GB/s); ``find`` is a SIMD ``memchr`` that
    settles the common case, a file without quotes, and numpy counts the rest in cache-sized
    slices (about 10 GB/s).
    """
    end = len(buf) if end is None else min(end, len(buf))
    first = buf.find(char, start, end) if hasattr(buf, "find") else start
    if first < 0 or start >= end:
        return 0
    arr = np.frombuffer(buf, np.uint8)
    value = char[0]
    return sum(int(np.count_nonzero(arr[at:min(at + _COUNT_SLICE, end)] == value))
               for at in range(max(start, first), end, _COUNT_SLICE))


def _searchable(buf: Buffer) -> tuple[Any, int] | None:
    """An object with ``find``/``rfind`` (a SIMD ``memchr``) over ``buf``'s bytes, and where
    ``buf`` starts in it; None when there is none.

    A memoryview has neither method, but the object it views (the mmap a chunk is read into,
    bytes, a bytearray) has both: a slice of it is found by its address.
    """
    if hasattr(buf, "find"):
        return buf, 0
    base = getattr(buf, "obj", None)
    if base is None or not hasattr(base, "rfind") or not buf.c_contiguous or buf.itemsize != 1:
        return None
    at = (np.frombuffer(buf, np.uint8).ctypes.data
          - np.frombuffer(base, np.uint8).ctypes.data) if len(buf) else 0
    if not 0 <= at <= len(base) - len(buf):
        return None
    return base, at


def _has(buf: Buffer, byte: int, start: int, end: int) -> bool:
    if start >= end:
        return False
    found = _searchable(buf)
    if found is not None:
        base, at = found
        return base.find(bytes((byte,)), at + start, at + end) >= 0
    return bool(np.any(np.frombuffer(buf, np.uint8)[start:end] == byte))


def _find(buf: Buffer, byte: bytes, start: int, end: int) -> int:
    """``buf.find`` for one byte, also on a memoryview (which has no ``find``)."""
    found = _searchable(buf)
    if found is not None:
        base, at = found
        hit = base.find(byte, at + start, at + end)
        return hit - at if hit >= 0 else -1
    arr = np.frombuffer(buf, np.uint8)
    lo, width = start, _FIRST_WINDOW
    while lo < end:
        hi = min(end, lo + width)
        hit = np.flatnonzero(arr[lo:hi] == byte[0])
        if hit.size:
            return lo + int(hit[0])
        lo, width = hi, min(width * 4, _MAX_WINDOW)
    return -1


def _rfind(buf: Buffer, byte: bytes, start: int, end: int) -> int:
    """``buf.rfind`` for one byte, also on a memoryview."""
    found = _searchable(buf)
    if found is not None:
        base, at = found
        hit = base.rfind(byte, at + start, at + end)
        return hit - at if hit >= 0 else -1
    arr = np.frombuffer(buf, np.uint8)
    hi, width = end, _FIRST_WINDOW
    while hi > start:
        lo = max(start, hi - width)
        hit = np.flatnonzero(arr[lo:hi] == byte[0])
        if hit.size:
            return lo + int(hit[-1])
        hi, width = lo, min(width * 4, _MAX_WINDOW)
    return -1


def has_byte(buf: Buffer, byte: int, start: int = 0, end: int | None = None) -> bool:
    """Whether ``buf[start:end]`` holds ``byte`` (a ``memchr``, also on a memoryview)."""
    return _has(buf, byte, start, len(buf) if end is None else min(end, len(buf)))


def _escaped(arr: np.ndarray, lo: int, hi: int, escape: int) -> np.ndarray:
    """Whether each byte of ``arr[lo:hi]`` is escaped (follows an odd run of escape bytes).

    A run crossing ``lo`` is counted whole (from the buffer's start at most: a run reaching
    position 0 is taken to start there).
    """
    base = lo
    step = 64
    while base > 0:  # back to the first byte of the escape run ending at lo - 1
        a = max(0, base - step)
        other = np.flatnonzero(arr[a:base] != escape)
        if other.size:
            base = a + int(other[-1]) + 1
            break
        base, step = a, step * 16
    e = arr[base:hi] == escape
    if not e.any():
        return np.zeros(hi - lo, bool)
    idx = np.arange(e.size)
    last_other = np.maximum.accumulate(np.where(e, -1, idx))
    escaping = e & (((idx - last_other) & 1) == 1)  # odd position within the run, 1-based
    out = np.zeros(e.size, bool)
    out[1:] = escaping[:-1]
    return out[lo - base:]


def _escapes(buf: Buffer, grammar: Grammar, start: int, end: int) -> bool:
    """Does ``buf[start:end]`` hold an escape byte (or follow one)?"""
    if grammar.escape is None:
        return False
    return _has(buf, grammar.escape, max(start - 1, 0), end)


def _run_end(arr: np.ndarray, p: int, end: int, quote: int) -> int:
    """First position at or after ``p`` (before ``end``) that is not a quote, else ``end``."""
    step = 256
    while p < end:
        window = arr[p:min(end, p + step)] != quote
        if window.any():
            return p + int(window.argmax())
        p += len(window)
        step = min(step * 16, _MAX_WINDOW)
    return end


def _runs(arr: np.ndarray, lo: int, hi: int, end: int, grammar: Grammar
          ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Quote runs starting in ``[lo, hi)``: (start positions, kinds, open).

    Kinds: 0 no effect, 1 toggle, 2 reset. A run starting before ``lo`` is not one of them
    (its first quote is, and its length is counted whole there). ``open`` is True when the
    last run reaches ``end``: it may go on beyond the data, so its kind is not known yet.
    Position 0 of the buffer is taken as a record start.
    """
    quote = grammar.quote
    q = np.flatnonzero(arr[lo:hi] == quote)
    if not q.size:
        return q, q, False
    q += lo
    esc = None
    if grammar.escape is not None:
        from_ = max(lo - 1, 0)  # the byte before a run decides what the run does
        esc = _escaped(arr, from_, hi, grammar.escape)
        q = q[~esc[q - from_]]
        if not q.size:
            return q, q, False
    prev = np.empty(q.size, np.uint8)
    if q[0] == 0:
        prev[0] = NEWLINE
        prev[1:] = arr[q[1:] - 1]
    else:
        prev[:] = arr[q - 1]
    first = prev != quote
    prev_escaped = None
    if esc is not None:
        prev_escaped = np.zeros(q.size, bool)
        inside = q - 1 >= from_
        prev_escaped[inside] = esc[q[inside] - 1 - from_]
        first |= prev_escaped  # after an escaped quote a new run starts
    ids = np.cumsum(first) - 1  # -1: the quotes continuing a run from before lo
    starts = q[first]
    if not starts.size:
        return starts, starts, False
    lengths = np.bincount(ids[ids >= 0], minlength=starts.size)
    is_open = False
    if q[-1] == hi - 1:  # the last run may go on past the window
        stop = _run_end(arr, hi, end, quote)
        lengths[-1] += stop - hi
        is_open = stop >= end
    before = prev[first]
    opens = (before == grammar.delimiter) | (before == NEWLINE) | (before == CR)
    if prev_escaped is not None:
        opens &= ~prev_escaped[first]  # an escaped delimiter or line end starts no field
    kinds = np.where(lengths & 1, np.where(opens, 1, 2), 0).astype(np.int8)
    return starts, kinds, is_open


def _kinds_transfer(kinds: np.ndarray) -> Transfer:
    resets = np.flatnonzero(kinds == 2)
    if resets.size:
        return Transfer(True, int(np.count_nonzero(kinds[resets[-1] + 1:] == 1)) & 1)
    return Transfer(False, int(np.count_nonzero(kinds == 1)) & 1)


def transfer(buf: Buffer, lo: int, hi: int, grammar: Grammar = CSV,
             end: int | None = None, final: bool = False) -> Transfer | None:
    """The `Transfer` of the quote runs starting in ``buf[lo:hi]``.

    None when a run reaches ``end`` (where the data read so far ends; default the buffer's
    end) and ``final`` does not say that is the end of the file: the run may be longer than
    it looks. Works backwards from ``hi``: the answer is settled at the last reset.
    """
    end = len(buf) if end is None else end
    if grammar.quote is None or not _has(buf, grammar.quote, lo, hi):
        return IDENTITY
    arr = np.frombuffer(buf, np.uint8)
    flips = 0
    b, width = hi, 1 << 16
    while b > lo:
        a = max(lo, b - width)
        _, kinds, is_open = _runs(arr, a, b, end, grammar)
        if is_open and not final:
            return None
        part = _kinds_transfer(kinds)
        if part.reset:
            return Transfer(True, part.value ^ flips)
        flips ^= part.value
        b, width = a, min(width * 4, _MAX_WINDOW)
    return Transfer(False, flips)


def _line_ends(arr: np.ndarray, lo: int, hi: int, end: int, final: bool, cr: bool,
               escape: int | None = None) -> np.ndarray:
    """Positions in ``[lo, hi)`` that end a line (quotes aside), sorted."""
    ends = _raw_line_ends(arr, lo, hi, end, final, cr)
    if escape is not None and ends.size:
        ends = ends[~_escaped(arr, lo, hi, escape)[ends - lo]]
    return ends


def _raw_line_ends(arr: np.ndarray, lo: int, hi: int, end: int, final: bool, cr: bool
                   ) -> np.ndarray:
    seg = arr[lo:hi]
    ends = np.flatnonzero(seg == NEWLINE)
    if not cr:
        return ends + lo
    crs = np.flatnonzero(seg == CR)
    if crs.size:
        crs += lo
        nxt = crs + 1
        inside = nxt < end
        lone = np.zeros(crs.size, bool)
        lone[inside] = arr[nxt[inside]] != NEWLINE
        if final:
            lone[~inside] = True  # a CR as the file's last byte ends its last record
        ends = np.union1d(ends + lo, crs[lone])
        return ends
    return ends + lo


def record_ends(buf: Buffer, lo: int, hi: int, state: int, grammar: Grammar = CSV,
                end: int | None = None, final: bool = False) -> tuple[np.ndarray, int | None]:
    """Record ends in ``buf[lo:hi]`` given the quote ``state`` at ``lo``, and the state at ``hi``.

    ``end`` is where the data read so far ends (default: the buffer's end) and ``final`` says
    whether that is the end of the file: a ``\\r`` right at ``end`` ends a record only then
    (it may be the first half of ``\\r\\n``). The state at ``hi`` is None when a quote run
    reaches ``end`` and the data is not final.
    """
    end = len(buf) if end is None else end
    hi = min(hi, end)
    arr = np.frombuffer(buf, np.uint8)
    lines = _line_ends(arr, lo, hi, end, final, grammar.cr, grammar.escape)
    if grammar.quote is None:
        return lines, state
    starts, kinds, is_open = _runs(arr, lo, hi, end, grammar)
    after: int | None = _kinds_transfer(kinds).apply(state)
    if is_open and not final:
        after = None
    if not starts.size:
        return (lines if state == OUT else lines[:0]), after
    if not lines.size:
        return lines, after
    # The state after each run: toggles counted since the last reset (or since lo).
    toggles = np.cumsum(kinds == 1)
    idx = np.arange(kinds.size)
    last_reset = np.maximum.accumulate(np.where(kinds == 2, idx, -1))
    base = np.where(last_reset >= 0, toggles[np.maximum(last_reset, 0)], -state)
    run_state = (toggles - base) & 1
    before = np.searchsorted(starts, lines)  # runs starting before each line end
    line_state = np.where(before > 0, run_state[np.maximum(before - 1, 0)], state)
    return lines[line_state == OUT], after


def _next_line_end(buf: Buffer, pos: int, end: int, final: bool, cr: bool) -> int:
    """The first line end at or after ``pos`` (quotes aside), -1 if none is known yet."""
    nl = _find(buf, b"\n", pos, end)
    if not cr:
        return nl
    c = _find(buf, b"\r", pos, nl if nl >= 0 else end)
    if c < 0:
        return nl
    if c + 1 < end:
        return c if buf[c + 1] != NEWLINE else c + 1
    return c if final else -1


def first_record_end(buf: Buffer, start: int, state: int = OUT, grammar: Grammar = CSV,
                     end: int | None = None, final: bool = True) -> int:
    """Index of the first record end in ``buf[start:end]`` given the quote ``state`` at
    ``start``, or -1 if none (or none known before the data ends)."""
    end = len(buf) if end is None else end
    if state == OUT or grammar.quote is None:
        nl = _next_line_end(buf, start, end, final, grammar.cr)
        stop = nl + 1 if nl >= 0 else end
        if grammar.quote is None or not (_has(buf, grammar.quote, start, stop)
                                         or _escapes(buf, grammar, start, stop)):
            return nl
    pos, width = start, _FIRST_WINDOW
    while pos < end:
        hi = min(end, pos + width)
        ends, after = record_ends(buf, pos, hi, state, grammar, end, final)
        if ends.size:
            return int(ends[0])
        if after is None:
            return -1
        pos, state, width = hi, after, min(width * 4, _MAX_WINDOW)
    return -1


def last_record_end(buf: Buffer, grammar: Grammar = CSV, end: int | None = None,
                    final: bool = False, start: int = 0) -> int:
    """Index of the last record end in ``buf[start:end]``, -1 if none.

    ``buf[start]`` must be a record start. Looks at the tail first: the state there comes
    from a backward `transfer` that stops at the last reset.
    """
    end = len(buf) if end is None else end
    if grammar.quote is None or not (_has(buf, grammar.quote, start, end)
                                     or _escapes(buf, grammar, start, end)):
        return _prev_line_end(buf, start, end, final, grammar.cr)
    width = 1 << 16
    while True:
        a = max(start, end - width)
        head = transfer(buf, start, a, grammar, end, final) if a > start else IDENTITY
        if head is not None:
            ends, _ = record_ends(buf, a, end, head.apply(OUT), grammar, end, final)
            if ends.size:
                return int(ends[-1])
        if a == start:
            return -1
        width *= 4


def _prev_line_end(buf: Buffer, start: int, end: int, final: bool, cr: bool) -> int:
    """The last line end in ``buf[start:end]`` (quotes aside), -1 if none."""
    nl = _rfind(buf, b"\n", start, end)
    if not cr:
        return nl
    c = _rfind(buf, b"\r", max(start, nl + 1), end)
    if c < 0:
        return nl
    if c + 1 < end or final:
        return c  # not followed by "\n": every "\n" is before it
    c2 = _rfind(buf, b"\r", max(start, nl + 1), c)  # the last byte may be half of "\r\n"
    return c2 if c2 >= 0 else nl


def record_starts_csv(buf: Buffer, grammar: Grammar = CSV) -> np.ndarray:
    """Offsets of every record start in ``buf`` (which starts at a record start and ends at a
    record end or the end of the file) plus len(buf). For the error path: parse pieces."""
    size = len(buf)
    found = [np.zeros(1, np.int64)]
    state: int | None = OUT
    for lo in range(0, size, _COUNT_SLICE):
        ends, state = record_ends(buf, lo, lo + _COUNT_SLICE, state, grammar, size, True)
        found.append(ends.astype(np.int64) + 1)
        if state is None:  # only when a quote run reaches the end: nothing follows
            break
    starts = np.concatenate(found)
    starts = starts[starts < size]
    return np.concatenate((starts, [size])).astype(np.int64)


def guess_parity(buf: Buffer, limit: int = 1 << 16, quote: int = QUOTE) -> int:
    """Best guess whether ``buf[0]`` lies inside a quoted field (1) or not (0).

    Looks at the first unambiguous quote: one preceded by a field start and followed by field
    text opens a field (so we were outside); one followed by a field end and preceded by field
    text closes one (so we were inside). A wrong guess costs a re-run, never a wrong row.
    """
    end = min(len(buf), limit)
    pos = 0
    q = bytes([quote])
    while True:
        p = buf.find(q, pos, end)
        if p < 0 or p + 1 >= end:
            return 0
        nxt = buf[p + 1]
        if nxt == quote:  # an escaped quote or an empty field: says nothing, skip both
            pos = p + 2
            continue
        prev = buf[p - 1] if p > 0 else None
        opens = prev is None or prev in _FIELD_START
        closes = nxt in _FIELD_START
        if opens and not closes:
            return 0
        if closes and not opens:
            return 1
        pos = p + 1


def record_starts_lines(buf: bytes) -> np.ndarray:
    """Offsets of every line start in ``buf`` plus len(buf) (JSON lines: a newline always ends)."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    starts = np.flatnonzero(arr == NEWLINE) + 1
    starts = starts[starts < len(buf)]
    return np.concatenate(([0], starts, [len(buf)])).astype(np.int64)

"""A small ISO base media file format parser (MP4, MOV, M4A, 3GP): boxes and sample tables.

Box = u32 size + 4CC type; size 1 -> a u64 size follows, size 0 -> the box runs to the end of its
parent. Only index boxes are read (``moov``, ``moof``); ``mdat`` payloads are skipped. Sample
tables are expanded with numpy (repeat/cumsum). Every count taken from the file is checked
before it sizes an allocation: ``entry_count * entry_size`` must fit the box payload, run-length
counts must add up to the sample count, and the sample count itself is capped, so a hostile
file costs bounded time and memory and ends in a `BoxError` that names the byte offset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from readers.errors import BadFile

MAX_DEPTH = 16
MAX_BOXES = 1_000_000
_CONTAINERS = {"moov", "trak", "mdia", "minf", "stbl", "edts", "mvex", "moof", "traf", "dinf"}


class BoxError(BadFile):
    """The file breaks the box rules at ``offset`` (a byte offset into the file)."""


@dataclass(frozen=True, slots=True)
class Box:
    type: str
    offset: int
    """Absolute byte offset of the box header in the file."""
    size: int
    header: int

    @property
    def end(self) -> int:
        return self.offset + self.size


def parse_header(data: bytes, pos: int, end: int, base: int) -> Box:
    """The box at ``data[pos:]``, inside a parent ending at ``end`` (``base`` = file offset)."""
    at = base + pos
    if end - pos < 8:
        raise BoxError(f"{end - pos} stray bytes at byte {at}: too short for a box header", at)
    size, raw = struct.unpack_from(">I4s", data, pos)
    kind, header = raw.decode("latin-1"), 8
    if size == 1:
        if end - pos < 16:
            raise BoxError(f"box '{kind}' at byte {at}: 64-bit size cut off", at)
        size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
    elif size == 0:
        size = end - pos
    if kind == "uuid":
        header += 16
    if size < header:
        raise BoxError(f"box '{kind}' at byte {at} declares {size} bytes, less than its "
                       f"{header}-byte header", at)
    if pos + size > end:
        raise BoxError(f"box '{kind}' at byte {at} declares {size} bytes but its parent (or the "
                       f"file) ends {end - pos} bytes later", at)
    return Box(kind, at, size, header)


class TooManyBoxes(BoxError):
    """The box budget ran out: the file is hostile or absurd; stop parsing it."""


@dataclass(slots=True)
class Budget:
    """Caps the boxes visited in one parse (a file of millions of tiny boxes is hostile)."""

    left: int = MAX_BOXES

    def take(self, at: int) -> None:
        self.left -= 1
        if self.left < 0:
            raise TooManyBoxes(f"more than {MAX_BOXES} boxes (at byte {at})", at)


def children(data: bytes, start: int, end: int, base: int, budget: Budget,
             problems: list | None = None) -> list[Box]:
    """The boxes in ``data[start:end]``; with ``problems``, a bad box ends the list instead of
    raising (its siblings before it are kept)."""
    out, pos = [], start
    while pos < end:
        try:
            box = parse_header(data, pos, end, base)
        except BoxError as exc:
            if problems is None:
                raise
            problems.append(("BadBox", str(exc), exc.offset))
            break
        budget.take(box.offset)
        out.append(box)
        pos += box.size
    return out


@dataclass(slots=True)
class TopLevel:
    """Where the index boxes are, from box headers alone."""

    ftyp: Box | None = None
    moov: Box | None = None
    moofs: list[Box] = field(default_factory=list)
    mdat_bytes: int = 0
    mdat_offset: int | None = None
    box_count: int = 0
    problems: list[tuple[str, str, int]] = field(default_factory=list)


def walk_top(read: Callable[[int, int], bytes], size: int) -> TopLevel:
    """Top-level box headers from byte 0 (payloads are skipped); stops at the first bad box."""
    top, pos, budget = TopLevel(), 0, Budget()
    while pos < size:
        head = read(pos, min(pos + 16, size))
        head += b"\0" * (16 - len(head))
        try:
            budget.take(pos)
            box = parse_header(head, 0, size - pos, pos)
        except BoxError as exc:
            try:  # a box running past the end of the file: name what was cut
                box = parse_header(head, 0, 1 << 62, pos)
            except BoxError:
                top.problems.append(("BadBox", str(exc), pos))
                break
            top.problems.append(("TruncatedFile", f"box '{box.type}' at byte {pos} declares "
                                 f"{box.size} bytes but the file ends {size - pos} bytes later",
                                 pos))
            if box.type == "moov" and top.moov is None:
                top.moov = box
            if box.type == "mdat":
                top.mdat_bytes += max(0, size - pos - box.header)
                top.mdat_offset = pos if top.mdat_offset is None else top.mdat_offset
            break
        top.box_count += 1
        if box.type == "ftyp" and top.ftyp is None:
            top.ftyp = box
        elif box.type == "moov" and top.moov is None:
            top.moov = box
        elif box.type == "moof":
            top.moofs.append(box)
        elif box.type == "mdat":
            top.mdat_bytes += box.size - box.header
            top.mdat_offset = pos if top.mdat_offset is None else top.mdat_offset
        pos = box.end
    return top


def full_box(data: bytes, box: Box, base: int, need: int) -> tuple[int, int, int]:
    """(version, flags, payload start) of a full box holding at least ``need`` more bytes."""
    start = box.offset - base + box.header
    if box.size - box.header < 4 + need:
        raise BoxError(f"box '{box.type}' at byte {box.offset} is too short "
                       f"({box.size} bytes)", box.offset)
    word = struct.unpack_from(">I", data, start)[0]
    return word >> 24, word & 0xFFFFFF, start + 4


def entries(data: bytes, box: Box, base: int, dtype: str | list, skip: int = 0) -> np.ndarray:
    """The entry table of a full box (``entry_count`` u32 after ``skip`` bytes), bounds-checked."""
    _, _, pos = full_box(data, box, base, skip + 4)
    count = struct.unpack_from(">I", data, pos + skip)[0]
    dt = np.dtype(dtype)
    room = box.end - base - (pos + skip + 4)
    if count * dt.itemsize > room:
        raise BoxError(f"box '{box.type}' at byte {box.offset} declares {count} entries "
                       f"({count * dt.itemsize} bytes) but holds {room} bytes", box.offset)
    return np.frombuffer(data, dt, count, pos + skip + 4)


@dataclass(slots=True)
class Track:
    track_id: int
    offset: int
    handler: str = ""
    codec: str = ""
    timescale: int = 0
    duration: int = 0
    width: int | None = None
    height: int | None = None
    channels: int | None = None
    sample_rate: float | None = None
    sample_count: int = 0
    boxes: dict[str, Box] = field(default_factory=dict)
    edit_shift: int = 0
    """Ticks added to every time: a leading empty edit minus the first edit's media time."""
    edit_note: str | None = None
    edits: list[tuple[int, int, int]] = field(default_factory=list)
    """The edit list as stored (first `MAX_EDITS`): segment duration in movie ticks, media time
    in track ticks (-1: an empty edit), rate (16.16 fixed point)."""
    edit_count: int = 0
    presented: tuple[int, int] | None = None
    """Track ticks (after `edit_shift`) of the presentation window the first edit plays."""


@dataclass(slots=True)
class Movie:
    timescale: int = 0
    duration: int = 0
    tracks: list[Track] = field(default_factory=list)
    trex: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    """track id -> (sample description index, default duration, size, flags)."""
    fragmented: bool = False
    problems: list[tuple[str, str, int | None]] = field(default_factory=list)
    """Boxes inside ``moov`` that could not be parsed (their tracks may still be usable)."""


def parse_moov(data: bytes, base: int) -> Movie:
    """Track headers and sample-table box locations from the ``moov`` box bytes.

    A box that does not parse is noted in ``Movie.problems`` and skipped with the rest of its
    parent; running out of the box budget aborts the whole parse.
    """
    movie, budget = Movie(), Budget()

    def visit(box: Box, depth: int, track: Track | None) -> None:
        if depth > MAX_DEPTH:
            raise BoxError(f"boxes nested deeper than {MAX_DEPTH} at byte {box.offset}",
                           box.offset)
        start = box.offset - base + box.header
        for child in children(data, start, box.end - base, base, budget, movie.problems):
            try:
                if child.type == "trak":
                    new = Track(0, child.offset)
                    visit(child, depth + 1, new)
                    movie.tracks.append(new)
                elif child.type in _CONTAINERS:
                    visit(child, depth + 1, track)
                elif child.type in ("mvhd", "trex"):
                    _movie_box(data, base, child, movie)
                elif track is not None and child.type not in track.boxes:
                    # The first box of a type wins: MOV's minf holds a second (data) hdlr.
                    track.boxes[child.type] = child
                    _track_box(data, base, child, track)
            except TooManyBoxes:
                raise
            except (BoxError, struct.error) as exc:
                at = getattr(exc, "offset", None) or child.offset
                movie.problems.append(("BadBox", f"box '{child.type}' at byte {child.offset}: "
                                       f"{exc}", at))

    visit(parse_header(data, 0, len(data), base), 0, None)
    return movie


def _movie_box(data: bytes, base: int, box: Box, movie: Movie) -> None:
    if box.type == "mvhd":
        version, _, pos = full_box(data, box, base, 20)
        fmt = ">QQIQ" if version == 1 else ">IIII"
        full_box(data, box, base, struct.calcsize(fmt))
        _, _, movie.timescale, movie.duration = struct.unpack_from(fmt, data, pos)
    else:
        _, _, pos = full_box(data, box, base, 20)
        tid, *defaults = struct.unpack_from(">5I", data, pos)
        movie.trex[tid] = tuple(defaults)
        movie.fragmented = True


def _track_box(data: bytes, base: int, box: Box, track: Track) -> None:
    if box.type == "tkhd":
        version, _, pos = full_box(data, box, base, 12)
        full_box(data, box, base, 20 if version == 1 else 12)
        track.track_id = struct.unpack_from(">I", data, pos + (16 if version == 1 else 8))[0]
    elif box.type == "mdhd":
        version, _, pos = full_box(data, box, base, 20)
        fmt = ">QQIQ" if version == 1 else ">IIII"
        full_box(data, box, base, struct.calcsize(fmt))
        _, _, track.timescale, track.duration = struct.unpack_from(fmt, data, pos)
    elif box.type == "hdlr":
        _, _, pos = full_box(data, box, base, 8)
        track.handler = data[pos + 4: pos + 8].decode("latin-1")
    elif box.type == "stsd":
        _, _, pos = full_box(data, box, base, 4)
        if struct.unpack_from(">I", data, pos)[0] and box.end - base - pos >= 12:
            entry = parse_header(data, pos + 4, box.end - base, base)
            track.codec = entry.type
            at = entry.offset - base + 8
            if track.handler == "vide" and entry.size >= 36:
                track.width, track.height = struct.unpack_from(">HH", data, at + 24)
            elif track.handler == "soun" and entry.size >= 36:
                track.channels = struct.unpack_from(">H", data, at + 16)[0]
                track.sample_rate = struct.unpack_from(">I", data, at + 24)[0] / 65536
    elif box.type in ("stsz", "stz2"):
        _, _, pos = full_box(data, box, base, 8)
        track.sample_count = struct.unpack_from(">I", data, pos + 4)[0]


#: Edit list entries kept for the catalog (the rest are counted).
MAX_EDITS = 100


def edit_shift(data: bytes, base: int, track: Track, movie_timescale: int) -> None:
    """Map media time to movie time through the first non-empty edit (ISO 14496-12 8.6.6).

    Every time is shifted by the leading empty edits minus that edit's media time, so the
    sample composed at the edit's media time is presented at the edit's start. Samples are
    never dropped: `Track.presented` is the window the edit plays, and samples outside it
    (decoder pre-roll before, trailing media after) keep their shifted times.
    """
    box = track.boxes.get("elst")
    if box is None:
        return
    version, _, _ = full_box(data, box, base, 4)
    dtype = ([("dur", ">u8"), ("time", ">i8"), ("rate", ">i4")] if version == 1 else
             [("dur", ">u4"), ("time", ">i4"), ("rate", ">i4")])
    table = entries(data, box, base, dtype)
    track.edit_count = len(table)
    track.edits = [tuple(int(v) for v in row) for row in table[:MAX_EDITS].tolist()]
    scale = max(movie_timescale, 1)
    empty, segments = 0, 0
    for dur, time, _ in table[:1000].tolist():
        if time == -1:
            empty += dur if segments == 0 else 0
        else:
            if segments == 0:
                start = (empty * track.timescale + scale // 2) // scale
                track.edit_shift = start - time
                length = (dur * track.timescale + scale // 2) // scale
                track.presented = (start, start + length)
            segments += 1
    if abs(track.edit_shift) >= 1 << 53:
        raise BoxError(f"elst at byte {box.offset}: edit shift of {track.edit_shift} ticks is "
                       f"absurd", box.offset)
    if segments > 1:
        track.edit_note = f"edit list has {segments} segments: only the first is applied"


@dataclass(slots=True)
class Samples:
    """Per-sample arrays of one track (times in the track's timescale ticks)."""

    offset: np.ndarray
    size: np.ndarray
    dts: np.ndarray
    cto: np.ndarray
    duration: np.ndarray
    key: np.ndarray

    def __post_init__(self) -> None:
        lengths = {len(a) for a in (self.offset, self.size, self.dts, self.cto, self.duration,
                                    self.key)}
        if len(lengths) != 1:  # an internal slip must not become misaligned rows
            raise BoxError(f"sample arrays disagree in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.size)


def _clip(counts: np.ndarray, n: int, what: str, box: Box) -> np.ndarray:
    """Run-length ``counts`` trimmed to cover exactly ``n`` samples (fewer is an error)."""
    counts = counts.astype(np.int64)
    cum = np.cumsum(counts)
    total = int(cum[-1]) if len(cum) else 0
    if total < n:
        raise BoxError(f"{what} at byte {box.offset} covers {total} samples, the track has {n}",
                       box.offset)
    if n == 0:
        return counts[:0]
    k = int(np.searchsorted(cum, n))
    counts = counts[: k + 1].copy()
    counts[k] -= int(cum[k]) - n
    return counts


#: Raw audio (one tick per sample, constant size) is read in packets of this many samples.
PCM_PACKET = 1024


def _expand(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Run-length decode; ``counts`` may be shorter than ``values`` (trimmed by `_clip`)."""
    return np.repeat(values[: len(counts)].astype(np.int64), counts)


def track_samples(data: bytes, base: int, track: Track, limit: int) -> Samples:
    """Expand a track's ``stbl`` into per-sample arrays, every count checked first.

    Raw audio tracks (one stts entry of duration 1 and a constant stsz size) are grouped into
    packets of up to `PCM_PACKET` samples within each chunk, as ffmpeg does: one row per PCM
    frame would be 48,000 rows per second.
    """
    b, where = track.boxes, f"track {track.track_id} (trak at byte {track.offset})"
    size_box = b.get("stsz") or b.get("stz2")
    if size_box is None or "stts" not in b or "stsc" not in b or not (
            "stco" in b or "co64" in b):
        raise BoxError(f"{where}: sample table misses stsz/stz2, stts, stsc or stco/co64",
                       track.offset)
    n = track.sample_count
    _, _, pos = full_box(data, size_box, base, 8)
    fixed = struct.unpack_from(">I", data, pos)[0] if size_box.type == "stsz" else 0
    stts = entries(data, b["stts"], base, [("n", ">u4"), ("d", ">u4")])
    chunk_box = b.get("co64") or b["stco"]
    chunk_off = entries(data, chunk_box, base, ">u8" if chunk_box.type == "co64" else ">u4")
    pcm = track.handler == "soun" and fixed and len(stts) == 1 and stts["d"][0] == 1
    if not pcm:
        if n > limit:
            raise BoxError(f"{where}: {n} samples declared at byte {size_box.offset} exceed "
                           f"the limit of {limit}", size_box.offset)
        sizes = _sizes(data, base, size_box, n, fixed, where)
    per_chunk = _per_chunk(data, base, b["stsc"], len(chunk_off), n, where)
    chunk_off = chunk_off[: len(per_chunk)].astype(np.int64)
    if pcm:
        return _pcm_packets(per_chunk, chunk_off, fixed, track.edit_shift, limit, size_box)
    duration = _expand(stts["d"], _clip(stts["n"], n, "stts", b["stts"]))
    dts = np.cumsum(duration) - duration
    cto = np.zeros(n, np.int64)
    if "ctts" in b:
        ctts = entries(data, b["ctts"], base, [("n", ">u4"), ("o", ">i4")])
        cto = _expand(ctts["o"], _clip(ctts["n"], n, "ctts", b["ctts"]))
    key = np.ones(n, bool)
    if "stss" in b:
        sync = entries(data, b["stss"], base, ">u4").astype(np.int64) - 1
        key[:] = False
        key[sync[(sync >= 0) & (sync < n)]] = True
    starts = np.cumsum(sizes) - sizes
    first_sample = np.cumsum(per_chunk) - per_chunk
    starts_ext = np.append(starts, int(sizes.sum()))
    offset = np.repeat(chunk_off - starts_ext[first_sample], per_chunk) + starts
    return Samples(offset, sizes, dts + track.edit_shift, cto, duration, key)


def _sizes(data: bytes, base: int, box: Box, n: int, fixed: int, where: str) -> np.ndarray:
    if box.type == "stsz":
        if fixed:
            return np.full(n, fixed, np.int64)
        sizes = entries(data, box, base, ">u4", 4).astype(np.int64)
    else:
        _, _, pos = full_box(data, box, base, 8)
        bits = data[pos + 3]
        if bits not in (4, 8, 16) or n * bits > 8 * (box.end - base - pos - 8):
            raise BoxError(f"{where}: stz2 at byte {box.offset} has field size {bits} for {n} "
                           f"samples in {box.size} bytes", box.offset)
        wide = bits == 16
        raw = np.frombuffer(data, ">u2" if wide else np.uint8,
                            -(-n * bits // 8) // (2 if wide else 1), pos + 8).astype(np.int64)
        sizes = np.stack([raw >> 4, raw & 15], 1).ravel() if bits == 4 else raw
    if len(sizes) < n:
        raise BoxError(f"{where}: {box.type} at byte {box.offset} lists {len(sizes)} sizes for "
                       f"{n} samples", box.offset)
    return sizes[:n]


def _per_chunk(data: bytes, base: int, box: Box, nchunks: int, n: int, where: str
               ) -> np.ndarray:
    """Samples in each chunk (stsc runs expanded over the stco chunks), covering ``n``."""
    stsc = entries(data, box, base, [("first", ">u4"), ("n", ">u4"), ("sd", ">u4")])
    first = stsc["first"].astype(np.int64)
    keep = first <= nchunks  # runs starting past the last chunk describe nothing
    first, per = first[keep], stsc["n"][keep].astype(np.int64)
    if len(first) and (first[0] < 1 or np.any(np.diff(first) <= 0)):
        raise BoxError(f"{where}: stsc at byte {box.offset} has chunk numbers out of order",
                       box.offset)
    runs = np.diff(np.append(first, nchunks + 1))  # sums to <= nchunks: bounded by stco
    lead = int(first[0]) - 1 if len(first) else nchunks
    return _clip(np.concatenate([np.zeros(lead, np.int64), np.repeat(per, runs)]), n, "stsc",
                 box)


def _pcm_packets(per_chunk: np.ndarray, chunk_off: np.ndarray, size: int, shift: int,
                 limit: int, box: Box) -> Samples:
    pieces = -(-per_chunk // PCM_PACKET)
    rows = int(pieces.sum())
    if rows > limit:
        raise BoxError(f"raw audio at byte {box.offset}: {rows} packets exceed the limit of "
                       f"{limit}", box.offset)
    chunk = np.repeat(np.arange(len(per_chunk)), pieces)
    j = np.arange(rows) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    count = np.minimum(PCM_PACKET, per_chunk[chunk] - PCM_PACKET * j)
    first = (np.cumsum(per_chunk) - per_chunk)[chunk] + PCM_PACKET * j
    return Samples(chunk_off[chunk] + PCM_PACKET * j * size, count * size, first + shift,
                   np.zeros(rows, np.int64), count, np.ones(rows, bool))

"""MP4/MOV reader (ISO base media file format): one row per media sample, codecs to the catalog.

Table ``samples``: ``track_id``, ``handler`` (vide, soun, ...), ``sample_index`` (0-based per
track, in decode order), ``byte_offset`` and ``size`` (where the sample's bytes sit in the
file), ``decode_time_s``, ``presentation_time_s`` (decode time plus the ctts/trun composition
offset), ``duration_s`` and ``is_keyframe`` (stss; every sample when stss is absent; sample
flags in fragments; audio always). Times are in seconds on the movie timeline of ISO 14496-12
(8.6.6): the track's first non-empty edit maps its media time to the movie time where it starts
(after any leading empty edits), and that one shift applies to every sample. Every sample the
file stores is a row, also those the edit does not play (decoder pre-roll before its window,
media after its end): the catalog gives each track's ``edit_list`` as stored and
``presented_s``, the window the edit plays, to filter on. Further segments of a multi-segment
edit list are listed, not applied (``note``). Against ``ffprobe -show_packets`` (pos, size, dts,
pts, key flag; tested on h264/aac, mpeg4, mjpeg, pcm, fragmented, faststart files and edit lists
from ``-ss``/``-t`` stream copies, ``-itsoffset`` and shortened edits) the rows match exactly
except where ffmpeg departs from the ISO mapping: it drops samples after an edit's end (up to
the next keyframe), when an edit starts mid-frame it shifts video once more so that its first
presented frame starts at 0 (a constant offset under one frame), and it rewrites the last
packet's duration to the edit's end; with negative composition offsets (ctts v1) it shifts dts
down (or, in fragments, pts up) by the largest negative offset while these columns keep the ISO
times; and ffprobe fills fragment packet durations from the codec frame size while
``duration_s`` is the trun duration. Raw PCM audio (one tick per sample, constant size) is
grouped into packets of up to 1024 samples per chunk as ffmpeg does, so ``sample_index``
counts packets there. Fragmented files (``moof``/``traf``/``trun`` with ``trex``/``tfhd``
defaults, ``tfdt``) are supported.

Only index boxes are read: ``moov`` (capped at 256 MiB) and every ``moof``; ``mdat`` payloads
never are. One chunk per file; it peaks at about 100 bytes per sample (192,376 samples: 16 MB
of numpy arrays, 35 ms), and a file may declare at most 2^24 samples (`MAX_SAMPLES`; a reader
option ``max_samples`` overrides it). Broken structure (a box size past its parent,
below its header, a table whose entry count exceeds its payload, counts that do not add up)
becomes an ``_errors`` row with the byte offset; the other tracks still load. No ``moov`` (or a
truncated one) fails the file.

Catalog metadata: ``major_brand``, ``minor_version``, ``compatible_brands``, ``timescale``,
``duration_s``, ``fragmented``, ``fragments``, ``faststart`` (moov before mdat), ``moov_offset``,
``moov_size``, ``mdat_bytes``, ``box_count``, ``tracks`` (track_id, handler, codec, timescale,
duration_s, sample_count, width, height, channels, sample_rate, edit_shift_s, edit_list
(duration_s, media_time_s: None for an empty edit, rate; the first 100), edit_count,
presented_s, note; width, height, channels and sample_rate as the sample entry declares them:
AAC keeps its real channel layout in ``esds``), ``errors`` (the first 100 problems, each also
an ``_errors`` row) and ``error_total``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from readers._isobmff import (
    Box,
    BoxError,
    Budget,
    Movie,
    Samples,
    children,
    edit_shift,
    full_box,
    parse_header,
    parse_moov,
    track_samples,
    walk_top,
)
from readers.base import ChunkContext, ChunkSpec, Description, Reader, Source
from readers.errors import ErrorCode
from readers.options import ReaderOptions

MAX_SAMPLES = 1 << 24


@dataclass(frozen=True, slots=True, kw_only=True)
class MP4Options(ReaderOptions):
    """Options of the MP4/MOV reader."""

    max_samples: int = MAX_SAMPLES
    """Samples a file may declare before it is refused (attacker-chosen counts)."""
MAX_MOOV_BYTES = 256 << 20
MAX_MOOF_BYTES = 64 << 20
TABLE = "samples"
SCHEMA = pa.schema([
    ("track_id", pa.int64()), ("handler", pa.string()), ("sample_index", pa.int64()),
    ("byte_offset", pa.int64()), ("size", pa.int64()), ("decode_time_s", pa.float64()),
    ("presentation_time_s", pa.float64()), ("duration_s", pa.float64()),
    ("is_keyframe", pa.bool_()),
])
_BOX_TYPES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"}
#: ISO BMFF brands of still images (HEIF/AVIF): not movies, leave them to an image reader.
_IMAGE_BRANDS = {b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis", b"heim", b"heis"}
_ROWS_PER_PIECE = 1 << 20


@dataclass(slots=True)
class MP4State:
    moov: Box
    moofs: list[Box] = field(default_factory=list)
    problems: list[tuple[str, str, int]] = field(default_factory=list)
    """Top-level problems found by `describe`, reported as ``_errors`` rows by the chunk."""


@dataclass(slots=True)
class Parsed:
    movie: Movie
    samples: dict[int, list[Samples]]
    problems: list[tuple[str, str, int | None]]


def _reader(f: Any, window: int = 64 << 10) -> Callable[[int, int], bytes]:
    """``read(a, b)`` on an open file; small reads come from a ``window`` (box headers while
    walking the top level); ``window=0`` reads exactly the bytes asked for."""
    cache = [0, b""]

    def read(a: int, b: int) -> bytes:
        if b - a > window // 4:
            f.seek(a)
            return f.read(b - a)
        start, buf = cache
        if not (start <= a and b <= start + len(buf)):
            f.seek(a)
            cache[:] = [a, f.read(window)]
            start, buf = cache
        return buf[a - start: b - start]
    return read


# --- fragments (moof/traf/trun) ---------------------------------------------------------------
@dataclass(slots=True)
class FragmentCursor:
    """Per-track state carried from one ``moof`` to the next."""

    next_dts: dict[int, int] = field(default_factory=dict)
    samples_left: int = 0


_TFHD_FIELDS = ((0x1, "base", ">Q"), (0x2, "sdi", ">I"), (0x8, "dur", ">I"),
                (0x10, "size", ">I"), (0x20, "flags", ">I"))


def parse_moof(data: bytes, base: int, movie: Movie, cursor: FragmentCursor
               ) -> list[tuple[int, Samples]]:
    """Samples of every ``traf``/``trun`` in one ``moof`` (``data`` holds the whole box)."""
    moof = parse_header(data, 0, len(data), base)
    budget, out = Budget(), []
    implicit = moof.offset
    tracks = {t.track_id: t for t in movie.tracks}
    for traf in children(data, moof.header, len(data), base, budget):
        if traf.type != "traf":
            continue
        kids = children(data, traf.offset - base + traf.header, traf.end - base, base, budget)
        tfhd = next((k for k in kids if k.type == "tfhd"), None)
        if tfhd is None:
            raise BoxError(f"traf at byte {traf.offset} has no tfhd", traf.offset)
        _, flags, pos = full_box(data, tfhd, base, 4)
        tid = struct.unpack_from(">I", data, pos)[0]
        if tid not in tracks:
            raise BoxError(f"tfhd at byte {tfhd.offset} names unknown track {tid}", tfhd.offset)
        _, dflt_dur, dflt_size, dflt_flags = movie.trex.get(tid, (1, 0, 0, 0))
        present = [(name, fmt) for bit, name, fmt in _TFHD_FIELDS if flags & bit]
        full_box(data, tfhd, base, 4 + sum(struct.calcsize(fmt) for _, fmt in present))
        values, pos = {}, pos + 4
        for name, fmt in present:
            values[name] = struct.unpack_from(fmt, data, pos)[0]
            pos += struct.calcsize(fmt)
        dflt_dur = values.get("dur", dflt_dur)
        dflt_size = values.get("size", dflt_size)
        dflt_flags = values.get("flags", dflt_flags)
        data_base = values.get("base", moof.offset if flags & 0x20000 else implicit)
        dts = cursor.next_dts.get(tid, 0)
        for k in kids:
            if k.type == "tfdt":
                version, _, p = full_box(data, k, base, 4)
                full_box(data, k, base, 8 if version == 1 else 4)
                dts = struct.unpack_from(">Q" if version == 1 else ">I", data, p)[0]
                if dts >= 1 << 62:
                    raise BoxError(f"tfdt at byte {k.offset}: decode time {dts} is absurd",
                                   k.offset)
        audio = tracks[tid].handler == "soun"
        run_start = data_base
        for k in (k for k in kids if k.type == "trun"):
            s, run_start = _trun(data, base, k, cursor, run_start, data_base, dts,
                                 (dflt_dur, dflt_size, dflt_flags), audio)
            dts += int(s.duration.sum())
            s.dts += tracks[tid].edit_shift
            out.append((tid, s))
            implicit = run_start
        cursor.next_dts[tid] = dts
    return out


def _trun(data: bytes, base: int, box: Box, cursor: FragmentCursor, run_start: int,
          data_base: int, dts: int, defaults: tuple[int, int, int], audio: bool
          ) -> tuple[Samples, int]:
    _, flags, pos = full_box(data, box, base, 4)
    full_box(data, box, base, 4 + 4 * bool(flags & 0x1) + 4 * bool(flags & 0x4))
    n = struct.unpack_from(">I", data, pos)[0]
    pos += 4
    start = run_start
    if flags & 0x1:
        start = data_base + struct.unpack_from(">i", data, pos)[0]
        pos += 4
    if not 0 <= start < 1 << 62:
        raise BoxError(f"trun at byte {box.offset}: data offset {start} is outside any file",
                       box.offset)
    first_flags = None
    if flags & 0x4:
        first_flags = struct.unpack_from(">I", data, pos)[0]
        pos += 4
    present = [(bit, name) for bit, name in ((0x100, "dur"), (0x200, "size"), (0x400, "flags"),
                                             (0x800, "cto")) if flags & bit]
    room = box.end - base - pos
    if n * 4 * len(present) > room or n > cursor.samples_left:
        raise BoxError(f"trun at byte {box.offset} declares {n} samples; it holds {room} bytes "
                       f"of entries and {cursor.samples_left} samples remain in the limit",
                       box.offset)
    cursor.samples_left -= n
    table = np.frombuffer(data, ">u4", n * len(present), pos).reshape(n, len(present))
    cols = {name: table[:, i] for i, (_, name) in enumerate(present)}
    dur = cols["dur"].astype(np.int64) if "dur" in cols else np.full(n, defaults[0], np.int64)
    size = cols["size"].astype(np.int64) if "size" in cols else np.full(n, defaults[1], np.int64)
    sflags = cols["flags"].astype(np.int64) if "flags" in cols else np.full(n, defaults[2])
    if first_flags is not None and n:
        sflags[0] = first_flags
    # Signed whatever the version, as ffmpeg reads it (version 0 offsets are never that large).
    cto = cols["cto"].view(">i4").astype(np.int64) if "cto" in cols else np.zeros(n, np.int64)
    key = np.ones(n, bool) if audio else (sflags & 0x10000) == 0
    offset = start + np.cumsum(size) - size
    times = dts + np.cumsum(dur) - dur
    return Samples(offset, size, times, cto, dur, key), start + int(size.sum())


def _parse(read: Callable[[int, int], bytes], state: MP4State, limit: int) -> Parsed:
    """Movie header, every track's samples and every fragment's, with per-part problems."""
    moov = state.moov
    data = read(moov.offset, moov.end)
    if len(data) != moov.size:
        raise BoxError(f"moov box at byte {moov.offset}: read {len(data)} of {moov.size} bytes",
                       moov.offset)
    movie = parse_moov(data, moov.offset)
    problems: list[tuple[str, str, int | None]] = list(movie.problems)
    samples: dict[int, list[Samples]] = {}
    left = limit
    for track in movie.tracks:
        try:
            if track.track_id in samples:
                raise BoxError(f"track id {track.track_id} (trak at byte {track.offset}) is "
                               f"used twice; this track is left out", track.offset)
            if not track.timescale:
                raise BoxError(f"track {track.track_id} (trak at byte {track.offset}): mdhd "
                               f"timescale is 0", track.offset)
            edit_shift(data, moov.offset, track, movie.timescale)
            s = track_samples(data, moov.offset, track, left)
            left -= len(s)
            samples[track.track_id] = [s]
        except (ValueError, OverflowError, struct.error) as exc:  # BoxError is a ValueError
            message = str(exc)
            if not message.startswith("track "):
                message = f"track {track.track_id} (trak at byte {track.offset}): {message}"
            problems.append(("BadSampleTable", message, getattr(exc, "offset", track.offset)))
    cursor = FragmentCursor(samples_left=left)
    for tid, parts in samples.items():
        s = parts[0]
        if len(s):  # fragments continue where the moov samples end (unless tfdt says otherwise)
            track = next(t for t in movie.tracks if t.track_id == tid)
            cursor.next_dts[tid] = int(s.dts[-1] + s.duration[-1]) - track.edit_shift
    for moof in state.moofs:
        try:
            if moof.size > MAX_MOOF_BYTES:
                raise BoxError(f"moof at byte {moof.offset} is {moof.size} bytes, over the "
                               f"{MAX_MOOF_BYTES}-byte cap", moof.offset)
            for tid, s in parse_moof(read(moof.offset, moof.end), moof.offset, movie, cursor):
                samples.setdefault(tid, []).append(s)
        except (ValueError, OverflowError, struct.error) as exc:
            problems.append(("BadFragment", f"moof at byte {moof.offset}: {exc}",
                             getattr(exc, "offset", moof.offset)))
    return Parsed(movie, samples, problems)


def _brands(read: Callable[[int, int], bytes], ftyp: Box | None) -> dict[str, Any]:
    if ftyp is None or ftyp.size - ftyp.header < 8:
        return {"major_brand": None, "minor_version": None, "compatible_brands": []}
    payload = read(ftyp.offset + ftyp.header, min(ftyp.end, ftyp.offset + ftyp.header + 4096))
    compat = [payload[i: i + 4].decode("latin-1") for i in range(8, len(payload) - 3, 4)]
    return {"major_brand": payload[:4].decode("latin-1"),
            "minor_version": struct.unpack_from(">I", payload, 4)[0],
            "compatible_brands": compat}


def _edits(track: Any, movie_timescale: int) -> dict[str, Any]:
    """The track's edit list for the catalog: as stored, in seconds, and the window it plays."""
    if not track.edit_count:
        return {"edit_list": None}
    mts, tts = max(movie_timescale, 1), track.timescale
    out: dict[str, Any] = {
        "edit_list": [{"duration_s": dur / mts,
                       "media_time_s": None if time == -1 else (time / tts if tts else None),
                       "rate": rate / 65536} for dur, time, rate in track.edits],
        "edit_count": track.edit_count,
    }
    if track.presented is not None and tts:
        out["presented_s"] = [track.presented[0] / tts, track.presented[1] / tts]
    return out


def _concat(parts: list[Samples]) -> Samples:
    if len(parts) == 1:
        return parts[0]
    return Samples(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("offset", "size", "dts", "cto", "duration", "key")))


class MP4Reader(Reader):
    """ISO base media files (MP4, MOV, M4V, M4A, 3GP): the sample index as rows."""

    name = "mp4"
    options_type = MP4Options
    suffixes = (".mp4", ".mov", ".m4v", ".m4a", ".3gp")

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        if len(head) >= 8 and head[4:8] in _BOX_TYPES:
            size = int.from_bytes(head[:4], "big")
            if size in (0, 1) or size >= 8:
                return 30 if head[4:8] == b"ftyp" and head[8:12] in _IMAGE_BRANDS else 90
        return 10 if path.lower().endswith(cls.suffixes) else 0

    def describe(self, source: Source, options: MP4Options) -> Description:
        limit = options.max_samples
        with source.open() as f:
            read = _reader(f)
            top = walk_top(read, source.size)
            moov = top.moov
            if moov is None:
                found = "; ".join(m for _, m, _ in top.problems) or "none in the file"
                raise BoxError(f"{source.path}: no moov box ({top.box_count} top-level boxes; "
                               f"problems: {found})", top.problems[0][2] if top.problems else 0)
            if moov.end > source.size:
                raise BoxError(f"{source.path}: moov box at byte {moov.offset} declares "
                               f"{moov.size} bytes but the file ends after "
                               f"{source.size - moov.offset} (truncated)", moov.offset)
            if moov.size > MAX_MOOV_BYTES:
                raise BoxError(f"{source.path}: moov box at byte {moov.offset} is {moov.size} "
                               f"bytes, over the {MAX_MOOV_BYTES}-byte cap", moov.offset)
            state = MP4State(moov, top.moofs, top.problems)
            try:
                parsed = _parse(read, state, limit)
            except (BoxError, struct.error) as exc:
                raise BoxError(f"{source.path}: moov box at byte {moov.offset}: {exc}",
                               moov.offset) from exc
            meta = _brands(read, top.ftyp)
        movie = parsed.movie
        tracks = []
        for t in movie.tracks:
            parts = parsed.samples.get(t.track_id, [])
            count = sum(len(p) for p in parts)
            duration = t.duration / t.timescale if t.timescale and t.duration else None
            if duration is None and count and t.timescale:
                last = parts[-1]
                duration = (int(last.dts[-1] + last.duration[-1]) - t.edit_shift) / t.timescale
            tracks.append({"track_id": t.track_id, "handler": t.handler, "codec": t.codec,
                           "timescale": t.timescale, "duration_s": duration,
                           "sample_count": count, "width": t.width, "height": t.height,
                           "channels": t.channels, "sample_rate": t.sample_rate,
                           "edit_shift_s": t.edit_shift / t.timescale if t.timescale else None,
                           **_edits(t, movie.timescale), "note": t.edit_note})
        duration = movie.duration / movie.timescale if movie.timescale and movie.duration \
            else max((t["duration_s"] or 0 for t in tracks), default=None)
        meta.update({
            "timescale": movie.timescale, "duration_s": duration,
            "fragmented": bool(top.moofs), "fragments": len(top.moofs),
            "faststart": top.mdat_offset is None or moov.offset < top.mdat_offset,
            "moov_offset": moov.offset, "moov_size": moov.size, "mdat_bytes": top.mdat_bytes,
            "box_count": top.box_count, "tracks": tracks,
            "errors": [f"{m} (byte {o})" for _, m, o in (top.problems + parsed.problems)[:100]],
            "error_total": len(top.problems) + len(parsed.problems),
        })
        return Description({TABLE: SCHEMA}, meta, state)

    def plan(self, source: Source, description: Description,
             options: MP4Options) -> list[ChunkSpec]:
        state: MP4State = description.state
        index_bytes = state.moov.size + sum(m.size for m in state.moofs)
        return [ChunkSpec(source.file_id, 0, state.moov.offset, index_bytes, TABLE,
                          weight=index_bytes)]

    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: MP4Options, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        state: MP4State = description.state
        limit = options.max_samples
        with source.open() as f:
            # Exact reads: the chunk touches moov/moof bytes only, never mdat payloads.
            parsed = _parse(_reader(f, window=0), state, limit)
        for error_type, message, offset in state.problems + parsed.problems:
            ctx.reject(kind="chunk", error_type=error_type, byte_offset=offset,
                       message=f"{source.path}: {message}")
        for track in parsed.movie.tracks:
            parts = parsed.samples.pop(track.track_id, None)  # a duplicate id finds nothing
            if parts and track.timescale:  # timescale 0 is already an error row
                yield from self._rows(source, track, _concat(parts), ctx)

    def _rows(self, source: Source, track: Any, s: Samples, ctx: ChunkContext
              ) -> Iterator[tuple[str, pa.Table]]:
        index = np.arange(len(s), dtype=np.int64)
        inside = (s.offset >= 0) & (s.offset + s.size <= source.size)
        if not inside.all():
            lost = np.flatnonzero(~inside)
            ctx.reject(kind="record", error_type=ErrorCode.SAMPLE_OUTSIDE_FILE,
                       byte_offset=int(s.offset[lost[0]]),
                       message=f"{source.path}: track {track.track_id}: {len(lost)} samples "
                               f"(from sample {int(lost[0])}) lie outside the file's "
                               f"{source.size} bytes and are left out")
        ts = float(track.timescale)
        for a in range(0, len(s), _ROWS_PER_PIECE):
            sl = slice(a, a + _ROWS_PER_PIECE)
            keep = inside[sl]
            n = int(keep.sum())
            yield TABLE, pa.table({
                "track_id": pa.array(np.full(n, track.track_id, np.int64)),
                "handler": pa.array([track.handler] * n, pa.string()) if n < 1024 else
                pa.repeat(pa.scalar(track.handler, pa.string()), n),
                "sample_index": index[sl][keep],
                "byte_offset": s.offset[sl][keep], "size": s.size[sl][keep],
                "decode_time_s": s.dts[sl][keep] / ts,
                "presentation_time_s": (s.dts[sl][keep] + s.cto[sl][keep]) / ts,
                "duration_s": s.duration[sl][keep] / ts,
                "is_keyframe": s.key[sl][keep],
            }, schema=SCHEMA)

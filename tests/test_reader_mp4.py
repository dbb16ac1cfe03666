"""MP4/MOV reader: sample tables checked against ``ffprobe -show_packets``, plus hostile files.

Clips come from ffmpeg's lavfi test sources (``.ci/run`` installs ffmpeg; without it the ffprobe
comparisons are skipped). Hand-made broken files must end as ``_errors`` rows or a ``failed``
catalog row in bounded time and memory.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import pipeline
from readers._isobmff import BoxError, parse_header, walk_top
from readers.base import ChunkContext, Source
from readers.mp4 import MP4Reader

FFMPEG = shutil.which("ffmpeg") and shutil.which("ffprobe")
needs_ffmpeg = pytest.mark.skipif(not FFMPEG, reason="ffmpeg/ffprobe not installed "
                                  "(apt-get install ffmpeg; .ci/run installs it)")
VIDEO = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=15:duration=2"]
AUDIO = ["-f", "lavfi", "-i", "sine=frequency=440:duration=2"]
#: name -> ffmpeg output arguments. Fragmented clips: ffprobe derives packet durations from the
#: codec, not from trun, so their durations are not compared.
CLIPS: dict[str, list[str]] = {
    "h264_aac.mp4": VIDEO + AUDIO + ["-c:v", "libx264", "-g", "10", "-bf", "2", "-c:a", "aac"],
    "faststart.mp4": VIDEO + AUDIO + ["-c:v", "libx264", "-c:a", "aac", "-movflags",
                                      "+faststart"],
    "fragmented.mp4": VIDEO + AUDIO + ["-c:v", "libx264", "-g", "10", "-c:a", "aac",
                                       "-movflags", "frag_keyframe+empty_moov"],
    "fragmented_moof_base.mp4": VIDEO + AUDIO + [
        "-c:v", "libx264", "-c:a", "aac", "-movflags",
        "frag_keyframe+empty_moov+default_base_moof+separate_moof", "-frag_duration", "300000"],
    "mpeg4.mov": VIDEO + ["-c:v", "mpeg4"],
    "mjpeg.mov": VIDEO + ["-c:v", "mjpeg"],
    "pcm.mov": VIDEO + AUDIO + ["-c:v", "libx264", "-c:a", "pcm_s16le"],
    "audio.m4a": AUDIO + ["-c:a", "aac"],
}


def ffmpeg(out: Path, args: list[str]) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, "-shortest", str(out)], check=True,
                   timeout=60)
    return out


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_packets", "-show_streams", "-of",
                          "json", str(path)], check=True, capture_output=True, timeout=60)
    return json.loads(out.stdout)


def direct(path: Path, **options: Any) -> tuple[Any, pa.Table, ChunkContext]:
    """describe -> plan -> read in this process (unit level, no cluster)."""
    src = Source("file://" + str(path), path.stat().st_size, None, "f", "fp", "t")
    reader = MP4Reader()
    opts = reader.configure(options)
    desc = reader.describe(src, opts)
    [chunk] = reader.plan(src, desc, opts)
    ctx = ChunkContext(src, chunk)
    pieces = [t for _, t in reader.read(src, chunk, desc, opts, ctx)]
    table = pa.concat_tables(pieces) if pieces else pa.table({})
    return desc, table, ctx


def query(sql: str) -> list[tuple]:
    return duckdb.sql(sql).fetchall()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not FFMPEG:
        pytest.skip("ffmpeg/ffprobe not installed (apt-get install ffmpeg; .ci/run installs it)")
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("clips")
    # Each clip is its own ffmpeg process, mostly start-up: several at a time.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda clip: ffmpeg(root / clip[0], clip[1]), CLIPS.items()))
    return root


@pytest.fixture(scope="module")
def lake(clips: Path, tmp_path_factory: pytest.TempPathFactory, shared_scheduler: str) -> Path:
    out = tmp_path_factory.mktemp("lake")
    # On the tests' shared cluster (two worker processes, as workers=2 would start, and
    # planned as such), not an embedded cluster started for this fixture alone.
    report = pipeline.ingest([str(clips)], out=str(out), workers=2, progress=False,
                             scheduler=shared_scheduler)
    assert report.files.get("ok") == len(CLIPS), report
    return out


def catalog(out: Path) -> dict[str, dict[str, Any]]:
    rows = query(f"select path, file_id, status, metadata, error_count, rows "
                 f"from read_parquet('{out}/_catalog/*.parquet')")
    return {Path(p).name: {"file_id": f, "status": s, "metadata": json.loads(m),
                           "error_count": e, "rows": r} for p, f, s, m, e, r in rows}


def errors(out: Path) -> list[dict[str, Any]]:
    if not list((out / "_errors").glob("*.parquet")):
        return []
    return duckdb.sql(f"select * exclude (raw) from read_parquet('{out}/_errors/*.parquet')"
                      ).df().to_dict("records")


# --- against ffprobe ---------------------------------------------------------------------------
@needs_ffmpeg
@pytest.mark.parametrize("name", list(CLIPS))
def test_samples_match_ffprobe(name: str, clips: Path, lake: Path) -> None:
    probe = ffprobe(clips / name)
    file_id = catalog(lake)[name]["file_id"]
    rows = duckdb.sql(f"select * from read_parquet('{lake}/samples/**/*.parquet', "
                      f"hive_partitioning=true) where _file_id = '{file_id}' "
                      f"order by track_id, sample_index").df()
    streams = {s["index"]: s for s in probe["streams"]}
    packets: dict[int, list[dict]] = {}
    for p in probe["packets"]:
        packets.setdefault(p["stream_index"], []).append(p)
    assert len(rows) == len(probe["packets"])
    fragmented = name.startswith("fragmented")
    for index, expected in packets.items():
        stream = streams[index]
        track_id = int(stream["id"], 16)
        den = int(stream["time_base"].split("/")[1])
        mine = rows[rows.track_id == track_id]
        assert list(mine.sample_index) == list(range(len(mine)))
        assert (mine.handler == {"video": "vide", "audio": "soun"}[stream["codec_type"]]).all()
        got = [(int(r.byte_offset), int(r.size), round(r.decode_time_s * den),
                round(r.presentation_time_s * den), bool(r.is_keyframe),
                None if fragmented else round(r.duration_s * den))
               for r in mine.sort_values("byte_offset").itertuples()]
        want = [(int(p["pos"]), int(p["size"]), p["dts"], p["pts"], "K" in p["flags"],
                 None if fragmented else p["duration"])
                for p in sorted(expected, key=lambda p: int(p["pos"]))]
        assert got == want


@needs_ffmpeg
def test_catalog_metadata(clips: Path, lake: Path) -> None:
    cat = catalog(lake)
    for name in CLIPS:
        meta = cat[name]["metadata"]
        probe = ffprobe(clips / name)
        assert cat[name]["status"] == "ok" and meta["errors"] == []
        assert meta["duration_s"] == pytest.approx(2.0, abs=0.2)
        assert meta["major_brand"] == ("qt  " if name.endswith(".mov") else
                                       "M4A " if name.endswith(".m4a") else
                                       "iso5" if "moof_base" in name else "isom")
        assert meta["fragmented"] is name.startswith("fragmented")
        by_id = {t["track_id"]: t for t in meta["tracks"]}
        for stream in probe["streams"]:
            track = by_id[int(stream["id"], 16)]
            assert track["codec"] == stream["codec_tag_string"]
            assert track["timescale"] == int(stream["time_base"].split("/")[1])
            if stream["codec_type"] == "video":
                assert (track["handler"], track["width"], track["height"]) == ("vide", 64, 48)
            else:
                assert track["handler"] == "soun"
                assert track["sample_rate"] == float(stream["sample_rate"])
                if stream["codec_name"].startswith("pcm"):  # AAC keeps its layout in esds
                    assert track["channels"] == stream["channels"]
        assert sum(t["sample_count"] for t in meta["tracks"]) == cat[name]["rows"]
    assert cat["faststart.mp4"]["metadata"]["faststart"] is True
    assert cat["h264_aac.mp4"]["metadata"]["faststart"] is False
    assert cat["h264_aac.mp4"]["metadata"]["tracks"][0]["edit_shift_s"] == pytest.approx(-2 / 15)


@needs_ffmpeg
def test_chunk_reads_only_index_boxes(clips: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample table comes from moov/moof bytes: no read may touch an mdat payload."""
    reads: list[tuple[int, int]] = []
    real_open = Source.open

    def recording_open(self: Source, compression: str | None = None) -> Any:
        f = real_open(self, compression)
        real_read = f.read

        def read(n: int = -1) -> bytes:
            at = f.tell()
            out = real_read(n)
            reads.append((at, at + len(out)))
            return out
        f.read = read
        return f

    for name in ("h264_aac.mp4", "fragmented.mp4"):
        path = clips / name
        data = path.read_bytes()
        top = walk_top(lambda a, b, data=data: data[a:b], len(data))
        allowed = [(top.moov.offset, top.moov.end)] + [(m.offset, m.end) for m in top.moofs]
        reads.clear()
        src = Source("file://" + str(path), len(data), None, "f", "fp", "t")
        reader = MP4Reader()
        opts = reader.configure({})
        desc = reader.describe(src, opts)
        [chunk] = reader.plan(src, desc, opts)
        monkeypatch.setattr(Source, "open", recording_open)
        rows = sum(t.num_rows for _, t in reader.read(src, chunk, desc, opts,
                                                       ChunkContext(src, chunk)))
        monkeypatch.undo()
        assert rows > 0 and reads
        for a, b in reads:
            assert any(lo <= a and b <= hi for lo, hi in allowed), (name, a, b)


def test_sniff() -> None:
    assert MP4Reader.sniff(b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "x.bin") >= 90
    assert MP4Reader.sniff(b"\x00\x00\x00\x08free\x00\x00\x00\x08moov", "x") >= 90
    assert MP4Reader.sniff(b"\x00\x00\x00\x18ftypavif", "x.avif") < 50
    assert MP4Reader.sniff(b"SIMPLE  =", "x.mp4") == 10
    assert MP4Reader.sniff(b"a,b\n1,2\n", "x.csv") == 0


# --- hostile files -----------------------------------------------------------------------------
def box_at(data: bytes | bytearray, kind: bytes, start: int = 0) -> int:
    """Offset of the first box of ``kind`` (ffmpeg output has no false 4CC hits there)."""
    at = bytes(data).find(kind, start)
    assert at >= 4, kind
    return at - 4


def bounded(fn: Any, megabytes: float = 64.0) -> Any:
    """Run ``fn`` and assert it stays within a Python-allocation budget (time is bounded by
    the calling test's timeout, not asserted)."""
    tracemalloc.start()
    try:
        result = fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < megabytes * 2**20
    return result


@pytest.fixture(scope="module")
def hostile(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    end = (clips / "h264_aac.mp4").read_bytes()      # moov at the end
    fast = (clips / "faststart.mp4").read_bytes()    # moov first
    frag = (clips / "fragmented.mp4").read_bytes()
    files: dict[str, bytes] = {}
    moov = box_at(end, b"moov")
    files["truncated_moov.mp4"] = end[: moov + 200]
    mdat = box_at(fast, b"mdat")
    files["truncated_mdat.mp4"] = fast[: mdat + 5000]
    past = bytearray(fast)
    struct.pack_into(">I", past, mdat, 0x7FFFFFF0)  # mdat size far past the end of the file
    files["mdat_past_eof.mp4"] = bytes(past)
    tiny = bytearray(end)
    struct.pack_into(">I", tiny, 0, 4)  # ftyp claims 4 bytes: less than a box header
    files["tiny_box.mp4"] = bytes(tiny)
    zero_loop = bytearray(fast)
    stsd = box_at(zero_loop, b"stsd")
    struct.pack_into(">I", zero_loop, stsd, 3)  # a box of size 3 inside the first track
    files["bad_child.mp4"] = bytes(zero_loop)
    huge = bytearray(fast)
    stsz = box_at(huge, b"stsz")
    struct.pack_into(">II", huge, stsz + 12, 0, 2**31)  # 2^31 sizes in a ~120-byte payload
    files["stsz_2e31.mp4"] = bytes(huge)
    struct.pack_into(">II", huge, stsz + 12, 0, 10_000_000)  # under the cap, payload too small
    files["stsz_10m.mp4"] = bytes(huge)
    fixed = bytearray(fast)
    struct.pack_into(">II", fixed, stsz + 12, 100, 2**31 - 1)  # constant size: no payload
    files["stsz_fixed_2e31.mp4"] = bytes(fixed)
    trun = bytearray(frag)
    at = box_at(trun, b"trun")
    struct.pack_into(">II", trun, at + 8, 0x000001, 2**31)  # no per-sample fields, 2^31 samples
    files["trun_2e31.mp4"] = bytes(trun)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in files}


@pytest.mark.timeout(300)  # a hang or blow-up, not speed: no wall-clock asserts
@needs_ffmpeg
def test_hostile_files_end_as_errors(hostile: dict[str, Path], tmp_path: Path,
                                     shared_scheduler: str) -> None:
    out = tmp_path / "out"
    pipeline.ingest([str(p) for p in hostile.values()], out=str(out), workers=2,
                    progress=False, scheduler=shared_scheduler)
    cat = catalog(out)
    errs = errors(out)

    def messages(name: str) -> list[str]:
        return [e["message"] for e in errs if Path(e["path"]).name == name]

    def offsets(name: str) -> list[int]:
        return [e["byte_offset"] for e in errs if Path(e["path"]).name == name]

    assert cat["truncated_moov.mp4"]["status"] == "failed"
    assert "truncated" in messages("truncated_moov.mp4")[0]
    assert "moov box at byte" in messages("truncated_moov.mp4")[0]
    assert cat["tiny_box.mp4"]["status"] == "failed"
    assert "less than its 8-byte header" in messages("tiny_box.mp4")[0]
    for name in ("truncated_mdat.mp4", "mdat_past_eof.mp4"):
        assert cat[name]["status"] == "partial", name
        assert any("ends" in m for m in messages(name)), messages(name)
    assert 0 < cat["truncated_mdat.mp4"]["rows"] < cat["mdat_past_eof.mp4"]["rows"]
    assert any("lie outside the file" in m for m in messages("truncated_mdat.mp4"))
    stsz = box_at(hostile["stsz_2e31.mp4"].read_bytes(), b"stsz")
    for name in ("stsz_2e31.mp4", "stsz_10m.mp4", "stsz_fixed_2e31.mp4"):
        assert cat[name]["status"] == "partial", name
        assert cat[name]["rows"] > 0  # the audio track still loads
        assert stsz in offsets(name)
    assert "2147483648 samples declared" in " ".join(messages("stsz_2e31.mp4"))
    assert "exceed the limit" in " ".join(messages("stsz_fixed_2e31.mp4"))
    assert "declares 10000000 entries (40000000 bytes)" in " ".join(messages("stsz_10m.mp4"))
    assert cat["bad_child.mp4"]["status"] == "partial"
    assert any("less than its 8-byte header" in m for m in messages("bad_child.mp4"))
    assert cat["trun_2e31.mp4"]["status"] == "partial"
    assert any("2147483648 samples" in m for m in messages("trun_2e31.mp4"))


@needs_ffmpeg
@pytest.mark.timeout(300)  # a hang or blow-up, not speed: no wall-clock asserts
def test_hostile_counts_cost_little(hostile: dict[str, Path]) -> None:
    for name in ("stsz_2e31.mp4", "stsz_10m.mp4", "stsz_fixed_2e31.mp4", "trun_2e31.mp4"):
        _, table, ctx = bounded(lambda name=name: direct(hostile[name]))
        assert table.num_rows > 0 and ctx.rejected


def test_box_header_rules() -> None:
    assert parse_header(b"\x00\x00\x00\x10abcd" + bytes(8), 0, 16, 100).size == 16
    box = parse_header(b"\x00\x00\x00\x01mdat" + struct.pack(">Q", 24) + bytes(8), 0, 24, 0)
    assert (box.size, box.header) == (24, 16)
    assert parse_header(b"\x00\x00\x00\x00mdat", 0, 500, 0).size == 500  # to end of parent
    for raw, end in ((b"\x00\x00\x00\x07abcd", 100), (b"\x00\x00\x01\x00abcd", 100),
                     (b"\x00\x00\x00\x01abcd" + struct.pack(">Q", 4), 100), (b"\x00\x00", 2)):
        with pytest.raises(BoxError) as info:
            parse_header(raw, 0, end, 1000)
        assert info.value.offset == 1000


@needs_ffmpeg
def test_64bit_mdat_size(clips: Path, tmp_path: Path) -> None:
    """ffmpeg leaves an 8-byte 'free' box before mdat so it can grow a 64-bit size in place."""
    data = bytearray((clips / "h264_aac.mp4").read_bytes())
    free = box_at(data, b"free")
    assert box_at(data, b"mdat") == free + 8
    mdat_size = struct.unpack_from(">I", data, free + 8)[0]
    data[free: free + 16] = struct.pack(">I4sQ", 1, b"mdat", mdat_size + 8)
    path = tmp_path / "large.mp4"
    path.write_bytes(bytes(data))
    desc, table, ctx = direct(path)
    _, original, _ = direct(clips / "h264_aac.mp4")
    assert table.equals(original) and not ctx.rejected
    assert desc.metadata["mdat_bytes"] == mdat_size - 8


@pytest.mark.timeout(300)  # a hang or blow-up, not speed: no wall-clock asserts
def test_many_tiny_boxes_are_bounded(tmp_path: Path) -> None:
    """50,000 empty 'free' boxes then a tiny moov: linear work, no recursion, one failure.

    Fifty times Python's recursion limit; the allocation budget is the 64 MB that 200,000
    boxes had, scaled down with them (~335 bytes a box: a parser keeping an object per box
    still fails it). The walk runs under tracemalloc, several times slower than without."""
    boxes = 50_000
    path = tmp_path / "boxes.mp4"
    path.write_bytes(b"\x00\x00\x00\x08free" * boxes + b"\x00\x00\x00\x08moov")
    desc, table, ctx = bounded(lambda: direct(path), megabytes=64.0 * boxes / 200_000)
    assert table.num_rows == 0 and desc.metadata["tracks"] == []
    assert desc.metadata["box_count"] == boxes + 1


@pytest.mark.timeout(300)  # a hang or blow-up, not speed: no wall-clock asserts
@needs_ffmpeg
def test_flipped_bytes_never_escape(clips: Path, tmp_path: Path) -> None:
    """Random byte flips inside moov: every outcome is rows, error rows or a BoxError."""
    import random

    data = (clips / "faststart.mp4").read_bytes()
    moov = box_at(data, b"moov")
    size = struct.unpack_from(">I", data, moov)[0]
    rng = random.Random(7)
    path = tmp_path / "flip.mp4"
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(moov, moov + size)] = rng.randrange(256)
        path.write_bytes(bytes(mutated))
        try:
            direct(path)
        except BoxError:
            pass


# --- edit lists (issue 20) -------------------------------------------------------------------
def _shorten_edits(src: Path, out: Path) -> None:
    """Halve every (version 0) edit's segment duration: the media outlasts the edit."""
    data = bytearray(src.read_bytes())
    at = 0
    while (at := data.find(b"elst", at + 1)) > 0:
        assert data[at + 4] == 0
        duration = struct.unpack_from(">I", data, at + 12)[0]
        struct.pack_into(">I", data, at + 12, duration // 2)
    out.write_bytes(bytes(data))


def _stored_edits(path: Path) -> list[list[tuple[int, int, int]]]:
    data, found, at = path.read_bytes(), [], 0
    while (at := data.find(b"elst", at + 1)) > 0:
        count = struct.unpack_from(">I", data, at + 8)[0]
        found.append([struct.unpack_from(">IiI", data, at + 12 + 12 * k) for k in range(count)])
    return found


@needs_ffmpeg
def test_edit_lists_follow_iso_times_and_are_cataloged(tmp_path: Path) -> None:
    src = ffmpeg(tmp_path / "src.mp4", ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=25",
                                        "-f", "lavfi", "-i", "sine=frequency=440", "-t", "3",
                                        "-c:v", "libx264", "-g", "12", "-bf", "2", "-c:a", "aac"])
    clips = {
        # starts mid-GOP and mid-frame: pre-roll samples, ffmpeg's extra video shift
        "cut.mp4": ["-ss", "1.3", "-i", str(src), "-t", "1.2", "-c", "copy"],
        "offset.mov": ["-itsoffset", "0.5", "-i", str(src), "-c", "copy"],  # empty edit
    }
    for name, args in clips.items():
        ffmpeg(tmp_path / name, args)
    _shorten_edits(src, tmp_path / "short.mp4")
    for name in [*clips, "short.mp4"]:
        path = tmp_path / name
        desc, table, ctx = direct(path)
        assert not ctx.rejected
        probe = ffprobe(path)
        tracks = {t["track_id"]: t for t in desc.metadata["tracks"]}
        for stream, edits in zip(probe["streams"], _stored_edits(path), strict=True):
            track = tracks[int(stream["id"], 16)]
            tick = int(stream["time_base"].split("/")[1])
            assert track["edit_count"] == len(edits)
            assert [(e["duration_s"], e["media_time_s"]) for e in track["edit_list"]] == [
                (d / desc.metadata["timescale"], None if t == -1 else t / tick)
                for d, t, _ in edits]
            first = next(e for e in track["edit_list"] if e["media_time_s"] is not None)
            start, end = track["presented_s"]
            assert track["edit_shift_s"] == pytest.approx(start - first["media_time_s"])
            rows = {r["byte_offset"]: r for r in table.to_pylist()
                    if r["track_id"] == track["track_id"]}
            assert len(rows) == track["sample_count"]  # every stored sample is a row
            packets = [p for p in probe["packets"] if p["stream_index"] == stream["index"]]
            offsets = set()
            for p in packets:  # ffmpeg's packets are a subset of ours, times a constant apart
                row = rows[int(p["pos"])]
                assert (row["size"], row["is_keyframe"]) == (int(p["size"]), "K" in p["flags"])
                offsets.add((p["pts"] - round(row["presentation_time_s"] * tick),
                             p["dts"] - round(row["decode_time_s"] * tick)))
            (shift, dshift), = offsets
            frame = max(int(p["duration"]) for p in packets)
            assert shift == dshift and abs(shift) < frame
            kept = {int(p["pos"]) for p in packets}
            for offset in set(rows) - kept:  # what ffmpeg leaves out lies past the edit's end
                assert rows[offset]["presentation_time_s"] >= end - 1e-9
        if name == "short.mp4":
            assert len(table) > len(probe["packets"])
        if name == "offset.mov":
            assert tracks[1]["presented_s"][0] == pytest.approx(0.5)

"""Fuzzing the container readers (HDF5, Zarr, FITS, MP4) with hypothesis.

Each example mutates a small valid seed file: bytes flipped, overwritten with boundary values,
zeroed, duplicated or cut off; for MP4 also box sizes and table entry counts, for FITS header
card values, for Zarr the JSON metadata (keys set to hostile values or removed) and chunk bytes.
The mutated file is then described, planned and read as the pipeline would
(`readers.testing.read_file`), and the example passes when, in bounded time and memory:

- the read finishes, with every problem an ``_errors`` row (kind record/chunk/file) whose
  ``error_type`` is never ``InternalError``; or
- the reader refuses the file with a `readers.errors.ReaderError` (what the catalog shows as a
  failed file), never another exception type leaking from h5py, zarr, numpy or struct.

Reads run in a child process that serves one example after another, because h5py (C code) may
crash or loop forever on a hostile file: a child that dies (a signal), answers later than
``CHUNKMILL_FUZZ_TIMEOUT`` seconds, or grows past ``CHUNKMILL_FUZZ_RSS_MB`` of resident memory
fails the example (and is replaced for the next one). A failing input is kept under
``CHUNKMILL_FUZZ_SAVE`` (default: the system temp dir, ``chunkmill-fuzz/``) and its path is in
the failure message, with hypothesis' reproduction blob.

Budget: ``CHUNKMILL_FUZZ_EXAMPLES`` examples per format (default 8, the same ones every run, for
the suite; a budget given explores new examples each run). Longer runs, on demand::

    CHUNKMILL_FUZZ_EXAMPLES=2000 python3 -m pytest -q tests/fuzz/test_fuzz_containers.py -k hdf5

Not checked here: "every byte in a row or in ``_errors``" (a container's bytes are headers,
indexes and encoded payloads, not records); the text readers' fuzz tests check that.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("CHUNKMILL_FUZZ_EXAMPLES", "8"))
#: The suite's small budget replays the same examples every run (a CI result must not depend
#: on luck); a budget given on demand explores new ones.
EXPLORE = "CHUNKMILL_FUZZ_EXAMPLES" in os.environ
TIMEOUT = float(os.environ.get("CHUNKMILL_FUZZ_TIMEOUT", "30"))
STARTUP_TIMEOUT = 300.0
RSS_LIMIT = int(os.environ.get("CHUNKMILL_FUZZ_RSS_MB", "1536")) << 20
SAVE = Path(os.environ.get("CHUNKMILL_FUZZ_SAVE",
                           os.path.join(tempfile.gettempdir(), "chunkmill-fuzz")))
#: Settings every read gets: small chunks (more chunk boundaries), tight limits.
READ_SETTINGS = {"chunk_size": 4096, "max_objects": 2000, "max_samples": 1 << 20,
                 "max_listed_chunks": 10_000}

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not EXPLORE, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# --- the child: reads one file per request ----------------------------------------------------
def _serve() -> None:
    """Child process loop: a JSON request per line in, a JSON verdict per line out."""
    from readers import get_reader
    from readers.errors import ErrorCode, ReaderError, one_line
    from readers.testing import read_file, source_of

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing a reader prints may corrupt the protocol
    for name in ("hdf5", "zarr", "fits", "mp4"):  # imports before "ready": not on the clock
        get_reader(name)
    import h5py  # noqa: F401
    import zarr  # noqa: F401

    out.write('{"verdict": "ready"}\n')
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        verdict: dict[str, Any]
        try:
            reader = get_reader(request["reader"])()
            _, pieces, rejected, chunks = read_file(reader, source_of(request["path"]),
                                                    request["settings"])
            bad = [f"{r.kind}/{r.error_type}: {r.message}" for r in rejected
                   if r.kind not in ("record", "chunk", "file")
                   or r.error_type in ("", ErrorCode.INTERNAL) or not r.message]
            verdict = ({"verdict": "bad-rejection", "detail": bad[:3]} if bad else
                       {"verdict": "read", "rows": sum(t.num_rows for _, t in pieces),
                        "rejected": len(rejected), "chunks": chunks})
        except ReaderError as exc:
            verdict = {"verdict": "refused", "detail": one_line(exc)}
        except Exception as exc:  # noqa: BLE001 - the point is to report which one leaked
            verdict = {"verdict": "leaked", "detail": one_line(exc),
                       "traceback": traceback.format_exc(limit=12)}
        out.write(json.dumps(verdict) + "\n")
        out.flush()


class Child:
    """The reading child process, restarted after it dies, hangs or balloons."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                cwd=str(ROOT))
        ready = self._answer(proc, STARTUP_TIMEOUT)
        if ready.get("verdict") != "ready":
            proc.kill()
            raise RuntimeError(f"the fuzz child did not start: {ready}")
        return proc

    def _answer(self, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        """The child's next line, or why there is none (died, hung, grew too big)."""
        import psutil

        assert proc.stdout is not None
        watched = psutil.Process(proc.pid)
        started, peak, buffer = time.monotonic(), 0, b""
        while True:
            if select.select([proc.stdout], [], [], 0.005)[0]:
                piece = os.read(proc.stdout.fileno(), 1 << 16)
                buffer += piece
                if buffer.endswith(b"\n"):
                    verdict = json.loads(buffer)
                    verdict["rss_mb"] = peak >> 20
                    return verdict
                if piece:
                    continue
            if proc.poll() is not None:
                code = proc.returncode
                name = signal.Signals(-code).name if code < 0 else f"exit {code}"
                return {"verdict": "crashed", "detail": name}
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:
                continue
            if peak > RSS_LIMIT:
                return {"verdict": "memory", "detail": f"resident memory {peak >> 20} MiB"}
            if time.monotonic() - started > timeout:
                return {"verdict": "hung", "detail": f"no answer in {timeout:g}s"}

    def check(self, reader: str, path: Path, extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"reader": reader, "path": str(path), "settings": {
            **READ_SETTINGS, **(extra or {})}}).encode() + b"\n")
        proc.stdin.flush()
        verdict = self._answer(proc, TIMEOUT)
        if verdict["verdict"] in ("crashed", "memory", "hung"):
            self.stop()  # a fresh child for the next example
        return verdict

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def child():
    c = Child()
    yield c
    c.stop()


def verify(child: Child, reader: str, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Read ``path`` in the child; keep the input and fail unless the verdict is clean."""
    verdict = child.check(reader, path, extra)
    if verdict["verdict"] in ("read", "refused"):
        return
    SAVE.mkdir(parents=True, exist_ok=True)
    kept = SAVE / f"{reader}-{int(time.time() * 1000)}-{path.name}"
    (shutil.copytree if path.is_dir() else shutil.copy)(path, kept)
    pytest.fail(f"{reader}: {verdict['verdict']}: {verdict.get('detail')} (input kept at "
                f"{kept})\n{verdict.get('traceback', '')}")


# --- byte mutations -------------------------------------------------------------------------
INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01", b"\x00\x00\x00\x00",
               b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
               b"\x00\x00\x00\x01", b"\xff\xff\xff\xff\xff\xff\xff\xff",
               b"\x00\x00\x00\x00\x00\x00\x00\x00", b"\x7f\xff\xff\xff\xff\xff\xff\xff"]


def mutate(data: st.DataObject, blob: bytes, hot: tuple[int, int] | None = None) -> bytes:
    """A few random edits of ``blob``; positions favour the ``hot`` range (headers)."""
    out = bytearray(blob)
    edits = data.draw(st.integers(1, 6), label="edits")
    for _ in range(edits):
        if not out:
            break
        lo, hi = hot if hot and data.draw(st.booleans()) else (0, len(out))
        lo = min(lo, len(out) - 1)
        hi = max(lo + 1, min(hi, len(out)))
        at = data.draw(st.integers(lo, hi - 1), label="at")
        kind = data.draw(st.sampled_from(["flip", "set", "random", "zero", "dup", "cut"]))
        if kind == "flip":
            out[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            value = data.draw(st.sampled_from(INTERESTING))
            out[at:at + len(value)] = value
        elif kind == "random":
            value = data.draw(st.binary(min_size=1, max_size=16))
            out[at:at + len(value)] = value
        elif kind == "zero":
            n = data.draw(st.integers(1, 256))
            out[at:at + n] = bytes(len(out[at:at + n]))
        elif kind == "dup":
            n = data.draw(st.integers(1, 64))
            out[at:at] = out[at:at + n]
        else:
            del out[at:]
    return bytes(out)


# --- HDF5 -----------------------------------------------------------------------------------
def _hdf5_seed(path: Path) -> None:
    import h5py
    import numpy as np

    rec = np.zeros(20, dtype=[("id", "<i8"), ("name", "S6"), ("v", "<f4", (3,))])
    rec["id"] = np.arange(20)
    with h5py.File(path, "w") as f:
        f.attrs["title"] = "seed"
        g = f.create_group("g")
        g.attrs["unit"] = np.arange(3)
        g.create_dataset("temp", data=np.arange(200, dtype="f8"), chunks=(32,),
                         compression="gzip")
        f.create_dataset("rec", data=rec, chunks=(8,))
        f.create_dataset("img", data=np.arange(60, dtype="i2").reshape(5, 3, 4))
        f.create_dataset("text", data=["a", "béta", ""], dtype=h5py.string_dtype())
        f.create_dataset("ragged", shape=(3,), dtype=h5py.vlen_dtype("i4"))
        f.create_dataset("scalar", data=7)
        f["alias"] = h5py.SoftLink("/g/temp")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seeds")
    made = {"hdf5": root / "seed.h5", "fits": root / "seed.fits"}
    _hdf5_seed(made["hdf5"])
    _fits_seed(made["fits"])
    _zarr_seed(root / "v3.zarr", 3)
    _zarr_seed(root / "v2.zarr", 2)
    made["zarr3"], made["zarr2"] = root / "v3.zarr", root / "v2.zarr"
    if shutil.which("ffmpeg"):
        made["mp4"] = root / "seed.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc=size=32x24:rate=10:duration=1", "-f", "lavfi", "-i",
                        "sine=duration=1", "-c:v", "libx264", "-g", "4", "-bf", "1", "-c:a",
                        "aac", "-movflags", "+faststart", "-shortest", str(made["mp4"])],
                       check=True, timeout=60)
    return made


def test_seeds_read_cleanly(child: Child, seeds: dict[str, Path]) -> None:
    readers = {"hdf5": "hdf5", "fits": "fits", "zarr3": "zarr", "zarr2": "zarr", "mp4": "mp4"}
    for name, path in seeds.items():
        verdict = child.check(readers[name], path)
        assert verdict["verdict"] == "read" and verdict["rows"] > 0, (name, verdict)


@FUZZ
@given(data=st.data())
def test_fuzz_hdf5(child: Child, seeds: dict[str, Path], tmp_path_factory, data) -> None:
    blob = seeds["hdf5"].read_bytes()
    target = tmp_path_factory.mktemp("h5") / "m.h5"
    target.write_bytes(mutate(data, blob, hot=(0, min(len(blob), 4096))))
    verify(child, "hdf5", target)


def test_damaged_global_heap_is_refused(child: Child, seeds: dict[str, Path],
                                        tmp_path: Path) -> None:
    """What random runs found (inputs kept then): the seed with its first global heap object's
    index and size zeroed. The HDF5 library's parse of that collection never moves forward,
    and describe, reading the variable-length ``title`` attribute, hung."""
    blob = bytearray(seeds["hdf5"].read_bytes())
    at = blob.find(b"GCOL")
    blob[at + 16:at + 18] = bytes(2)
    blob[at + 24:at + 32] = bytes(8)
    target = tmp_path / "heap.h5"
    target.write_bytes(bytes(blob))
    # The heap never parses: any guard ends it; one second, as in tests/test_reader_hdf5.py.
    verdict = child.check("hdf5", target, {"vlen_read_timeout": 1.0})
    assert verdict["verdict"] == "refused" and "global heap" in verdict["detail"], verdict


# --- FITS -----------------------------------------------------------------------------------
def _fits_seed(path: Path) -> None:
    import numpy as np
    from astropy.io import fits

    primary = fits.PrimaryHDU(np.arange(48, dtype=">i2").reshape(6, 8))
    primary.header["BSCALE"], primary.header["BZERO"] = 2.0, 10.0
    cols = [fits.Column("id", "J", array=np.arange(10)),
            fits.Column("x", "E", array=np.linspace(0, 1, 10)),
            fits.Column("name", "6A", array=[f"n{i}" for i in range(10)]),
            fits.Column("u", "I", bzero=32768, array=np.arange(10) + 40000),
            fits.Column("vla", "PJ()", array=[np.arange(i % 4) for i in range(10)])]
    table = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    ascii_table = fits.TableHDU.from_columns([fits.Column("a", "I6", array=np.arange(5)),
                                              fits.Column("b", "F8.3", array=np.ones(5))],
                                             name="ASC")
    fits.HDUList([primary, table, ascii_table]).writeto(path, overwrite=True)


def _card_values() -> st.SearchStrategy[str]:
    numbers = st.sampled_from([0, -1, 1, 2, 3, 8, 16, -32, -64, 999, 1000, 2**31 - 1, 2**31,
                               2**63, -(2**63), 10**18, 10**30])
    return st.one_of(numbers.map(str), st.sampled_from(["'J'", "'1PJ(5)'", "'999A'", "'E'",
                                                        "'Q'", "T", "F", "''", "'X'", "1.5E300",
                                                        "NAN", "'1QD(2147483647)'"]),
                     st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                             max_size=20))


@FUZZ
@given(data=st.data())
def test_fuzz_fits(child: Child, seeds: dict[str, Path], tmp_path_factory, data) -> None:
    blob = bytearray(seeds["fits"].read_bytes())
    headers = [i for i in range(0, len(blob), 80) if blob[i + 8:i + 10] == b"= "]
    for _ in range(data.draw(st.integers(0, 3), label="cards")):
        at = data.draw(st.sampled_from(headers), label="card")
        value = data.draw(_card_values(), label="value").encode()[:70]
        blob[at + 10:at + 80] = value.rjust(20).ljust(70)
    if data.draw(st.booleans(), label="bytes too"):
        blob = bytearray(mutate(data, bytes(blob)))
    target = tmp_path_factory.mktemp("fits") / "m.fits"
    target.write_bytes(bytes(blob))
    verify(child, "fits", target)


# --- MP4 ------------------------------------------------------------------------------------
def _boxes(blob: bytes, start: int, end: int, depth: int = 0) -> list[tuple[int, str]]:
    """(offset, type) of every box under ``start:end`` that parses (containers descended)."""
    found, pos = [], start
    while pos + 8 <= end and depth < 8:
        size, kind = struct.unpack_from(">I4s", blob, pos)
        if size < 8 or pos + size > end:
            break
        name = kind.decode("latin-1")
        found.append((pos, name))
        if name in ("moov", "trak", "mdia", "minf", "stbl", "edts", "dinf", "mvex"):
            found += _boxes(blob, pos + 8, pos + size, depth + 1)
        pos += size
    return found


@FUZZ
@given(data=st.data())
def test_fuzz_mp4(child: Child, seeds: dict[str, Path], tmp_path_factory, data) -> None:
    if "mp4" not in seeds:
        pytest.skip("ffmpeg not installed (apt-get install ffmpeg; .ci/run installs it)")
    blob = bytearray(seeds["mp4"].read_bytes())
    boxes = _boxes(bytes(blob), 0, len(blob))
    moov = next(off for off, name in boxes if name == "moov")
    moov_end = moov + struct.unpack_from(">I", blob, moov)[0]
    for _ in range(data.draw(st.integers(0, 3), label="box edits")):
        at, name = data.draw(st.sampled_from(boxes), label="box")
        field = data.draw(st.sampled_from(["size", "count", "version"]), label="field")
        value = data.draw(st.sampled_from([0, 1, 7, 8, 9, 16, 2**31, 2**32 - 1, 2**24, 255]))
        if field == "size":
            struct.pack_into(">I", blob, at, value)
        elif field == "count" and at + 16 <= len(blob):  # a full box's entry count
            struct.pack_into(">I", blob, at + 12, value)
        elif at + 9 <= len(blob):
            blob[at + 8] = value & 0xFF
    if data.draw(st.booleans(), label="bytes too"):
        blob = bytearray(mutate(data, bytes(blob), hot=(moov, moov_end)))
    target = tmp_path_factory.mktemp("mp4") / "m.mp4"
    target.write_bytes(bytes(blob))
    verify(child, "mp4", target)


# --- Zarr -----------------------------------------------------------------------------------
def _zarr_seed(path: Path, version: int) -> None:
    import numpy as np
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=version)
    g.attrs["title"] = "seed"
    a = g.create_array("a", shape=(40,), chunks=(16,), dtype="<i4", fill_value=-1)
    a[:] = np.arange(40)
    b = g.create_array("sub/b", shape=(6, 4), chunks=(4, 4), dtype="f8")
    b[:] = np.arange(24.0).reshape(6, 4)
    if version == 3:
        s = g.create_array("s", shape=(8,), chunks=(2,), shards=(4,), dtype="u2")
        s[:] = np.arange(8)


def _json_values() -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.none(), st.booleans(),
                     st.sampled_from([0, -1, 1, 2**31, 2**53, 2**63, 10**30, -(2**40)]),
                     st.floats(allow_nan=True), st.text(max_size=12),
                     st.sampled_from(["<f16", "|O", "<U4", "int128", "|V0", "bytes", "C",
                                      "F", "blosc", "zstd", "gzip"]))
    return st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8),
                                                                       inner, max_size=3)),
                        max_leaves=8)


def _json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            paths += _json_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            paths += _json_paths(v, (*prefix, i))
    return paths


def _set(doc: Any, path: tuple, value: Any, delete: bool) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if delete and isinstance(doc, dict):
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


@FUZZ
@given(data=st.data())
def test_fuzz_zarr(child: Child, seeds: dict[str, Path], tmp_path_factory, data) -> None:
    version = data.draw(st.sampled_from(["zarr3", "zarr2"]), label="format")
    store = tmp_path_factory.mktemp("zarr") / "m.zarr"
    shutil.copytree(seeds[version], store)
    files = sorted(p for p in store.rglob("*") if p.is_file())
    metadata = [p for p in files if p.name in ("zarr.json", ".zarray", ".zgroup", ".zattrs")]
    chunks = [p for p in files if p not in metadata]
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        if data.draw(st.integers(0, 3), label="what") and metadata:
            target = data.draw(st.sampled_from(metadata), label="metadata file")
            try:
                doc = json.loads(target.read_text())
            except ValueError:
                continue
            paths = _json_paths(doc)
            if not paths:
                continue
            path = data.draw(st.sampled_from(paths), label="key")
            _set(doc, path, data.draw(_json_values(), label="value"),
                 data.draw(st.booleans(), label="delete"))
            target.write_text(json.dumps(doc))
        elif chunks:
            target = data.draw(st.sampled_from(chunks), label="chunk file")
            target.write_bytes(mutate(data, target.read_bytes()))
    verify(child, "zarr", store)


def _main(argv: list[str], serve: Callable[[], None] = _serve) -> None:
    if argv[1:] == ["--serve"]:
        serve()


if __name__ == "__main__":
    _main(sys.argv)

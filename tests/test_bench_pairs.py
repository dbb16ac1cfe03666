"""benchmarks/run.py pairs each run with the base tool's run of the same round."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _record(c, wall: float | None, rows: int = 10, code: int = 0):
    m = c.Measurement(cmd=["x"], wall_s=wall, returncode=code)
    return c.RunRecord("t", 10, m, c.RowCheck(rows=rows))


def test_same_round_ratios_skip_failed_or_wrong_rounds(monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
    import _common as c
    import run

    tool = [_record(c, 6.0), _record(c, 5.0), _record(c, 9.0, rows=9), _record(c, 4.0)]
    base = [_record(c, 4.0), _record(c, 5.0), _record(c, 3.0), _record(c, 2.0, code=1)]
    # Round 3 lost rows, round 4's base failed: only rounds 1 and 2 pair up.
    assert run.paired_ratios(tool, base) == [1.5, 1.0]
    assert run._paired_cell([1.5, 1.0, 1.2]) == "1.20× (1.00–1.50)"
    assert run._paired_cell([]) == "—"


def test_array_cases_pair_loop_and_chunkmill_by_round(monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
    import _arrays
    from bench_hdf5 import Result

    inp = _arrays.ArrayInput("hdf5", Path("x.h5"), 100, 10**9, ("signal",), "", "loop")

    def result(wall: float, rows: int = 100, code: int = 0) -> Result:
        return Result("t", "2 proc x 1 thr", wall, wall, 300.0, rows, 10.0, code)

    runs = {"loop": [result(40.0), result(30.0), result(36.0)],
            "chunkmill": [result(20.0), result(25.0, rows=99), result(20.0)]}
    # Round 2 lost a row: rounds 1 and 3 pair up, and the table says rows were lost.
    assert _arrays.round_ratios(inp, runs) == [2.0, 1.8]
    row = _arrays.render([(inp, runs)])[-1]
    assert "1.90× (1.80–2.00)" in row and row.endswith("| **NO** |")
    assert _arrays.summary(runs["chunkmill"], inp)["wall_s"] == 20.0  # the good runs only
    runs["chunkmill"][1] = result(25.0)
    assert _arrays.render([(inp, runs)])[-1].endswith("| yes |")

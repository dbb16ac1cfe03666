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

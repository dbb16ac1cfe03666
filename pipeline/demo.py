"""Sample inputs for the demo and the quickstart: messy but valid CSV, TSV and JSON lines."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

EVENTS = ["click", "view", "search", "buy", "login", "logout"]


def _note(rnd: random.Random) -> str:
    return rnd.choice([
        "ok", "", 'said "hello"', "two\nlines", "comma, inside", "unicode: héllo €",
        "multi\r\nline with \"\"quotes\"\"",
    ])


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def make_sample(root: str | Path, rows: int = 200_000, seed: int = 42) -> list[Path]:
    """Write ``logs/`` (two CSVs, one gzipped, CRLF and quoted newlines), a TSV and a JSONL."""
    rnd = random.Random(seed)
    root = Path(root)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    written = []

    def row(i: int) -> tuple:
        return (i, f"2026-11-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00",
                f"user{rnd.randint(1, 500)}", rnd.choice(EVENTS), round(rnd.random() * 100, 3),
                _note(rnd))

    header = "id,ts,user,event,value,note"
    half = rows // 2
    path = logs / "2026-11-a.csv"
    with open(path, "w", newline="") as f:
        f.write(header + "\r\n")
        for i in range(half):
            r = row(i)
            f.write(",".join(map(str, r[:5])) + "," + _quote(r[5]) + "\r\n")
    written.append(path)
    path = logs / "2026-11-b.csv.gz"
    with gzip.open(path, "wt", newline="") as f:
        f.write(header + "\n")
        for i in range(half, rows):
            r = row(i)
            f.write(",".join(map(str, r[:5])) + "," + _quote(r[5]) + "\n")
    written.append(path)
    path = root / "events.jsonl"
    with open(path, "w") as f:
        for i in range(rows // 4):
            r = row(i)
            f.write(json.dumps({"id": r[0], "ts": r[1], "user": r[2], "event": r[3],
                                "value": r[4], "tags": [r[3], "x"] if i % 3 else []}) + "\n")
    written.append(path)
    path = root / "users.tsv"
    with open(path, "w") as f:
        f.write("user\tcountry\tsince\n")
        for u in range(1, 501):
            f.write(f"user{u}\t{rnd.choice(['DE', 'FR', 'US', 'JP', 'BR'])}\t"
                    f"20{rnd.randint(10, 26)}-01-01\n")
    written.append(path)
    return written

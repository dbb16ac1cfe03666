"""The journal file itself: compaction keeps what `Journal.load` reads, a line cut short by a
killed run never takes the next entry with it."""

from __future__ import annotations

import json
import os
import uuid

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline
from pipeline.output import journal as journal_mod
from pipeline.output.journal import Journal, JournalState
from pipeline.output.store import open_store
from pipeline.report.status import status

FILES = ("a", "b", "c")


@st.composite
def histories(draw: st.DrawFn) -> list[dict]:
    """Journal entries as runs write them: staged chunks, commits (some never finished),
    failures, forgotten files, Delta versions, in any order between files."""
    entries: list[dict] = []
    for n in range(draw(st.integers(1, 40))):
        fid = draw(st.sampled_from(FILES))
        run = f"r{draw(st.integers(0, 3))}"
        event = draw(st.sampled_from(["staged", "staged", "staged", "committing", "committed",
                                      "failed", "forget"]))
        frags = [f"t/{fid}-{n}-{k}.parquet" for k in range(draw(st.integers(0, 2)))]
        if event == "staged":
            entries.append({"event": event, "file_id": fid, "run": run,
                            "index": draw(st.integers(0, 3)), "fragments": frags})
        elif event == "committing":
            entries.append({"event": event, "file_id": fid, "run": run, "fragments": frags,
                            "previous": [f"t/{fid}-old.parquet"],
                            "delta": {"t": n} if draw(st.booleans()) else {}})
        elif event == "committed":
            entries.append({"event": event, "file_id": fid, "run": run, "fingerprint": str(n),
                            "config": "c", "fragments": frags, "catalog": {"rows": n}})
        elif event == "failed":
            entries.append({"event": event, "file_id": fid, "catalog": {"status": "failed"}})
        else:
            entries.append({"event": event, "file_id": fid})
    return entries


def _state(state: JournalState) -> tuple:
    return (state.done, state.interrupted, state.staged, state.delta)


@settings(max_examples=40)  # each example writes and rewrites two journals
@given(histories())
def test_compaction_keeps_what_load_reads(entries) -> None:
    root = f"/tmp/chunkmill-journal-test/{uuid.uuid4().hex}"
    store = open_store(root, {})
    journal = Journal(store)
    journal.append(*entries)
    before = journal.load()
    dead = sum(e["event"] == "staged" and any(
        later["file_id"] == e["file_id"] and later["event"] in ("committed", "failed", "forget")
        for later in entries[i + 1:]) for i, e in enumerate(entries))
    assert (before.entries, before.dead) == (len(entries), dead)
    old = journal_mod.LOCAL_COMPACT_AT
    journal_mod.LOCAL_COMPACT_AT = 1
    try:
        assert journal.compact(state=before) == 0  # not exclusive: never rewritten
        dropped = journal.compact(exclusive=True, state=before)
    finally:
        journal_mod.LOCAL_COMPACT_AT = old
    after = journal.load()
    assert _state(after) == _state(before)
    assert dropped == (dead if dead and 2 * dead >= len(entries) else 0)
    assert after.entries == len(entries) - dropped and (after.dead == 0 or not dropped)
    # an object store folds its objects, dropping the same entries
    memory = open_store(f"memory://{uuid.uuid4().hex}", {})
    folded = Journal(memory)
    for entry in entries:
        folded.append(entry)
    assert folded.compact(minimum=0) == len(entries)
    assert _state(folded.load()) == _state(before)
    assert folded.load().entries == len(entries) - dead
    store.rmtree(root)


def test_compaction_waits_for_enough_dead_entries(tmp_path, monkeypatch) -> None:
    journal = Journal(open_store(str(tmp_path), {}))
    staged = [{"event": "staged", "file_id": "a", "run": "r", "index": i} for i in range(10)]
    journal.append(*staged, {"event": "committed", "file_id": "a", "run": "r",
                             "fingerprint": "f", "config": "c", "fragments": []})
    monkeypatch.setattr(journal_mod, "LOCAL_COMPACT_AT", 11)
    assert journal.compact(exclusive=True) == 0  # 10 dead, fewer than the threshold
    monkeypatch.setattr(journal_mod, "LOCAL_COMPACT_AT", 10)
    journal.append(*[{"event": "staged", "file_id": "b", "run": "r", "index": i}
                     for i in range(12)])
    assert journal.compact(exclusive=True) == 0  # 10 dead of 23: less than half
    journal.append({"event": "forget", "file_id": "b"})
    assert journal.compact(exclusive=True) == 22
    assert [json.loads(line)["event"] for line in open(journal.path, "rb")] == [
        "committed", "forget"]
    assert not [n for n in os.listdir(os.path.dirname(journal.path)) if ".tmp" in n]


def test_an_entry_after_a_line_cut_short_is_kept(tmp_path) -> None:
    """A kill in the middle of a long append leaves a line without its end; the next run's
    first entry (here the commit that would otherwise be ignored) must not join it."""
    journal = Journal(open_store(str(tmp_path), {}))
    journal.append({"event": "staged", "file_id": "a", "run": "r1", "index": 0})
    with open(journal.path, "ab") as f:
        f.write(b'{"event":"committing","file_id":"a","run":"r1","fragm')
    journal.append({"event": "committing", "file_id": "a", "run": "r2",
                    "fragments": ["t/a.parquet"], "previous": []},
                   {"event": "committed", "file_id": "a", "run": "r2", "fingerprint": "f",
                    "config": "c", "fragments": ["t/a.parquet"]})
    state = journal.load()
    assert state.done["a"].fragments == ["t/a.parquet"] and not state.interrupted
    assert state.entries == 3


def test_a_run_compacts_the_journal_and_resumes_from_it(tmp_path, monkeypatch) -> None:
    """End to end: once enough staged entries are dead, the next run rewrites the journal
    without them; files stay unchanged, rows are not read again, status still reads it."""
    data = tmp_path / "in"
    data.mkdir()
    for name in ("x", "y"):
        (data / f"{name}.csv").write_text(
            "a,b\n" + "".join(f"{i},{i * 3}\n" for i in range(3000)))
    out = str(tmp_path / "out")
    first = pipeline.ingest(str(data), out=out, progress=False, chunk_size="8KB",
                            small_file_size=0)
    assert first.ok and first.rows == 6000
    path = os.path.join(out, "_chunkmill", "journal.jsonl")
    events = [json.loads(line)["event"] for line in open(path, "rb")]
    assert events.count("staged") >= 8
    monkeypatch.setattr(journal_mod, "LOCAL_COMPACT_AT", 8)
    second = pipeline.ingest(str(data), out=out, progress=False, chunk_size="8KB",
                             small_file_size=0)
    assert second.files == {"unchanged": 2} and second.rows == 0
    events = [json.loads(line)["event"] for line in open(path, "rb")]
    assert "staged" not in events and events.count("committed") == 2
    (data / "x.csv").write_text("a,b\n1,2\n")  # a changed file is read again, once
    third = pipeline.ingest(str(data), out=out, progress=False, chunk_size="8KB",
                            small_file_size=0)
    assert third.files == {"ok": 1, "unchanged": 1}
    rows = duckdb.sql(f"select count(*) from read_parquet('{out}/in/**/*.parquet')").fetchall()
    assert rows == [(3001,)]
    assert status(out)["totals"] == {"done": 2}


# --- the staged entries' own encoder ---------------------------------------------------------
_text = st.text(st.characters(), max_size=12)


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(_text, min_size=4, max_size=4),
       counts=st.lists(st.integers(-(2 ** 70), 2 ** 70), min_size=5, max_size=5),
       fragments=st.lists(st.dictionaries(_text, st.one_of(_text, st.integers(), st.none(),
                                                            st.dictionaries(_text, _text))),
                          max_size=3),
       facts=st.one_of(st.none(), _text))
def test_staged_lines_are_the_json_of_the_entry(ids, counts, fragments, facts) -> None:
    """Staged entries skip the generic encoder (a fifth of the client's work per chunk at a
    million chunks): what they write must still be exactly its JSON, read back equal."""
    from pipeline.execution.task import ChunkManifest
    from pipeline.output.staging import staged_entry

    file_id, run, chunk_id, token = ids
    entry = journal_mod.StagedEntry(
        event="staged", file_id=file_id, run=run, index=counts[0], chunk_id=chunk_id,
        token=token, rows=counts[1], bytes_read=counts[2], error_count=counts[3],
        record_errors=counts[4], fragments=fragments, facts=facts)
    line = journal_mod._line(entry)
    assert line == json.dumps(entry, default=str, separators=(",", ":"))
    assert json.loads(line) == entry and "\n" not in line
    # and staged_entry makes entries of exactly that shape, from a real manifest
    manifest = ChunkManifest(chunk_id, file_id, abs(counts[0]), rows=abs(counts[1]),
                             bytes_read=abs(counts[2]))
    made = staged_entry(manifest, token, open_store("/tmp"), run)
    assert type(made) is journal_mod.StagedEntry
    assert journal_mod._line(made) == json.dumps(made, default=str, separators=(",", ":"))

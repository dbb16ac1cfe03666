"""Which table each single-table file feeds: one rule, whatever the spelling of the inputs.

Text and columnar files (CSV, TSV, JSON lines, Parquet, Arrow IPC, ORC: readers with
`Reader.single_table`) hold one table each; this module decides which of them make one table
and what it is called. It is a pure function of each file's path, *home* and column names and
of the tables OUT already holds, so it does not depend on the order of the inputs or on how
they were spelled (a directory, a quoted glob or the shell's expansion of it give the same
homes: see `pipeline.planning.discover`). `pipeline.planning.plan` applies it after describe
(columns are known only then) and before the schemas of the tables are unified.

The rule, in order:

1. ``--table NAME``: every file goes to NAME.
2. A file OUT already holds stays in its table as long as its columns still nest with the
   table's (a rewrite with unrelated columns is grouped afresh); ``fresh`` (``--force``)
   groups every file as on a first run.
3. The other files are grouped per home by column *names*: two column sets nest when one
   holds the other (a column added to daily files). Largest first, each file joins the
   table of its home whose columns nest with its own (the closest; a table OUT already holds
   files of this home in counts as one), or starts a new table.
4. Names: when the home's files make one table, it is named after the home directory
   (``logs/`` -> ``logs``), except a file given on its own by name, which is named after its
   stem (``big.csv`` -> ``big``) and joins no other table OUT holds of its directory. When a
   home splits into several tables, each new one is named after its files' common stem,
   trailing digits, dates and separators dropped (``orders_2024-01.csv``,
   ``orders_2024-02.csv`` -> ``orders``); with no common stem, its first file's; a stem of
   digits only (``2024-01-01.csv``) falls back to the directory.
5. A name another table already has (in this run, or in OUT) is shared when the columns
   nest, else the new table is ``NAME_2`` (``_3``, ...): columns that do not nest never end up
   NULL-padded in one table unless ``--table`` says so.

Files without a header (``--no-header``: columns ``f0, f1, ...``) nest only with equal column
counts, since their names say nothing. A file with no columns at all (empty) nests with any
table, so it joins its directory's table.
"""

from __future__ import annotations

import bisect
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.output.layout import table_name
from readers import strip_compression_suffix

SEPARATORS = "-_. "
"""Characters that separate the words of a file stem (``orders_2024-01``)."""
_TOKENS = re.compile(r"([-_. ]+)")
_DIGIT = re.compile(r"\d")
_TRAILING = re.compile(r"[\d\W_]+$")


@dataclass(frozen=True, slots=True)
class Member:
    """One file to place."""

    path: str
    """The file (its path or URL): identity and sort key."""
    home: str
    """The directory that names its table (an input directory, a glob's directory, or the
    directory of a file named on its own)."""
    columns: tuple[str, ...]
    """Column names, as the file's reader described them."""
    named: bool = False
    """Given by name as an input argument (not found by a walk or a pattern)."""
    exact: bool = False
    """Columns named by position (no header): nests only with the same columns."""
    previous: str | None = None
    """The table OUT holds the file's rows in, from an earlier run."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one file goes, and why (the catalog's ``metadata.table_rule``)."""

    table: str
    rule: str


@dataclass(slots=True)
class HomeTables:
    """What became of one home's files (for the log and ``chunkmill plan``)."""

    home: str
    tables: dict[str, list[str]]
    """Table -> the paths placed in it."""
    split: bool
    """New tables were made because the home's files do not nest: worth a warning."""


@dataclass(slots=True)
class Grouping:
    placements: dict[str, Placement]
    """By member path."""
    homes: list[HomeTables]


@dataclass(slots=True)
class _Group:
    name: str | None
    columns: set[str]
    order: int
    existing: bool = False
    members: list[Member] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return bool(self.members) and all(m.exact and m.columns for m in self.members)


def _nests(columns: Iterable[str], exact: bool, other: set[str]) -> bool:
    mine = set(columns)
    if not mine:
        return True
    if exact:
        return mine == other
    return mine <= other or other <= mine


def series_name(stem: str) -> str:
    """A stem without the counter or date a series of files adds to it: trailing digits,
    dates, separators and words that hold digits (``orders_2024-01`` -> ``orders``,
    ``part-00001-c1a2`` -> ``part``, ``sales_v2`` -> ``sales``, ``orders2024`` -> ``orders``,
    ``2024-01-01`` -> ``""``)."""
    parts = _TOKENS.split(stem)  # words and separators, alternating
    while parts:
        last = parts[-1]
        if last.strip(SEPARATORS) == "":
            parts.pop()
            continue
        word = _TRAILING.sub("", last)
        if word == last and not _DIGIT.search(last):
            break  # a plain word ends the name
        if len(parts) > 1 and (len(word) <= 1 or _DIGIT.search(word)):
            parts.pop()  # v2, T1030, 01, 1a2b: a counter, not a word of the name
            continue
        if word:
            parts[-1] = word
            break
        parts.pop()
    return "".join(parts)


def file_stem(path: str) -> str:
    """A file's name without suffixes (``orders_2024-01.csv.gz`` -> ``orders_2024-01``)."""
    name = posixpath.basename(path.rstrip("/"))
    return strip_compression_suffix(name).split(".")[0]


def common_stem(paths: Iterable[str]) -> str:
    """The series name the files share, cut at a word boundary (``sales_east``,
    ``sales_eastern`` -> ``sales``); ``""`` when they share none."""
    names = [series_name(file_stem(p)) for p in paths]
    if not names:
        return ""
    prefix = os.path.commonprefix(names)
    mid_word = prefix and prefix[-1] not in SEPARATORS and any(
        len(n) > len(prefix) and n[len(prefix)] not in SEPARATORS for n in names)
    if mid_word:
        prefix = prefix[:max(prefix.rfind(c) for c in SEPARATORS) + 1]
    return series_name(prefix)


def _dir_name(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) or path.rstrip("/")


def _stem_or_directory(paths: list[str], home: str) -> tuple[str, str]:
    """The group's common stem, else its first file's, else the first file's directory
    (below its partition directories): ``(name, "stem" or "directory")``."""
    name = common_stem(paths) or series_name(file_stem(paths[0]))
    if name:
        return name, "stem"
    parent = posixpath.dirname(paths[0])
    if not parent.startswith(home):
        parent = home
    while "=" in _dir_name(parent) and len(parent) > len(home):
        parent = posixpath.dirname(parent)  # hive partition directories name no table
    return _dir_name(parent), "directory"


class _Held:
    """The tables OUT holds files of, looked up by directory."""

    def __init__(self, held: Iterable[tuple[str, str]]) -> None:
        pairs = sorted(held)
        self.paths = [p for p, _ in pairs]
        self.tables = [t for _, t in pairs]

    def under(self, home: str, deep: bool) -> set[str]:
        """Tables of the files below ``home`` (``deep``: in its subdirectories too)."""
        prefix = home.rstrip("/") + "/"
        i = bisect.bisect_left(self.paths, prefix)
        found = set()
        while i < len(self.paths) and self.paths[i].startswith(prefix):
            if deep or "/" not in self.paths[i][len(prefix):]:
                found.add(self.tables[i])
            i += 1
        return found


def group_tables(members: Iterable[Member], *, forced: str | None = None,
                 known: Mapping[str, Iterable[str]] | None = None,
                 held: Iterable[tuple[str, str]] = (), fresh: bool = False) -> Grouping:
    """Place every member in a table (see the module docstring for the rule).

    ``known``: the columns of each table OUT holds (``_chunkmill/schemas.json``); ``held``:
    ``(path, table)`` of the files OUT holds rows of; ``fresh``: ignore where files went
    before (``--force``), though names OUT uses for other columns stay taken.
    """
    ordered = sorted(members, key=lambda m: m.path)
    if forced is not None:
        placements = {m.path: Placement(forced, "--table") for m in ordered}
        return Grouping(placements, _summary(ordered, placements, set()))
    tables: dict[str, set[str]] = {t: set(cols) for t, cols in (known or {}).items()}
    history = _Held(() if fresh else held)
    placements: dict[str, Placement] = {}
    rest: list[Member] = []
    for m in ordered:
        previous = None if fresh else m.previous
        if previous is not None and (previous not in tables
                                     or _nests(m.columns, m.exact, tables[previous])):
            placements[m.path] = Placement(previous, f"kept in {previous}: ingested there "
                                                     "before")
            tables.setdefault(previous, set()).update(m.columns)
        else:
            rest.append(m)
    by_home: dict[str, list[Member]] = {}
    for m in rest:
        by_home.setdefault(m.home, []).append(m)
    fresh_groups: list[tuple[_Group, str, str]] = []
    split: set[str] = set()
    for home in sorted(by_home):
        files = by_home[home]
        # A walk's or a pattern's home holds its subdirectories' files; a file named on its
        # own does not join the table of a directory below its own.
        deep = not all(m.named for m in files)
        held = sorted(history.under(home, deep))
        if len(files) == 1 and files[0].named:
            # A file given on its own is its own table (``big.csv`` -> ``big``), whatever
            # else OUT holds of its directory: it joins only a table of that name.
            own = table_name(_stem_or_directory([files[0].path], home)[0])
            held = [t for t in held if t == own]
        groups = [_Group(t, set(tables.get(t, ())), i, existing=True)
                  for i, t in enumerate(held)]
        for m in sorted(files, key=lambda m: (-len(set(m.columns)), m.path)):
            fits = [g for g in groups if _nests(m.columns, m.exact, g.columns)]
            if fits:
                group = min(fits, key=lambda g: (len(g.columns ^ set(m.columns)),
                                                 not g.existing, g.order))
            else:
                group = _Group(None, set(), len(groups))
                groups.append(group)
            group.members.append(m)
            group.columns |= set(m.columns)
        for g in groups:
            if g.existing and g.members:
                assert g.name is not None
                tables[g.name] = tables.get(g.name, set()) | g.columns
                for m in g.members:
                    placements[m.path] = Placement(g.name, f"columns nested in {g.name}, "
                                                           "which OUT holds files of this "
                                                           "directory in")
        new = [g for g in groups if not g.existing]
        if len(groups) == 1 and new:
            (g,) = new
            if len(files) == 1 and files[0].named:
                name, how = _stem_or_directory([files[0].path], home)
                fresh_groups.append((g, name, f"{'file name' if how == 'stem' else how} "
                                              f"{name}"))
            else:
                name = _dir_name(home)
                fresh_groups.append((g, name, f"directory {name}"))
        else:
            if new:
                split.add(home)
            for g in new:
                # Empty files join a table; they do not name it.
                named_by = [m.path for m in g.members if m.columns] or [m.path for m in
                                                                        g.members]
                name, how = _stem_or_directory(sorted(named_by), home)
                fresh_groups.append((g, name, f"own columns: {how} {name}"))
    for g, proposed, rule in fresh_groups:
        base = table_name(proposed)
        name, n = base, 1
        while name in tables and not _nests(g.columns, g.exact, tables[name]):
            n += 1
            name = table_name(f"{base}_{n}")
        if name != base:
            rule += f" ({base} holds other columns)"
        tables[name] = tables.get(name, set()) | g.columns
        for m in g.members:
            placements[m.path] = Placement(name, rule)
    return Grouping(placements, _summary(ordered, placements, split))


def _summary(members: list[Member], placements: dict[str, Placement],
             split: set[str]) -> list[HomeTables]:
    homes: dict[str, dict[str, list[str]]] = {}
    for m in members:
        homes.setdefault(m.home, {}).setdefault(placements[m.path].table, []).append(m.path)
    return [HomeTables(home, dict(sorted(tables.items())), home in split)
            for home, tables in sorted(homes.items())]


__all__ = ["Member", "Placement", "Grouping", "HomeTables", "group_tables", "series_name",
           "file_stem", "common_stem"]

"""TSV reader: the CSV reader with a tab delimiter (same quoting rules as pyarrow's)."""

from __future__ import annotations

from readers.csv import CSVReader


class TSVReader(CSVReader):
    """Tab-separated values."""

    name = "tsv"
    suffixes = (".tsv", ".tab")
    delimiter = "\t"

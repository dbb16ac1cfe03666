"""Names of things in OUT: the reserved directories and the record column every table has."""

FILE_ID = "_file_id"
"""Column of every record row: the stable id of its source file."""
STATE_DIR = "_chunkmill"
"""Run state: journal, lock, run reports, staging. Users read it through ``chunkmill status``."""
CATALOG_DIR = "_catalog"
ERRORS_DIR = "_errors"
RESERVED = (STATE_DIR, CATALOG_DIR, ERRORS_DIR)

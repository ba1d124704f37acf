"""The file of connection rows that -o writes: connections.csv (the default) or, with
--format parquet, connections.parquet.  Each module has NAME, Writer (rows appended as a
trace makes them) and write (whole)."""
from __future__ import annotations

from . import connections_csv, connections_parquet

FORMATS = {"csv": connections_csv, "parquet": connections_parquet}
NAMES = tuple(module.NAME for module in FORMATS.values())

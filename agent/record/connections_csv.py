"""connections.csv: one row per socket life, the contract's columns then CSV_EXTRA_COLUMNS,
appended as the rows are made (a trace with -o writes it as it goes, beside
connections.arrow), or written whole (`tcpclose report`).

Written by Arrow's CSV writer from the rows as record.rows holds them: pandas' to_csv formats
each float in Python, 30 s for 2.4 million rows against 3 s here.  Times and durations are
rounded to the microsecond and written as short as they read back (1700000001.0003, not
1700000001.000300); text is quoted; a cell with no value is empty.  A process or thread name
that would start a spreadsheet formula gets a leading ' (files.FORMULA_STARTS).
"""
from __future__ import annotations

from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..analysis.lives import CONNECTION_COLUMNS, CSV_EXTRA_COLUMNS
from . import rows

NAME = "connections.csv"
COLUMNS = CONNECTION_COLUMNS + CSV_EXTRA_COLUMNS
FREE_TEXT = ("comm", "thread_comm")  # named by the processes themselves
# A cell a spreadsheet would run as a formula starts with one of these: a process name is
# anyone's to choose, so those cells are written with a leading ' that makes them plain text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MICROSECONDS = 6


def _formula_safe(column: pa.ChunkedArray) -> pa.ChunkedArray:
    risky = None
    for start in FORMULA_STARTS:
        hit = pc.fill_null(pc.starts_with(column, start), False)
        risky = hit if risky is None else pc.or_(risky, hit)
    return pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)


def table(connections: pa.Table) -> pa.Table:
    """The CSV's cells, from rows in record.rows.SCHEMA."""
    out = {}
    for name in COLUMNS:
        column = connections.column(name)
        if pa.types.is_floating(column.type):
            column = pc.round(column, MICROSECONDS)
        elif name in FREE_TEXT:
            column = _formula_safe(column)
        out[name] = column
    return pa.table(out)


class Writer:
    """Appends rows (record.rows' tables) to an open binary file, the header first."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self._writer: pacsv.CSVWriter | None = None

    def append(self, connections: pa.Table) -> None:
        cells = table(connections)
        if self._writer is None:
            self._writer = pacsv.CSVWriter(self.file, cells.schema)
        if cells.num_rows:
            self._writer.write_table(cells)
        self.file.flush()

    def close(self) -> None:
        if self._writer is None:
            self.append(rows.SCHEMA.empty_table())  # (the header only)
        self._writer.close()
        self.file.flush()


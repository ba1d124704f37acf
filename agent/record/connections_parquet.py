"""connections.parquet (`--format parquet`): the rows of connections.csv for runs of tens of
millions of connections, which CSV and pandas handle poorly.  Every column of the rows
(record.rows.SCHEMA: the contract's, then those the figures are made from), typed,
compressed with zstd, in row groups of ROW_GROUP_ROWS written as the rows are made (a trace
with -o) or at once (`tcpclose report`).  Parquet's index is written when the file is
closed: a trace killed midway leaves a file that no reader opens, and `tcpclose report DIR`
writes it again from connections.arrow.  pyarrow, polars, DuckDB and Spark read it;
`tcpclose report DIR` reads it too, where connections.arrow is not there."""
from __future__ import annotations

from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from . import rows, rundir

NAME = rundir.PARQUET
ROW_GROUP_ROWS = 100_000  # rows gathered before a row group is written: ~30 MB of them in memory


class Writer:
    """Appends rows (record.rows' tables) to an open binary file, a row group at a time."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self._writer = pq.ParquetWriter(file, rows.SCHEMA, compression="zstd")
        self._gathered: list[pa.Table] = []
        self._count = 0

    def append(self, connections: pa.Table) -> None:
        start = 0
        while start < connections.num_rows:  # (a row group of ROW_GROUP_ROWS, the last of a file fewer)
            part = connections.slice(start, ROW_GROUP_ROWS - self._count)
            self._gathered.append(part)
            self._count += part.num_rows
            start += part.num_rows
            if self._count >= ROW_GROUP_ROWS:
                self._flush()

    def _flush(self) -> None:
        if self._gathered:
            self._writer.write_table(pa.concat_tables(self._gathered), row_group_size=max(self._count, 1))
            self._gathered, self._count = [], 0
            self.file.flush()

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self.file.flush()


"""Connection rows on disk, appended as they become final (analysis.stream), read back whole
or a batch at a time.

The format is Arrow's IPC stream: each append is one record batch, written whole, so a
file cut short by a SIGKILL or a full disk still reads up to its last whole batch; the
columns keep their types (CSV would make every reader guess them again).  pyarrow, polars
and DuckDB read it too.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterator

import pandas as pd
import pyarrow as pa

from ..analysis.lives import CONNECTION_COLUMNS, EXTRA_COLUMNS

_TYPES = {
    "int64": ("pid", "lport", "rport", "fd"),
    "uint64": ("skaddr",),
    "float64": ("opened_at", "closed_at", "duration_s", "tw_start", "tw_end", "tw_s", "close_wait_at",
                "tw_fin_wait2_s", "tw_timeout_s"),
    "bool_": ("rst_sent", "partial", "tw_overflow", "tw_made", "tw_ended", "close_wait_open"),
}
_TYPE_OF = {column: getattr(pa, name)() for name, columns in _TYPES.items() for column in columns}
SCHEMA = pa.schema([(c, _TYPE_OF.get(c, pa.string())) for c in CONNECTION_COLUMNS + EXTRA_COLUMNS])
NULLABLE_INTS = ("pid", "fd")  # read back as pandas' Int64: an owner or fd not known is <NA>, not NaN


def table(rows: pd.DataFrame) -> pa.Table:
    """The rows in SCHEMA; text columns as text, None where a cell has none."""
    columns = {}
    for f in SCHEMA:
        values = pd.Series(rows[f.name]).reset_index(drop=True)
        if pa.types.is_string(f.type):
            if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
                columns[f.name] = pa.array(values.array, type=f.type)  # (pandas' str: Arrow's text already)
                continue
            try:  # (None and NaN both null)
                columns[f.name] = pa.array(values.astype(object), type=f.type, from_pandas=True)
                continue
            except (pa.ArrowTypeError, pa.ArrowInvalid):  # a cell that is not text: as text
                values = [v if v is None or isinstance(v, str) else str(v)
                          for v in values.astype(object).where(values.notna(), None)]
        elif f.name in NULLABLE_INTS:
            values = pd.array(values, dtype="Int64")
        columns[f.name] = pa.array(values, type=f.type, from_pandas=True)
    return pa.table(columns, schema=SCHEMA)


class RowsWriter:
    """Appends batches of connection rows to an open binary file."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self._writer = pa.ipc.new_stream(file, SCHEMA)
        self.rows = 0

    def append(self, rows: pd.DataFrame) -> None:
        self.append_table(table(rows))

    def append_table(self, rows: pa.Table) -> None:
        """Rows already in SCHEMA (table())."""
        if rows.num_rows:  # (one batch, whatever chunks its columns came in: an append is whole or not there)
            self._writer.write_table(rows.combine_chunks())
            self.rows += rows.num_rows
            self.file.flush()

    def close(self) -> None:
        self._writer.close()
        self.file.flush()


def batches(source: str | Path | BinaryIO) -> Iterator[pd.DataFrame]:
    """The rows written, a batch at a time, up to the last whole batch of a file cut short."""
    try:
        reader = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:  # cut short before its schema was whole: no row was written
        return
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError):  # cut short mid-batch: what was whole is what there is
            return
        yield frame(batch)


def read(source: str | Path | BinaryIO) -> pd.DataFrame:
    """Every row written (up to the last whole batch)."""
    parts = list(batches(source))
    return pd.concat(parts, ignore_index=True) if parts else empty()


def empty() -> pd.DataFrame:
    """No rows, in the columns and types of the rows read back."""
    return frame(SCHEMA.empty_table())


def frame(batch) -> pd.DataFrame:
    """Rows in SCHEMA (an Arrow batch or table) as the rows read back are."""
    frame = batch.to_pandas()
    for column in NULLABLE_INTS:
        frame[column] = frame[column].astype("Int64")
    for f in SCHEMA:  # text as Python objects, None where none, as analysis.lives makes them
        if pa.types.is_string(f.type):
            frame[f.name] = frame[f.name].astype(object).where(frame[f.name].notna(), None)
    return frame

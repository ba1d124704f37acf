"""What a run keeps until its end: the connection rows made as it goes (analysis.stream), on
disk in a file of its own (record.rows), so that the tracer's memory stays flat however long
it runs; read back whole at the end, or, for a run too big to analyse in memory, counted per
owner a batch at a time."""
from __future__ import annotations

import tempfile

import pandas as pd

from ..analysis.processes import counts_of_rows
from ..errors import CannotWrite
from ..record import rows as rowfile
from ..safefiles import scratch_directory


class Kept:
    def __init__(self, directory: str | None = None):
        if directory is None:
            directory = scratch_directory()
        try:  # no name (unlinked at once): it goes with the process however the process ends
            self._file = tempfile.TemporaryFile(prefix="tcpclose-rows-", dir=directory)
        except OSError as exc:
            raise CannotWrite(f"cannot make the file of connection rows in {directory or tempfile.gettempdir()}: "
                              f"{exc.strerror}; set TMPDIR to a writable directory on disk") from None
        self._writer = rowfile.RowsWriter(self._file)

    @property
    def rows(self) -> int:
        return self._writer.rows

    def add(self, rows: pd.DataFrame) -> None:
        self._writer.append(rows)

    def connections(self) -> pd.DataFrame:
        """Every row kept, in the order made; the file is closed."""
        self._writer.close()
        self._file.seek(0)
        try:
            return rowfile.read(self._file)
        finally:
            self._file.close()

    def counted(self) -> tuple[list[dict], pd.DataFrame]:
        """For a run too big to analyse whole: the ended lives counted per owner, a batch at a
        time (as --aggregates counts them in BPF), and the rows of the lives still open."""
        self._writer.close()
        self._file.seek(0)
        still_open = []

        def ended():
            for batch in rowfile.batches(self._file):
                is_open = (batch["initiator"] == "open").to_numpy()
                still_open.append(batch[is_open])
                yield batch[~is_open]
        try:
            counts = counts_of_rows(ended())
        finally:
            self._file.close()
        return counts, pd.concat(still_open, ignore_index=True) if still_open else rowfile.empty()

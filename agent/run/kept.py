"""What a run keeps until its end: what arrived since the last step, the lives the stream
holds (analysis.stream), and the connection rows made so far, on disk (record.rows), so that
the tracer's memory stays flat however long it runs; the rows are read back whole at the end,
or, for a run too big to analyse in memory (run.memory), counted per owner a batch at a time."""
from __future__ import annotations

import tempfile
from typing import BinaryIO

import time
from typing import Callable

import numpy as np
import pandas as pd

from ..analysis.processes import counts_of_rows
from ..analysis.stream import Stream
from ..errors import CannotWrite
from ..record import decode
from ..record import rows as rowfile
from ..kernel import procfs
from ..record.runinfo import RunInfo
from ..record import rundir
from ..safefiles import OutputDir, scratch_directory
from . import memory

STEP_EVERY_S = 1.0  # what arrived is decoded and made into connection rows this often (analysis.stream)


class Kept:
    def __init__(self, directory: str | None = None, file: BinaryIO | None = None):
        """file: where to keep the rows (open for reading and writing: trace -o's
        connections.arrow); None: a file of our own in `directory` (None: the scratch
        directory), with no name, so that it goes with the process however that ends."""
        if file is None:
            directory = directory or scratch_directory()
            try:
                file = tempfile.TemporaryFile(prefix="tcpclose-rows-", dir=directory)
            except OSError as exc:
                raise CannotWrite(f"cannot make the file of connection rows in {directory or tempfile.gettempdir()}: "
                                  f"{exc.strerror}; set TMPDIR to a writable directory on disk") from None
        self._file = file
        self._writer = rowfile.RowsWriter(self._file)
        self._arrived: list[np.ndarray | pd.DataFrame] = []
        self._stream: Stream | None = None
        self._decoder: Callable[[np.ndarray], pd.DataFrame] | None = None
        self.stepped_at = time.monotonic()

    def start(self, stream: Stream, decoder: Callable[[np.ndarray], pd.DataFrame]) -> None:
        """Make rows from here on with `stream`; `decoder` decodes the BPF records (Tracer._decoded)."""
        self._stream, self._decoder = stream, decoder

    @property
    def rows(self) -> int:
        """The rows the end of the run will analyse: made so far, and still to make (held)."""
        return self._writer.rows + (self._stream.held if self._stream else 0)

    def arrive(self, part: np.ndarray | pd.DataFrame) -> None:
        """BPF records (raw) or decoded events (sock_diag's), until the next step."""
        self._arrived.append(part)

    def step(self) -> None:
        """The rows final now, made from what arrived, and written."""
        self.stepped_at = time.monotonic()
        self._writer.append(self._stream.step(self._take_arrived(), time.time()))

    def finish(self, ended_at: float) -> int:
        """The rest of the rows, with what the end of the run read (arrived already); returns
        how many were made before what they waited for came (Stream.settled_early)."""
        self._writer.append(self._stream.finish(self._take_arrived(), ended_at))
        return self._stream.settled_early

    def note(self, out: OutputDir, now: float) -> None:
        """The rows of the lives held, as if the run ended `now`, into `out` (rewritten whole):
        with the rows made, what a run killed now has of its lives (record.rundir)."""
        with out.replacing_binary(rundir.PENDING) as f:
            writer = rowfile.RowsWriter(f)
            writer.append(self._stream.provisional(now))
            writer.close()

    def _take_arrived(self) -> pd.DataFrame:
        """What arrived since the last step, decoded (the BPF records of a step at once)."""
        parts, self._arrived = self._arrived, []
        raw = [p for p in parts if isinstance(p, np.ndarray)]
        frames = [p for p in parts if isinstance(p, pd.DataFrame)]
        return decode.concat([self._decoder(np.concatenate(raw)) if raw else decode.empty_events(), *frames])

    def add(self, rows: pd.DataFrame) -> None:
        self._writer.append(rows)

    def analysable(self, run: RunInfo) -> pd.DataFrame:
        """The connection rows of the run, read back whole.  Unless that would not fit in
        memory (a long run at a high churn, see run.memory): then the lives are counted per
        owner, a batch of rows at a time (RunInfo.aggregates, as --aggregates makes them, with
        .analysis_skipped saying why), and the rows are those of the lives still open."""
        skipped = memory.too_big(self.rows, procfs.mem_available())
        if skipped is None:
            return self.connections()
        run.aggregates, still_open = self.counted()
        run.analysis_skipped = skipped
        return still_open

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
